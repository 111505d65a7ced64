//! An independent GPT-2 BPE encoder, written from OpenAI's `encoder.py` description, to
//! check the `tokenizers`-based one: byte → printable-character table, GPT-2's
//! pre-tokenisation regex written out as a scanner, and the rank-ordered merge loop.

use std::collections::HashMap;
use std::path::Path;

pub struct Gpt2Ref {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_char: Vec<char>,
    cache: HashMap<String, Vec<u32>>,
}

/// OpenAI's `bytes_to_unicode`: printable bytes map to themselves, the rest to 256 + n.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

impl Gpt2Ref {
    pub fn load(dir: &Path) -> Gpt2Ref {
        let encoder: HashMap<String, u32> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("encoder.json")).unwrap()).unwrap();
        let merges = std::fs::read_to_string(dir.join("vocab.bpe")).unwrap();
        let ranks = merges
            .lines()
            .skip(1) // "#version: 0.2"
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| {
                let (a, b) = l.split_once(' ').unwrap();
                ((a.to_string(), b.to_string()), i)
            })
            .collect();
        Gpt2Ref { encoder, ranks, byte_char: bytes_to_unicode(), cache: HashMap::new() }
    }

    pub fn encode(&mut self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for piece in pretokenize(text) {
            if let Some(ids) = self.cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(piece);
            out.extend_from_slice(&ids);
            self.cache.insert(piece.to_string(), ids);
        }
        out
    }

    fn bpe(&self, piece: &str) -> Vec<u32> {
        let mut word: Vec<String> = piece.bytes().map(|b| self.byte_char[b as usize].to_string()).collect();
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, i)))
                .min();
            let Some((_, _)) = best else { break };
            let (a, b) = {
                let i = best.unwrap().1;
                (word[i].clone(), word[i + 1].clone())
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word.iter().map(|s| self.encoder[s]).collect()
    }
}

/// GPT-2's split regex,
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, as a scanner.
pub fn pretokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |k: usize| if k < chars.len() { chars[k].0 } else { text.len() };
    let letter = |c: char| c.is_alphabetic();
    let number = |c: char| c.is_numeric();
    let other = |c: char| !c.is_whitespace() && !letter(c) && !number(c);
    let run = |mut k: usize, f: &dyn Fn(char) -> bool| {
        while k < chars.len() && f(chars[k].1) {
            k += 1;
        }
        k
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let rest = &text[at(i)..];
        if let Some(c) = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"].iter().find(|c| rest.starts_with(**c)) {
            let end = i + c.chars().count();
            out.push(&text[at(i)..at(end)]);
            i = end;
            continue;
        }
        let c = chars[i].1;
        // ` ?X+`: an optional space joins the run of one class that follows it.
        let (start_class, j) = if c == ' ' && i + 1 < chars.len() && !chars[i + 1].1.is_whitespace() {
            (chars[i + 1].1, i + 1)
        } else {
            (c, i)
        };
        let end = if letter(start_class) {
            run(j, &letter)
        } else if number(start_class) {
            run(j, &number)
        } else if other(start_class) {
            run(j, &other)
        } else {
            // Whitespace: `\s+(?!\S)` takes the run but its last character when a
            // non-space follows; a lone whitespace character before a non-space is `\s+`.
            let k = run(i, &|c: char| c.is_whitespace());
            if k == chars.len() || k - i == 1 {
                k
            } else {
                k - 1
            }
        };
        out.push(&text[at(i)..at(end)]);
        i = end;
    }
    out
}
