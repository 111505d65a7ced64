//! The data pipeline end to end against a real HTTP server on 127.0.0.1: downloads
//! (whole, resumed, corrupt, missing), Tiny Shakespeare prepared both ways with nanoGPT's
//! exact counts and token files checked against independent encoders, OpenWebText's
//! streaming path on parquet shards written here, extraction, and BPE properties.

mod common;

use common::{http::Server, Scratch};
use mlx_gpt_data::datasets::{prepare, PrepareOptions};
use mlx_gpt_data::download::{sha256_hex, Downloader};
use mlx_gpt_data::token_file::{Meta, TokenFile};
use mlx_gpt_data::tokenizer::{Tokenizer, TokenizerSpec};
use mlx_gpt_data::{openwebtext, DataError};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SHAKESPEARE_PATH: &str = "/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

fn corpus(shared: &Path) -> Vec<u8> {
    std::fs::read(shared.join("datasets/tinyshakespeare/input.txt")).unwrap()
}

fn downloader(server: &Server) -> Downloader {
    Downloader::new().with_mirror(Some(server.base.clone())).with_retries(3, Duration::from_millis(10)).quiet(true)
}

fn tokens(dir: &Path, split: &str) -> Vec<u32> {
    let (f, _) = TokenFile::open(dir, split).unwrap();
    (0..f.len()).map(|i| f.get(i).unwrap()).collect()
}

#[test]
fn whole_download_resume_checksum_and_404() {
    let Some(shared) = common::shared() else { return };
    let body = corpus(&shared);
    let sha = sha256_hex(&body);
    let server = Server::start();
    server.add(SHAKESPEARE_PATH, body.clone());
    let url = format!("https://raw.githubusercontent.com{SHAKESPEARE_PATH}");
    let dir = Scratch::new("dl");
    let d = downloader(&server);

    // Whole file.
    let dest = dir.path().join("a/input.txt");
    assert!(d.fetch(&url, &dest, Some(&sha)).unwrap());
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    // Already complete and verified: nothing is requested.
    let before = server.gets(SHAKESPEARE_PATH).len();
    assert!(!d.fetch(&url, &dest, Some(&sha)).unwrap());
    assert_eq!(server.gets(SHAKESPEARE_PATH).len(), before);

    // The server cuts the body: the retry resumes with a Range request.
    server.cut_once(SHAKESPEARE_PATH, 400_000);
    let dest = dir.path().join("b/input.txt");
    d.fetch(&url, &dest, Some(&sha)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let gets = server.gets(SHAKESPEARE_PATH);
    assert_eq!(gets[gets.len() - 1].range.as_deref(), Some("bytes=400000-"), "{gets:?}");
    assert!(!dir.path().join("b/input.txt.partial").exists());

    // A partial file left by an earlier run is continued, not restarted.
    let dest = dir.path().join("c/input.txt");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(dir.path().join("c/input.txt.partial"), &body[..123_456]).unwrap();
    d.fetch(&url, &dest, Some(&sha)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.gets(SHAKESPEARE_PATH).last().unwrap().range.as_deref(), Some("bytes=123456-"));

    // Checksum mismatch: both hashes named, nothing left behind.
    let dest = dir.path().join("d/input.txt");
    let wrong = "0".repeat(64);
    let err = d.fetch(&url, &dest, Some(&wrong)).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&wrong) && msg.contains(&sha), "{msg}");
    assert!(!dest.exists() && !dir.path().join("d/input.txt.partial").exists());

    // 404: the URL is named, nothing is written.
    let dest = dir.path().join("e/missing.txt");
    let err = d.fetch("https://example.org/no/such/file.txt", &dest, None).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(err.to_string().contains("/no/such/file.txt") && err.to_string().contains("404"), "{err}");
    assert!(!dest.exists() && !dir.path().join("e/missing.txt.partial").exists());

    // Server errors are retried, then reported.
    server.fail(SHAKESPEARE_PATH, 503, 1);
    let dest = dir.path().join("f/input.txt");
    d.fetch(&url, &dest, Some(&sha)).unwrap();
    server.fail(SHAKESPEARE_PATH, 500, 10);
    let err = d.fetch(&url, &dir.path().join("g/input.txt"), None).unwrap_err().to_string();
    assert!(err.contains("HTTP 500") && err.contains("gave up after 3 retries"), "{err}");
}

