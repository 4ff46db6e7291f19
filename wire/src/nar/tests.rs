use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::AsyncReadExt;

use super::*;

const GOLDEN_S2C: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/golden/serve/legacy-top.s2c"
));
/// legacy-top.txt: `S< @1400 nar NAR 1488 bytes`, the last message.
const GOLDEN_NAR_AT: usize = 1400;
const GOLDEN_NAR_SIZE: u64 = 1488;
const GOLDEN_NAR_HASH: &str = "sha256:1zx169151lgzamnivj4i4g79p4gy5f1dwl8s83iq71qq86679zfa";

fn golden_nar() -> &'static [u8] {
    &GOLDEN_S2C[GOLDEN_NAR_AT..]
}

/// Feeds `bytes` in the given chunk sizes (cycled); returns the summary and
/// how many bytes were consumed.
fn parse_chunked(
    bytes: &[u8],
    chunks: &[usize],
    limits: NarLimits,
) -> Result<(NarSummary, usize), Error> {
    let mut p = NarParser::new(limits);
    let mut pos = 0;
    for &size in chunks.iter().cycle() {
        if pos >= bytes.len() || p.is_done() {
            break;
        }
        let end = (pos + size.max(1)).min(bytes.len());
        let n = p.feed(&bytes[pos..end])?;
        assert_eq!(p.consumed(), (pos + n) as u64);
        if pos + n < end {
            assert!(p.is_done(), "a short consume means the NAR ended");
        }
        pos += n;
    }
    p.finish().map(|s| (s, pos))
}

fn parse(bytes: &[u8]) -> Result<NarSummary, Error> {
    parse_chunked(bytes, &[usize::MAX], NarLimits::default()).map(|(s, _)| s)
}

/// A NAR from raw tokens, for building malformed input.
fn tokens(toks: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::new();
    for t in toks {
        put_bytes(&mut buf, t);
    }
    buf
}

fn file(contents: &[u8]) -> NarNode {
    NarNode::Regular {
        executable: false,
        contents: contents.to_vec(),
    }
}

/// A directory NAR whose entries are emitted in the given order, unchecked.
fn dir_with_names(names: &[&[u8]]) -> Vec<u8> {
    let mut toks: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for name in names {
        toks.extend_from_slice(&[b"entry", b"(", b"name", name, b"node"]);
        toks.extend_from_slice(&[b"(", b"type", b"symlink", b"target", b"t", b")", b")"]);
    }
    toks.push(b")");
    tokens(&toks)
}

fn expect_bad(bytes: &[u8], limits: NarLimits, needle: &str) -> u64 {
    match parse_chunked(bytes, &[usize::MAX], limits) {
        Err(Error::BadNar { offset, reason }) => {
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            );
            offset
        }
        other => panic!("expected BadNar({needle}), got {other:?}"),
    }
}

#[test]
fn golden_nar_from_a_serve_transcript() {
    assert_eq!(golden_nar().len() as u64, GOLDEN_NAR_SIZE);
    let s = parse(golden_nar()).unwrap();
    assert_eq!(s.size, GOLDEN_NAR_SIZE);
    assert_eq!(s.sha256, Sha256Hash::parse_any(GOLDEN_NAR_HASH).unwrap());
    assert_eq!(s.sha256, Sha256Hash::digest(golden_nar()));
}

#[test]
fn byte_by_byte_gives_the_same_summary() {
    let whole = parse(golden_nar()).unwrap();
    let (bytewise, n) = parse_chunked(golden_nar(), &[1], NarLimits::default()).unwrap();
    assert_eq!(bytewise, whole);
    assert_eq!(n as u64, GOLDEN_NAR_SIZE);
}

#[test]
fn trailing_bytes_are_not_consumed() {
    let mut stream = golden_nar().to_vec();
    stream.extend_from_slice(b"next message");
    let mut p = NarParser::new(NarLimits::default());
    assert_eq!(p.feed(&stream).unwrap() as u64, GOLDEN_NAR_SIZE);
    assert!(p.is_done());
    assert_eq!(p.feed(b"more").unwrap(), 0);
    assert_eq!(p.finish().unwrap().size, GOLDEN_NAR_SIZE);
}

#[test]
fn an_unhashed_parser_frames_and_counts_like_a_hashing_one_and_refuses_finish() {
    let mut stream = golden_nar().to_vec();
    stream.extend_from_slice(b"next message");
    let mut p = NarParser::unhashed(NarLimits::default());
    assert!(p.end().is_err(), "nothing fed yet");
    let mut pos = 0;
    for piece in stream.chunks(7) {
        pos += p.feed(piece).unwrap();
    }
    assert_eq!(pos as u64, GOLDEN_NAR_SIZE);
    assert_eq!(p.end().unwrap(), GOLDEN_NAR_SIZE);
    let err = p.finish().unwrap_err();
    assert!(err.to_string().contains("unhashed"), "{err}");
    let mut bad = golden_nar().to_vec();
    bad[9] ^= 0xff;
    assert!(
        NarParser::unhashed(NarLimits::default())
            .feed(&bad)
            .is_err()
    );
}

