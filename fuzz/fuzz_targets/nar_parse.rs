//! The streaming NAR tokenizer on arbitrary bytes (after a first byte that
//! picks a chunk size). Checks: the verdict, the bytes consumed, the error
//! offset and the summary do not depend on how the input is chunked; the
//! parser's memory stays within a fixed budget whatever the input claims
//! (O(max_depth · max_name_len), nothing proportional to a declared
//! length); an accepted NAR decodes to a tree that re-encodes to exactly
//! the bytes consumed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay_fuzz::{Budget, NAR_LIMITS, nar_tree};
use nix_relay_wire::nar::{NarParser, NarSummary, encode_nar};

/// The parser's own state: the directory stack of last names, the current
/// token (≤ max_target_len), the hasher.
const PARSER_BUDGET: usize = 128 << 10;

#[derive(Debug, PartialEq)]
enum Verdict {
    Done(NarSummary, u64),
    Truncated(u64),
    Bad(String),
}

fn parse(data: &[u8], chunk: usize) -> Verdict {
    let mut p = NarParser::new(NAR_LIMITS);
    let mut pos = 0;
    while pos < data.len() && !p.is_done() {
        let end = data.len().min(pos + chunk);
        match p.feed(&data[pos..end]) {
            Ok(n) => pos += n,
            Err(e) => return Verdict::Bad(e.to_string()),
        }
        if pos < end && !p.is_done() {
            panic!("parser stopped short of the chunk end without being done");
        }
    }
    let consumed = p.consumed();
    assert_eq!(consumed, pos as u64, "consumed() counts fed bytes");
    match p.finish() {
        Ok(s) => Verdict::Done(s, consumed),
        Err(_) => Verdict::Truncated(consumed),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, nar)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(c) + 1;
    let (whole, chunked) = {
        let _b = Budget::new(PARSER_BUDGET);
        (parse(nar, usize::MAX), parse(nar, chunk))
    };
    assert_eq!(whole, chunked, "chunking changes nothing (chunk = {chunk})");
    if let Verdict::Done(summary, consumed) = whole {
        assert_eq!(summary.size, consumed);
        let bytes = &nar[..consumed as usize];
        let tree = nar_tree::decode(bytes);
        assert_eq!(
            encode_nar(&tree),
            bytes,
            "an accepted NAR re-encodes byte for byte"
        );
    }
});