#[test]
fn remote_info_reads_the_hub_headers() {
    let server = Server::start();
    server.add("/gpt2/resolve/main/model.safetensors", vec![0; 10]);
    let sha = "a".repeat(64);
    server.header("/gpt2/resolve/main/model.safetensors", "X-Linked-Etag", &format!("\"{sha}\""));
    server.header("/gpt2/resolve/main/model.safetensors", "X-Linked-Size", "548105171");
    let info = downloader(&server).remote_info("https://huggingface.co/gpt2/resolve/main/model.safetensors").unwrap();
    assert_eq!(info.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(info.size, Some(548105171));
}

fn options(server: &Server, data: &Path, tokenizer: Option<PathBuf>) -> PrepareOptions {
    PrepareOptions {
        data_dir: data.into(),
        downloader: downloader(server),
        tokenizer,
        from: vec![],
        train_tokenizer: None,
    }
}

#[test]
fn shakespeare_char_matches_nanogpt() {
    let Some(shared) = common::shared() else { return };
    let server = Server::start();
    let body = corpus(&shared);
    server.add(SHAKESPEARE_PATH, body.clone());
    let data = Scratch::new("char");
    let p = prepare("shakespeare_char", &options(&server, data.path(), None)).unwrap();
    assert_eq!(p.meta.vocab_size, 65);
    assert_eq!(p.meta.files["train"].tokens, 1_003_854);
    assert_eq!(p.meta.files["val"].tokens, 111_540);
    // Independently: sorted characters, first 90% of the characters as train.
    let text = String::from_utf8(body).unwrap();
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort();
    chars.dedup();
    let chars_all: Vec<char> = text.chars().collect();
    let n = (chars_all.len() as f64 * 0.9) as usize;
    let ids: Vec<u32> = chars_all.iter().map(|c| chars.binary_search(c).unwrap() as u32).collect();
    assert_eq!(tokens(&p.dir, "train"), ids[..n]);
    assert_eq!(tokens(&p.dir, "val"), ids[n..]);
    assert_eq!(p.meta.tokenizer, TokenizerSpec::Char { itos: chars });
    // A second run finds it prepared and downloads nothing.
    let gets = server.gets(SHAKESPEARE_PATH).len();
    assert!(prepare("shakespeare_char", &options(&server, data.path(), None)).unwrap().already);
    assert_eq!(server.gets(SHAKESPEARE_PATH).len(), gets);
    // The same from a local file, no server involved.
    let local = Scratch::new("char-local");
    let opts = PrepareOptions {
        from: vec![shared.join("datasets/tinyshakespeare/input.txt")],
        ..options(&server, local.path(), None)
    };
    let q = prepare("shakespeare_char", &opts).unwrap();
    assert_eq!(q.meta, p.meta);
}

#[test]
fn shakespeare_bpe_matches_nanogpt_and_an_independent_encoder() {
    let Some(shared) = common::shared() else { return };
    let server = Server::start();
    let body = corpus(&shared);
    server.add(SHAKESPEARE_PATH, body.clone());
    let data = Scratch::new("bpe");
    let bpe = shared.join("tokenizers/gpt2");
    let p = prepare("shakespeare", &options(&server, data.path(), Some(bpe.clone()))).unwrap();
    assert_eq!(p.meta.vocab_size, 50257);
    assert_eq!(p.meta.files["train"].tokens, 301_966);
    assert_eq!(p.meta.files["val"].tokens, 36_059);
    let text = String::from_utf8(body).unwrap();
    let cut = text.char_indices().nth((text.chars().count() as f64 * 0.9) as usize).unwrap().0;
    let mut reference = common::gpt2_ref::Gpt2Ref::load(&bpe);
    assert_eq!(tokens(&p.dir, "train"), reference.encode(&text[..cut]));
    assert_eq!(tokens(&p.dir, "val"), reference.encode(&text[cut..]));
}

#[test]
fn gpt2_bpe_round_trips_and_parallel_equals_serial() {
    use proptest::prelude::*;
    let Some(shared) = common::shared() else { return };
    let bpe = shared.join("tokenizers/gpt2");
    let tok = Tokenizer::gpt2_from(&bpe).unwrap();
    let token_bytes = tok.token_bytes();
    assert_eq!((token_bytes.len(), token_bytes[50256]), (50257, 0));
    let reference = std::cell::RefCell::new(common::gpt2_ref::Gpt2Ref::load(&bpe));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 64, ..ProptestConfig::default() });
    runner
        .run(&"(\\PC|\\s){0,300}", |text| {
            let ids = tok.encode(&text).unwrap();
            prop_assert_eq!(tok.decode(&ids).unwrap(), text.clone());
            // Bits per byte's denominator: the tokens' bytes are the text's.
            prop_assert_eq!(ids.iter().map(|&i| token_bytes[i as usize] as usize).sum::<usize>(), text.len());
            prop_assert_eq!(tok.encode_parallel(&text).unwrap(), ids.clone());
            if text.is_ascii() {
                prop_assert_eq!(reference.borrow_mut().encode(&text), ids);
            }
            Ok(())
        })
        .unwrap();
    // The three file layouts give the same tokenizer.
    let dir = Scratch::new("layouts");
    std::fs::copy(bpe.join("encoder.json"), dir.path().join("vocab.json")).unwrap();
    std::fs::copy(bpe.join("vocab.bpe"), dir.path().join("merges.txt")).unwrap();
    let hf = Tokenizer::gpt2_from(dir.path()).unwrap();
    let Tokenizer::Gpt2(inner) = &hf else { panic!() };
    inner.save(dir.path().join("tokenizer.json"), false).unwrap();
    let json = Tokenizer::gpt2_from(&dir.path().join("tokenizer.json")).unwrap();
    let sample = "Hello, world!  It's 2026:\n\tnanoGPT → mlx-gpt.";
    assert_eq!(hf.encode(sample).unwrap(), tok.encode(sample).unwrap());
    assert_eq!(json.encode(sample).unwrap(), tok.encode(sample).unwrap());
    let err = Tokenizer::gpt2_from(&shared.join("datasets")).unwrap_err().to_string();
    assert!(err.contains("no GPT-2 tokenizer found"), "{err}");
}