#[test]
fn every_truncation_is_an_error_at_finish() {
    let nar = golden_nar();
    for cut in 0..nar.len() {
        let mut p = NarParser::new(NarLimits::default());
        assert_eq!(p.feed(&nar[..cut]).unwrap(), cut);
        assert!(!p.is_done());
        let err = p.finish().unwrap_err();
        assert!(
            matches!(err, Error::BadNar { offset, .. } if offset == cut as u64),
            "{err}"
        );
    }
}

/// Test-only tree decoder over an already validated NAR.
struct Tokens<'a>(&'a [u8]);

impl<'a> Tokens<'a> {
    fn next(&mut self) -> &'a [u8] {
        let len = u64::from_le_bytes(self.0[..8].try_into().unwrap()) as usize;
        let tok = &self.0[8..8 + len];
        self.0 = &self.0[8 + len + padding_len(len as u64)..];
        tok
    }

    fn node(&mut self) -> NarNode {
        assert_eq!((self.next(), self.next()), (&b"("[..], &b"type"[..]));
        let node = match self.next() {
            b"regular" => {
                let executable = self.next() == b"executable";
                if executable {
                    assert_eq!((self.next(), self.next()), (&b""[..], &b"contents"[..]));
                }
                let contents = self.next().to_vec();
                NarNode::Regular {
                    executable,
                    contents,
                }
            }
            b"symlink" => {
                assert_eq!(self.next(), b"target");
                NarNode::Symlink {
                    target: self.next().to_vec(),
                }
            }
            b"directory" => self.entries(),
            t => panic!("bad type {t:?}"),
        };
        assert_eq!(self.next(), b")");
        node
    }

    fn entries(&mut self) -> NarNode {
        let mut entries = Vec::new();
        while self.0[8..].starts_with(b"entry") {
            let toks = [self.next(), self.next(), self.next()];
            assert_eq!(toks, [&b"entry"[..], b"(", b"name"]);
            let name = self.next().to_vec();
            assert_eq!(self.next(), b"node");
            entries.push((name, self.node()));
            assert_eq!(self.next(), b")");
        }
        NarNode::Directory(entries)
    }
}

#[test]
fn encoder_reproduces_the_golden_nar() {
    let mut toks = Tokens(golden_nar());
    assert_eq!(toks.next(), NAR_MAGIC);
    let mut node = toks.node();
    assert!(toks.0.is_empty());
    if let NarNode::Directory(entries) = &mut node {
        assert_eq!(entries.len(), 3);
        entries.reverse();
    }
    assert_eq!(encode_nar(&node), golden_nar());
}

#[test]
fn executable_files_and_empty_contents() {
    let nar = encode_nar(&NarNode::Regular {
        executable: true,
        contents: Vec::new(),
    });
    assert_eq!(parse(&nar).unwrap().size, nar.len() as u64);
    let empty_dir = encode_nar(&NarNode::Directory(Vec::new()));
    assert_eq!(parse(&empty_dir).unwrap().size, empty_dir.len() as u64);
}

#[test]
fn directory_entries_must_be_strictly_sorted() {
    let d = NarLimits::default();
    assert!(parse(&dir_with_names(&[b"a", b"b", b"ba"])).is_ok());
    expect_bad(&dir_with_names(&[b"b", b"a"]), d, "not sorted");
    expect_bad(&dir_with_names(&[b"a", b"a"]), d, "duplicate");
}

#[test]
fn bad_entry_names_are_rejected() {
    let d = NarLimits::default();
    expect_bad(&dir_with_names(&[b".."]), d, ". or ..");
    expect_bad(&dir_with_names(&[b"."]), d, ". or ..");
    expect_bad(&dir_with_names(&[b"a/b"]), d, "contains /");
    expect_bad(&dir_with_names(&[b"a\0b"]), d, "NUL");
    expect_bad(&dir_with_names(&[b""]), d, "empty entry name");
    let long = vec![b'x'; 256];
    expect_bad(&dir_with_names(&[&long]), d, "exceeds 255");
    assert!(parse(&dir_with_names(&[&long[..255]])).is_ok());
}

