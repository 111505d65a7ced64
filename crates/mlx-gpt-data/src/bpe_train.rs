//! Training a byte-level BPE on a user's corpus, as nanochat trains its tokenizer before
//! anything else: GPT-4's way of splitting text into pieces, bytes as the base alphabet
//! (every string encodes, nothing is unknown), merges learned by the `tokenizers` crate's
//! BPE trainer, and a document separator as a special token.

use crate::error::{DataError, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The document separator: GPT-2's end-of-text token, so that text tools that know
/// GPT-2 recognise it.
pub const DOC_SEPARATOR: &str = "<|endoftext|>";

/// How text is cut into pieces before merging (no merge crosses a piece): GPT-4's
/// pattern (tiktoken's cl100k_base) — contractions, letters with one leading non-letter,
/// numbers of at most three digits, punctuation runs, line breaks, other whitespace —
/// without its possessive quantifiers, which the regex engine here does not take.
pub const SPLIT_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The 256 byte tokens plus the special tokens: a vocabulary cannot be smaller.
pub fn min_vocab(special_tokens: usize) -> usize {
    256 + special_tokens
}

/// Train a byte-level BPE of `vocab_size` tokens (the 256 bytes, the merges, then
/// [`DOC_SEPARATOR`]) on `texts` (documents, or pieces of them cut where the split
/// pattern cuts anyway). The trainer counts the pieces of each text as it streams by, on
/// every core, so memory grows with the number of distinct pieces, not with the corpus.
/// `progress` shows the trainer's bar while it merges.
pub fn train_bpe<I, S>(texts: I, vocab_size: usize, progress: bool) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Trainer};
    let specials = [DOC_SEPARATOR];
    if vocab_size < min_vocab(specials.len()) {
        return Err(DataError::Tokenizer(format!(
            "a vocabulary of {vocab_size} tokens is too small: a byte-level BPE needs the 256 bytes and {} special \
             token{} ({} at least)",
            specials.len(),
            if specials.len() == 1 { "" } else { "s" },
            min_vocab(specials.len())
        )));
    }
    let err = |e: tokenizers::Error| DataError::Tokenizer(format!("training the BPE: {e}"));
    let split =
        Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Isolated, false).map_err(err)?;
    // The bytes of each piece as printable characters (GPT-2's mapping); the split above
    // has cut the text already, so ByteLevel's own (GPT-2's) pattern is off.
    let byte_level = ByteLevel::new(false, true, false);
    let pre_tokenizer = Sequence::new(vec![split.into(), byte_level.into()]);
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(progress)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials.iter().map(|s| AddedToken::from(s.to_string(), true)).collect())
        .build();
    // What `Tokenizer::train` does, without its count-of-texts bar (the length of a
    // stream is not known; the caller shows bytes read instead).
    trainer
        .feed(texts, |text| {
            let mut pieces = PreTokenizedString::from(text);
            pre_tokenizer.pre_tokenize(&mut pieces)?;
            Ok(pieces
                .get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(piece, _, _)| piece.to_owned())
                .collect())
        })
        .map_err(err)?;
    let mut model = BPE::default();
    let special_tokens = trainer.train(&mut model).map_err(err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(byte_level));
    tok.add_special_tokens(&special_tokens);
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn corpus() -> Vec<String> {
        let lines = [
            "The quick brown fox jumps over the lazy dog.",
            "Pack my box with five dozen liquor jugs!",
            "How vexingly quick daft zebras jump; 1234567 numbers, too.",
            "Ünïcödé text — with dashes, ümlauts and 漢字 as well.",
        ];
        (0..200).map(|i| format!("{} {}\n", lines[i % lines.len()], lines[(i * 7 + 1) % lines.len()])).collect()
    }

    #[test]
    fn training_is_deterministic() {
        let a = train_bpe(corpus().into_iter(), 300, false).unwrap();
        let b = train_bpe(corpus().into_iter(), 300, false).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        assert_eq!(a.get_vocab_size(true), 300);
        assert!(a.token_to_id(DOC_SEPARATOR).is_some());
        // The separator is one token, never split or merged into text.
        let ids = a.encode(format!("one{DOC_SEPARATOR}two"), false).unwrap().get_ids().to_vec();
        assert_eq!(ids.iter().filter(|&&i| Some(i) == a.token_to_id(DOC_SEPARATOR)).count(), 1);
    }

    #[test]
    fn a_vocabulary_too_small_is_named() {
        let e = train_bpe(corpus().into_iter(), 200, false).unwrap_err().to_string();
        assert!(e.contains("200") && e.contains("257"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any UTF-8 comes back from encode then decode, byte for byte.
        #[test]
        fn encode_decode_round_trips_any_text(text in any::<String>()) {
            static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
            let tok = TOK.get_or_init(|| train_bpe(corpus().into_iter(), 400, false).unwrap());
            let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            prop_assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }
}