/// Write a parquet file with one `text` column, `per_group` documents per row group.
fn write_parquet(path: &Path, docs: &[String], per_group: usize) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type("message schema { REQUIRED BYTE_ARRAY text (UTF8); }").unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in docs.chunks(per_group) {
        let mut rg = w.next_row_group().unwrap();
        while let Some(mut col) = rg.next_column().unwrap() {
            let values: Vec<ByteArray> = chunk.iter().map(|d| ByteArray::from(d.as_str())).collect();
            col.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

#[test]
fn hub_parquet_dataset_streams_splits_and_resumes() {
    let Some(shared) = common::shared() else { return };
    let text = String::from_utf8(corpus(&shared)).unwrap();
    // 3 shards of documents cut from the corpus (paragraphs), 2-3 row groups each.
    let paragraphs: Vec<String> = text.split("\n\n").take(300).map(str::to_string).collect();
    let shards: Vec<&[String]> = paragraphs.chunks(100).collect();
    let server = Server::start();
    let scratch = Scratch::new("owt");
    let mut urls = Vec::new();
    for (i, docs) in shards.iter().enumerate() {
        let path = scratch.path().join(format!("{i}.parquet"));
        write_parquet(&path, docs, 40);
        let url_path = format!("/api/datasets/test/owt/parquet/plain_text/train/{i}.parquet");
        server.add(&url_path, std::fs::read(&path).unwrap());
        urls.push(format!("https://huggingface.co{url_path}"));
    }
    server.add("/api/datasets/test/owt/parquet/plain_text/train", serde_json::to_vec(&urls).unwrap());
    let data = scratch.path().join("data");
    std::fs::create_dir_all(data.join("owt")).unwrap();
    std::fs::write(
        data.join("owt/manifest.json"),
        r#"{"name": "owt", "description": "test", "tokenizer": "gpt2", "val_fraction": 0.1, "seed": 2357,
            "hub_parquet": {"repo": "test/owt", "config": "plain_text", "split": "train", "column": "text"}}"#,
    )
    .unwrap();
    let bpe = shared.join("tokenizers/gpt2");
    let opts = options(&server, &data, Some(bpe.clone()));

    // Shard 1 is unavailable: the run stops after finishing shard 0.
    server.fail("/api/datasets/test/owt/parquet/plain_text/train/1.parquet", 404, 1);
    let err = prepare("owt", &opts).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert!(data.join("owt/shards/00000.done").is_file());
    assert!(!data.join("owt/meta.json").exists());
    // Resumed: shard 0 is not fetched again, the listing is not asked again.
    let p = prepare("owt", &opts).unwrap();
    assert_eq!(server.gets("/api/datasets/test/owt/parquet/plain_text/train/0.parquet").len(), 1);
    assert_eq!(server.gets("/api/datasets/test/owt/parquet/plain_text/train").len(), 1);
    assert!(!data.join("owt/shards").exists() && !data.join("owt/downloads/00001.parquet").exists());

    // Independently: every document encoded, followed by <|endoftext|>, in order, split by is_val.
    let mut reference = common::gpt2_ref::Gpt2Ref::load(&bpe);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut n_val = 0;
    for (s, docs) in shards.iter().enumerate() {
        for (r, d) in docs.iter().enumerate() {
            let mut ids = reference.encode(d);
            ids.push(50256);
            if openwebtext::is_val(2357, s as u64, r as u64, 0.1) {
                val.extend(ids);
                n_val += 1;
            } else {
                train.extend(ids);
            }
        }
    }
    assert!(n_val > 10 && n_val < 60, "{n_val} of 300 documents in val");
    assert_eq!(tokens(&p.dir, "train"), train);
    assert_eq!(tokens(&p.dir, "val"), val);
    assert_eq!(Meta::read(&p.dir.join("meta.json")).unwrap().vocab_size, 50257);
}

#[test]
fn extraction_of_each_format() {
    use std::io::Write;
    let dir = Scratch::new("extract");
    let content = b"First Citizen:\nBefore we proceed any further, hear me speak.\n".repeat(50);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // gzip
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&content).unwrap();
    std::fs::write(src.join("input.txt.gz"), gz.finish().unwrap()).unwrap();
    // xz
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &content[..], &mut xz).unwrap();
    std::fs::write(src.join("input.txt.xz"), xz).unwrap();
    // tar.gz
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "corpus/input.txt", &content[..]).unwrap();
    std::fs::write(src.join("input.tar.gz"), tar.into_inner().unwrap().finish().unwrap()).unwrap();
    // zip
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("corpus/input.txt", zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(&content).unwrap();
    std::fs::write(src.join("input.zip"), zip.finish().unwrap().into_inner()).unwrap();

    for name in ["input.txt.gz", "input.txt.xz", "input.tar.gz", "input.zip"] {
        let out = dir.path().join(format!("out-{name}"));
        let files = mlx_gpt_data::extract::extract(&src.join(name), &out).unwrap();
        assert_eq!(files.len(), 1, "{name}");
        assert_eq!(std::fs::read(&files[0]).unwrap(), content, "{name}");
    }
    std::fs::write(src.join("broken.txt.gz"), b"not gzip").unwrap();
    let err = mlx_gpt_data::extract::extract(&src.join("broken.txt.gz"), &dir.path().join("x")).unwrap_err();
    assert!(err.to_string().contains("broken.txt.gz"), "{err}");
    assert!(!dir.path().join("x/broken.txt").exists());
}