#[test]
fn bad_symlink_targets_are_rejected() {
    let d = NarLimits::default();
    let link = |t: &[u8]| {
        tokens(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"symlink",
            b"target",
            t,
            b")",
        ])
    };
    assert!(parse(&link(b"/nix/store/x")).is_ok());
    expect_bad(&link(b""), d, "empty symlink target");
    expect_bad(&link(b"a\0"), d, "NUL");
    expect_bad(&link(&[b'x'; 4096]), d, "exceeds 4095");
}

#[test]
fn non_zero_padding_is_rejected_at_its_offset() {
    let mut nar = encode_nar(&file(b"x"));
    // "nix-archive-1" is 13 bytes: padding at 21..24.
    nar[22] = 1;
    let offset = expect_bad(&nar, NarLimits::default(), "padding");
    assert_eq!(offset, 22);
}

#[test]
fn wrong_magic_and_wrong_tags_are_rejected() {
    let d = NarLimits::default();
    let off = expect_bad(
        &tokens(&[b"nix-archive-2"]),
        d,
        "expected \"nix-archive-1\"",
    );
    assert_eq!(off, 0);
    let bad_tags: [&[&[u8]]; 6] = [
        &[b"nix-archive-1", b"[", b"type"],
        &[b"nix-archive-1", b"(", b"typ"],
        &[b"nix-archive-1", b"(", b"type", b"fifo"],
        &[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"x",
        ],
        &[b"nix-archive-1", b"(", b"type", b"regular", b"target"],
        &[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"node",
        ],
    ];
    for toks in bad_tags {
        expect_bad(&tokens(toks), d, "expected");
    }
    // Offset names the token: "typ" starts after magic (24) and "(" (16).
    let off = expect_bad(&tokens(bad_tags[1]), d, "\"type\"");
    assert_eq!(off, 40);
}

