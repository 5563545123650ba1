//! Token data sources (models/src/data.rs): windows follow the documented
//! sampling rule (checked against a reference implementation that draws
//! SplitMix64 sequentially), the position resumes exactly, bad files are
//! clear errors, and a multi-GiB token file is sampled with small RSS.

use std::io::Write;
use std::path::Path;

use baton_engine::init::SplitMix64;
use baton_models::data::{DataPosition, DataSource, TokenDtype, TokenFile, WindowSampler};

fn write_tokens(path: &Path, tokens: &[u32], dtype: TokenDtype) {
    let mut f = std::fs::File::create(path).unwrap();
    for &t in tokens {
        match dtype {
            TokenDtype::U8 => f.write_all(&[t as u8]).unwrap(),
            TokenDtype::U16 => f.write_all(&(t as u16).to_le_bytes()).unwrap(),
            TokenDtype::U32 => f.write_all(&t.to_le_bytes()).unwrap(),
        }
    }
}

/// The rule of the module documentation, written out plainly: window n of
/// the run starts at the n-th SplitMix64 output mod (len − T).
fn reference(tokens: &[u32], t: usize, batch: usize, steps: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = SplitMix64::new(seed);
    (0..steps)
        .map(|_| {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for _ in 0..batch {
                let start = (rng.next_u64() % (tokens.len() - t) as u64) as usize;
                x.extend_from_slice(&tokens[start..start + t]);
                y.extend_from_slice(&tokens[start + 1..start + t + 1]);
            }
            (x, y)
        })
        .collect()
}

#[test]
fn windows_match_the_reference_rule() {
    let dir = tempfile::tempdir().unwrap();
    for (dtype, modulus, vocab) in
        [(TokenDtype::U8, 256, 256), (TokenDtype::U16, 50_000, 50_257), (TokenDtype::U32, 100_000, 100_000)]
    {
        let tokens: Vec<u32> = (0..3_001u32).map(|i| i.wrapping_mul(2_654_435_761) % modulus).collect();
        let path = dir.path().join(format!("{dtype:?}.bin"));
        write_tokens(&path, &tokens, dtype);
        let file = TokenFile::open(&path, dtype).unwrap();
        assert_eq!(file.len(), tokens.len() as u64);
        let mut sampler = WindowSampler::new(file, 16, 5, vocab, 42).unwrap();
        for (step, (x, y)) in reference(&tokens, 16, 5, 7, 42).into_iter().enumerate() {
            let batch = sampler.next_batch().unwrap();
            assert_eq!((batch.x, batch.y), (x, y), "{dtype:?} step {step}");
        }
        assert_eq!(sampler.position(), DataPosition { seed: 42, windows: 35 });
    }
}

#[test]
fn a_sampler_resumes_from_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.bin");
    let tokens: Vec<u32> = (0..10_000).map(|i| i % 977).collect();
    write_tokens(&path, &tokens, TokenDtype::U16);
    let open = || TokenFile::open(&path, TokenDtype::U16).unwrap();
    let mut whole = WindowSampler::new(open(), 32, 3, 1000, 9).unwrap();
    let batches: Vec<_> = (0..4).map(|_| whole.next_batch().unwrap()).collect();
    let mut first = WindowSampler::new(open(), 32, 3, 1000, 9).unwrap();
    first.next_batch().unwrap();
    let mut resumed = WindowSampler::resume(open(), 32, 3, 1000, first.position()).unwrap();
    for want in &batches[1..] {
        assert_eq!(&resumed.next_batch().unwrap(), want);
    }
}

#[test]
fn bad_token_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, [1u8, 2, 3]).unwrap();
    let err = TokenFile::open(&odd, TokenDtype::U16).err().unwrap().to_string();
    assert!(err.contains("odd.bin") && err.contains("3 bytes is not a whole number of 2-byte tokens"), "{err}");

    let path = dir.path().join("big-ids.bin");
    write_tokens(&path, &[1, 2, 3, 60_000, 4, 5], TokenDtype::U16);
    let mut sampler = WindowSampler::new(TokenFile::open(&path, TokenDtype::U16).unwrap(), 5, 1, 50_257, 0).unwrap();
    let err = sampler.next_batch().unwrap_err().to_string();
    assert!(err.contains("token 60000 at position 3 is outside the vocabulary (0..50257)"), "{err}");

    let text = dir.path().join("short.txt");
    std::fs::write(&text, b"hello").unwrap();
    let file = || TokenFile::open(&text, TokenDtype::U8).unwrap();
    let err = WindowSampler::new(file(), 5, 1, 256, 0).err().unwrap().to_string();
    assert!(err.contains("holds 5 tokens; a window needs T + 1 = 6"), "{err}");
    let err = WindowSampler::new(file(), 2, 1, 100, 0).err().unwrap().to_string();
    assert!(err.contains("256 byte tokens but the model's vocabulary is 100"), "{err}");
    let missing = TokenFile::open(&dir.path().join("absent.bin"), TokenDtype::U8).err().unwrap().to_string();
    assert!(missing.contains("absent.bin"), "{missing}");
}

#[test]
fn sources_parse_as_documented() {
    let tokens = |p: &str, dtype| DataSource::Tokens { path: p.into(), dtype };
    assert_eq!("text:README.md".parse::<DataSource>().unwrap(), tokens("README.md", TokenDtype::U8));
    assert_eq!("tokens:train.bin".parse::<DataSource>().unwrap(), tokens("train.bin", TokenDtype::U16));
    assert_eq!("tokens:a,b.bin,dtype=u32".parse::<DataSource>().unwrap(), tokens("a,b.bin", TokenDtype::U32));
    assert_eq!("d.safetensors".parse::<DataSource>().unwrap(), DataSource::Safetensors("d.safetensors".into()));
    let err = "tokens:t.bin,dtype=u8".parse::<DataSource>().unwrap_err().to_string();
    assert!(err.contains("unknown token dtype `u8`"), "{err}");
    assert!("text:".parse::<DataSource>().is_err());
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A 6 GiB token file (sparse: it costs no disk) is sampled all over with
/// resident memory growing by a few MiB, not by the file's size.
#[test]
fn a_multi_gib_token_file_is_sampled_with_small_rss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.bin");
    let size: u64 = 6 << 30;
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let before = rss_kib();
    let file = TokenFile::open(&path, TokenDtype::U16).unwrap();
    assert_eq!(file.len(), size / 2);
    let mut sampler = WindowSampler::new(file, 256, 16, 50_257, 1).unwrap();
    let mut furthest = 0;
    for _ in 0..50 {
        let batch = sampler.next_batch().unwrap();
        assert!(batch.x.iter().all(|&t| t == 0));
        furthest = furthest.max(*batch.starts.iter().max().unwrap());
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(furthest > (size / 2) * 3 / 4, "windows reach the far end of the file ({furthest})");
    assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB sampling a {size}-byte file");
}