#[test]
fn unknown_dataset_and_missing_tokenizer_are_named() {
    let server = Server::start();
    let data = Scratch::new("unknown");
    let err = prepare("wikipedia", &options(&server, data.path(), None)).unwrap_err().to_string();
    assert!(err.contains("unknown dataset 'wikipedia'") && err.contains("shakespeare_char"), "{err}");
    let Some(shared) = common::shared() else { return };
    server.add(SHAKESPEARE_PATH, corpus(&shared));
    let err = prepare("shakespeare", &options(&server, data.path(), None)).unwrap_err().to_string();
    assert!(err.contains("--tokenizer"), "{err}");
}

#[test]
fn fetch_gpt2_verifies_what_the_hub_publishes_and_skips_what_is_complete() {
    let server = Server::start();
    let weights = b"pretend safetensors bytes".repeat(1000);
    let base = "/openai-community/gpt2/resolve/main";
    for f in mlx_gpt_data::pretrained::GPT2_FILES {
        let body =
            if *f == "model.safetensors" { weights.clone() } else { format!("{{\"file\": \"{f}\"}}").into_bytes() };
        server.add(&format!("{base}/{f}"), body);
    }
    // Only the LFS file has a published sha256 (as on the hub).
    server.header(&format!("{base}/model.safetensors"), "X-Linked-Etag", &format!("\"{}\"", sha256_hex(&weights)));
    server.header(&format!("{base}/model.safetensors"), "X-Linked-Size", &weights.len().to_string());
    let models = Scratch::new("gpt2");
    let d = downloader(&server);
    let files = mlx_gpt_data::pretrained::fetch_gpt2("gpt2", models.path(), &d).unwrap();
    assert_eq!(files.len(), 5);
    let st = files.iter().find(|f| f.file == "model.safetensors").unwrap();
    assert_eq!(st.sha256.as_deref(), Some(sha256_hex(&weights).as_str()));
    assert!(files.iter().filter(|f| f.file != "model.safetensors").all(|f| f.sha256.is_none()));
    assert_eq!(std::fs::read(models.path().join("gpt2/model.safetensors")).unwrap(), weights);
    // Again: everything is complete and verified, nothing is requested.
    let n = server.log().len();
    mlx_gpt_data::pretrained::fetch_gpt2("gpt2", models.path(), &d).unwrap();
    assert_eq!(server.log().len(), n);
    // A damaged local copy is fetched again.
    std::fs::write(models.path().join("gpt2/model.safetensors"), b"damaged").unwrap();
    mlx_gpt_data::pretrained::fetch_gpt2("gpt2", models.path(), &d).unwrap();
    assert_eq!(std::fs::read(models.path().join("gpt2/model.safetensors")).unwrap(), weights);
    // A hub hash that does not match the bytes: refused, nothing kept.
    server.header(&format!("{base}/model.safetensors"), "X-Linked-Etag", "ignored-second-value");
    let other = Scratch::new("gpt2-bad");
    server.add(&format!("{base}/model.safetensors"), b"different bytes".to_vec());
    let err = mlx_gpt_data::pretrained::fetch_gpt2("gpt2", other.path(), &d).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    assert!(!other.path().join("gpt2/model.safetensors").exists());
}