#[test]
fn oversized_tag_lengths_fail_before_buffering() {
    let mut nar = tokens(&[b"nix-archive-1"]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    let off = expect_bad(&nar, NarLimits::default(), "exceeds 32");
    assert_eq!(off, 24);
}

#[test]
fn nesting_deeper_than_max_depth_is_rejected() {
    let mut node = file(b"leaf");
    for _ in 0..3 {
        node = NarNode::Directory(vec![(b"d".to_vec(), node)]);
    }
    let nar = encode_nar(&node);
    let limits = |max_depth| NarLimits {
        max_depth,
        ..NarLimits::default()
    };
    assert!(parse_chunked(&nar, &[usize::MAX], limits(3)).is_ok());
    expect_bad(&nar, limits(2), "nested deeper");
}

/// A name or target announcing an absurd length fails at its length field,
/// before any of the announced bytes would be buffered.
#[test]
fn absurd_name_and_target_lengths_fail_at_the_length_field() {
    let mut dir = tokens(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
    ]);
    let name_at = dir.len() as u64;
    dir.extend_from_slice(&u64::MAX.to_le_bytes());
    let off = expect_bad(&dir, NarLimits::default(), "of entry name exceeds 255");
    assert_eq!(off, name_at);

    let mut link = tokens(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target"]);
    let target_at = link.len() as u64;
    link.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let off = expect_bad(
        &link,
        NarLimits::default(),
        "of symlink target exceeds 4095",
    );
    assert_eq!(off, target_at);
}

/// `max_entries` counts entries in every directory of the NAR together.
#[test]
fn max_entries_caps_the_entries_of_the_whole_nar() {
    let sub = |names: &[&str]| {
        let entries = names.iter().map(|n| (n.as_bytes().to_vec(), file(b"")));
        NarNode::Directory(entries.collect())
    };
    // 2 top-level entries + 2 + 1 below them = 5.
    let tree = NarNode::Directory(vec![
        (b"a".to_vec(), sub(&["x", "y"])),
        (b"b".to_vec(), sub(&["z"])),
    ]);
    let nar = encode_nar(&tree);
    let limits = |max_entries| NarLimits {
        max_entries,
        ..NarLimits::default()
    };
    assert!(parse_chunked(&nar, &[3], limits(5)).is_ok());
    expect_bad(&nar, limits(4), "more than 4 directory entries");
    let empty_dir = encode_nar(&NarNode::Directory(Vec::new()));
    assert!(parse_chunked(&empty_dir, &[1], limits(0)).is_ok());
}

/// Sorting is per directory: the same name in sibling directories is fine.
#[test]
fn the_same_name_in_two_directories_is_not_a_duplicate() {
    let sub = || NarNode::Directory(vec![(b"same".to_vec(), file(b"x"))]);
    let tree = NarNode::Directory(vec![(b"a".to_vec(), sub()), (b"b".to_vec(), sub())]);
    assert!(parse(&encode_nar(&tree)).is_ok());
}

#[test]
fn max_nar_bytes_is_enforced() {
    let nar = encode_nar(&file(&[7u8; 100]));
    let limits = |max_nar_bytes| NarLimits {
        max_nar_bytes,
        ..NarLimits::default()
    };
    assert!(parse_chunked(&nar, &[5], limits(nar.len() as u64)).is_ok());
    expect_bad(&nar, limits(nar.len() as u64 - 1), "max_nar_bytes");
    let mut huge = tokens(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    expect_bad(&huge, NarLimits::default(), "max_nar_bytes");
}

#[test]
fn errors_are_sticky() {
    let mut p = NarParser::new(NarLimits::default());
    let bad = tokens(&[b"nix-archive-2"]);
    assert!(p.feed(&bad).is_err());
    let good = encode_nar(&file(b""));
    assert!(p.feed(&good).is_err());
    assert!(p.finish().is_err());
}

#[test]
fn large_contents_are_streamed() {
    const SIZE: u64 = 64 << 20;
    let mut head = tokens(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    head.extend_from_slice(&SIZE.to_le_bytes());
    let tail = tokens(&[b")"]);
    let chunk = vec![0xa5u8; 1 << 20];
    let mut p = NarParser::new(NarLimits::default());
    let mut reference = sha2::Sha256::new();
    assert_eq!(p.feed(&head).unwrap(), head.len());
    reference.update(&head);
    for _ in 0..SIZE / chunk.len() as u64 {
        assert_eq!(p.feed(&chunk).unwrap(), chunk.len());
        reference.update(&chunk);
    }
    assert_eq!(p.feed(&tail).unwrap(), tail.len());
    reference.update(&tail);
    let s = p.finish().unwrap();
    assert_eq!(s.size, head.len() as u64 + SIZE + tail.len() as u64);
    assert_eq!(s.sha256, Sha256Hash(reference.finalize().into()));
}

#[tokio::test]
async fn copy_nar_copies_exactly_the_nar() {
    let mut stream = golden_nar().to_vec();
    stream.extend_from_slice(b"rest");
    let mut r = tokio::io::BufReader::with_capacity(7, &stream[..]);
    let mut out = Vec::new();
    let s = copy_nar(&mut r, &mut out, NarLimits::default())
        .await
        .unwrap();
    assert_eq!(s.size, GOLDEN_NAR_SIZE);
    assert_eq!(out, golden_nar());
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"rest");
}

#[tokio::test]
async fn copy_nar_reports_eof_and_malformed_input() {
    let nar = golden_nar();
    let mut out = Vec::new();
    let err = copy_nar(&mut &nar[..100], &mut out, NarLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedEof { field: "NAR" }),
        "{err}"
    );
    assert_eq!(out, &nar[..100]);
    let bad = tokens(&[b"nix-archive-2"]);
    let err = copy_nar(&mut &bad[..], &mut Vec::new(), NarLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadNar { .. }), "{err}");
}

struct BrokenPipe;

impl AsyncWrite for BrokenPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn copy_nar_reports_write_errors() {
    let err = copy_nar(&mut golden_nar(), &mut BrokenPipe, NarLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Write(_)), "{err}");
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_node() -> impl Strategy<Value = NarNode> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
            |(executable, contents)| NarNode::Regular {
                executable,
                contents
            }
        ),
        proptest::collection::vec(1u8..=255, 1..30).prop_map(|target| NarNode::Symlink { target }),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..6)
            .prop_map(|m| NarNode::Directory(m.into_iter().rev().collect()))
    })
}

proptest! {
    #[test]
    fn random_trees_parse_with_the_right_hash(node in arb_node(), chunks in proptest::collection::vec(1usize..50, 1..8)) {
        let nar = encode_nar(&node);
        let (s, n) = parse_chunked(&nar, &chunks, NarLimits::default()).unwrap();
        prop_assert_eq!(n, nar.len());
        prop_assert_eq!(s.size, nar.len() as u64);
        prop_assert_eq!(s.sha256, Sha256Hash::digest(&nar));
    }

    #[test]
    fn random_splits_give_the_same_summary(chunks in proptest::collection::vec(1usize..200, 1..10)) {
        let (s, n) = parse_chunked(golden_nar(), &chunks, NarLimits::default()).unwrap();
        prop_assert_eq!(n as u64, GOLDEN_NAR_SIZE);
        prop_assert_eq!(s.sha256, Sha256Hash::parse_any(GOLDEN_NAR_HASH).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut p = NarParser::new(NarLimits::default());
        if let Ok(n) = p.feed(&bytes) {
            prop_assert!(n <= bytes.len());
        }
    }
}
