use proptest::prelude::*;

use super::*;

const A1: &str = "/nix/store/kcf8fknjdlmd7fkvzyzp9vj5s5vgacd9-proxytest-a1";
const DEP_A1: &str = "/nix/store/mmf60akd6iw3fl8likvzq34izcgxk0ss-proxytest-dep-a1";
const A1_NAR_HASH: &str = "sha256:0492z7nxpqn3jb03k87kvw5l2aw84q8y46kwrws1kvx590rzm9zb";
const FILE_HASH: &str = "sha256:1zx169151lgzamnivj4i4g79p4gy5f1dwl8s83iq71qq86679zfa";

fn path(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

fn hash(s: &str) -> Sha256Hash {
    Sha256Hash::parse_any(s).unwrap()
}

/// The §7.3 path, with every optional field set.
fn example() -> NarInfo {
    NarInfo {
        store_path: path(A1),
        url: "nar/1zx169151lgzamnivj4i4g79p4gy5f1dwl8s83iq71qq86679zfa.nar.zst".into(),
        compression: "zstd".into(),
        file_hash: Some(hash(FILE_HASH)),
        file_size: Some(400),
        nar_hash: hash(A1_NAR_HASH),
        nar_size: 592,
        references: vec![path(DEP_A1)],
        deriver: Some(path(
            "/nix/store/9gr7sp3s20jq6z0b3vjd7ab3bsi9r6w0-proxytest-a1.drv",
        )),
        system: Some("x86_64-linux".into()),
        sigs: vec!["proxy-test-1:c2ln".into(), "other-1:b3RoZXI=".into()],
        ca: Some("fixed:r:sha256:0492z7nxpqn3jb03k87kvw5l2aw84q8y46kwrws1kvx590rzm9zb".into()),
    }
}

const EXAMPLE_TEXT: &str = "\
StorePath: /nix/store/kcf8fknjdlmd7fkvzyzp9vj5s5vgacd9-proxytest-a1
URL: nar/1zx169151lgzamnivj4i4g79p4gy5f1dwl8s83iq71qq86679zfa.nar.zst
Compression: zstd
FileHash: sha256:1zx169151lgzamnivj4i4g79p4gy5f1dwl8s83iq71qq86679zfa
FileSize: 400
NarHash: sha256:0492z7nxpqn3jb03k87kvw5l2aw84q8y46kwrws1kvx590rzm9zb
NarSize: 592
References: mmf60akd6iw3fl8likvzq34izcgxk0ss-proxytest-dep-a1
Deriver: 9gr7sp3s20jq6z0b3vjd7ab3bsi9r6w0-proxytest-a1.drv
System: x86_64-linux
Sig: proxy-test-1:c2ln
Sig: other-1:b3RoZXI=
CA: fixed:r:sha256:0492z7nxpqn3jb03k87kvw5l2aw84q8y46kwrws1kvx590rzm9zb
";

/// Required keys only.
const MINIMAL_TEXT: &str = "\
StorePath: /nix/store/kcf8fknjdlmd7fkvzyzp9vj5s5vgacd9-proxytest-a1
URL: nar/x.nar
NarHash: sha256:0492z7nxpqn3jb03k87kvw5l2aw84q8y46kwrws1kvx590rzm9zb
NarSize: 592
";

#[test]
fn fingerprint_matches_the_reference_signature_input() {
    // §7.3: the string Nix 2.8 signed for proxytest-a1.
    let expected = format!("1;{A1};{A1_NAR_HASH};592;{DEP_A1}");
    assert_eq!(example().fingerprint(), expected);
}

#[test]
fn fingerprint_sorts_references_and_ends_with_semicolon_when_empty() {
    let mut info = example();
    info.references = vec![path(DEP_A1), path(A1)];
    assert!(info.fingerprint().ends_with(&format!(";592;{A1},{DEP_A1}")));
    info.references.clear();
    assert!(info.fingerprint().ends_with(";592;"));
}

#[test]
fn render_writes_nix_copy_order() {
    assert_eq!(example().render(), EXAMPLE_TEXT);
}

#[test]
fn render_keeps_an_empty_references_line_and_omits_absent_keys() {
    let info = NarInfo::parse(MINIMAL_TEXT).unwrap();
    let text = info.render();
    assert_eq!(
        text,
        MINIMAL_TEXT.replace("NarHash", "Compression: bzip2\nNarHash") + "References: \n"
    );
    assert_eq!(NarInfo::parse(&text).unwrap(), info);
}

#[test]
fn parse_reads_back_what_render_wrote() {
    assert_eq!(NarInfo::parse(EXAMPLE_TEXT).unwrap(), example());
}

#[test]
fn parse_fills_defaults() {
    let info = NarInfo::parse(MINIMAL_TEXT).unwrap();
    assert_eq!(info.compression, "bzip2");
    assert_eq!(info.references, Vec::new());
    assert_eq!(
        (info.file_hash, info.file_size, info.deriver),
        (None, None, None)
    );
    assert!(info.sigs.is_empty());
}

#[test]
fn parse_treats_unknown_deriver_as_none_and_ignores_unknown_keys() {
    let text = format!("{MINIMAL_TEXT}Deriver: unknown-deriver\nFuture: whatever\nReferences: \n");
    let info = NarInfo::parse(&text).unwrap();
    assert_eq!(info.deriver, None);
}

#[test]
fn parse_accepts_other_hash_spellings_with_a_prefix() {
    let hex = format!("sha256:{}", hash(A1_NAR_HASH).to_hex());
    let text = MINIMAL_TEXT.replace(A1_NAR_HASH, &hex);
    assert_eq!(NarInfo::parse(&text).unwrap().nar_hash, hash(A1_NAR_HASH));
}

fn expect_error(text: &str, line: usize, needle: &str) {
    let err = NarInfo::parse(text).unwrap_err();
    assert_eq!(err.line, line, "{err}");
    assert!(err.reason.contains(needle), "{err} lacks {needle:?}");
}

#[test]
fn parse_rejects_missing_required_keys() {
    for (key, line) in [("StorePath", 1), ("URL", 2), ("NarHash", 3), ("NarSize", 4)] {
        let text: String = MINIMAL_TEXT
            .lines()
            .enumerate()
            .filter(|(i, _)| i + 1 != line)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        expect_error(&text, 0, key);
    }
}

#[test]
fn parse_is_strict_about_lines_and_values() {
    let cases = [
        (
            MINIMAL_TEXT.replace("NarSize: 592", "NarSize: 0"),
            4,
            "NarSize",
        ),
        (
            MINIMAL_TEXT.replace("NarSize: 592", "NarSize: +592"),
            4,
            "decimal",
        ),
        (
            MINIMAL_TEXT.replace("NarSize: 592", "NarSize: 99999999999999999999"),
            4,
            "range",
        ),
        (MINIMAL_TEXT.replace("URL: ", "URL:"), 2, "\": \""),
        (MINIMAL_TEXT.replace("URL: nar/x.nar", "URL: "), 2, "empty"),
        (
            MINIMAL_TEXT.replace("sha256:0492", "sha512:0492"),
            3,
            "hash",
        ),
        (MINIMAL_TEXT.replace("sha256:0492", "0492"), 3, "prefix"),
        (
            MINIMAL_TEXT.replace("/nix/store/", "/tmp/"),
            1,
            "store path",
        ),
        (format!("{MINIMAL_TEXT}NarSize: 592\n"), 5, "duplicate"),
        (
            format!("{MINIMAL_TEXT}References: /nix/store/x\n"),
            5,
            "store path",
        ),
        (format!("{MINIMAL_TEXT}\n"), 5, "\": \""),
        (MINIMAL_TEXT.trim_end().to_owned(), 4, "final newline"),
    ];
    for (text, line, needle) in cases {
        expect_error(&text, line, needle);
    }
}

fn arb_path() -> impl Strategy<Value = StorePath> {
    ("[0-9a-df-np-sv-z]{32}", "[a-zA-Z0-9+._?=-]{0,20}")
        .prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-x{n}")).unwrap())
}

fn arb_hash() -> impl Strategy<Value = Sha256Hash> {
    any::<[u8; 32]>().prop_map(Sha256Hash)
}

fn arb_value() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,40}"
}

prop_compose! {
    fn arb_narinfo()(
        store_path in arb_path(),
        url in arb_value(),
        compression in arb_value(),
        file_hash in proptest::option::of(arb_hash()),
        file_size in proptest::option::of(any::<u64>()),
        nar_hash in arb_hash(),
        nar_size in 1..u64::MAX,
        references in proptest::collection::vec(arb_path(), 0..5),
        deriver in proptest::option::of(arb_path()),
        system in proptest::option::of(arb_value()),
        sigs in proptest::collection::vec(arb_value(), 0..3),
        ca in proptest::option::of(arb_value()),
    ) -> NarInfo {
        NarInfo {
            store_path, url, compression, file_hash, file_size, nar_hash, nar_size,
            references, deriver, system, sigs, ca,
        }
    }
}

proptest! {
    #[test]
    fn render_then_parse_round_trips(info in arb_narinfo()) {
        let text = info.render();
        prop_assert!(text.ends_with('\n'));
        prop_assert_eq!(NarInfo::parse(&text).unwrap(), info);
    }
}