/// A BPE trained on a corpus compresses that corpus better than GPT-2's general one
/// (nanochat's tok_eval comparison), and decodes it back exactly.
#[test]
fn a_bpe_trained_on_shakespeare_beats_gpt2_on_it() {
    let Some(shared) = common::shared() else { return };
    let text = String::from_utf8(corpus(&shared)).unwrap();
    // The first 300 kB, in documents of 40 lines (a debug build trains slowly).
    let part: String = text.chars().take(300_000).collect();
    let lines: Vec<&str> = part.split_inclusive('\n').collect();
    let docs: Vec<String> = lines.chunks(40).map(|c| c.concat()).collect();
    let ours = mlx_gpt_data::bpe_train::train_bpe(docs.iter(), 4096, false).unwrap();
    let gpt2 = Tokenizer::gpt2_from(&shared.join("tokenizers/gpt2")).unwrap();
    let ids = ours.encode(part.as_str(), false).unwrap().get_ids().to_vec();
    assert_eq!(ours.decode(&ids, false).unwrap(), part);
    let ours_bpt = part.len() as f64 / ids.len() as f64;
    let gpt2_bpt = part.len() as f64 / gpt2.encode(&part).unwrap().len() as f64;
    assert!(ours_bpt > gpt2_bpt * 1.05, "bytes per token: trained {ours_bpt:.3}, GPT-2 {gpt2_bpt:.3}");
}
