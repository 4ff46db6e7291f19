use proptest::prelude::*;

use super::*;

const HEX: &str = "1d0495fcf8173bdbfb423e6e42def545db831dc010c62d1a1093d3130d81a454";
const NIX32: &str = "0m54h46i7lwk20d2vihhq0fq7ns5ypg44viy8bxxnfqpz3y9a10x";

fn vector() -> Sha256Hash {
    Sha256Hash::parse_any(HEX).unwrap()
}

#[test]
fn reference_vector_hex_to_nix32() {
    let h = vector();
    assert_eq!(h.to_hex(), HEX);
    assert_eq!(nix32_encode(&h.0), NIX32);
    assert_eq!(h.to_nix32_prefixed(), format!("sha256:{NIX32}"));
}

#[test]
fn every_spelling_parses_to_the_same_digest() {
    let h = vector();
    let b64 = BASE64.encode(h.0);
    let spellings = [
        HEX.to_owned(),
        HEX.to_uppercase(),
        format!("sha256:{HEX}"),
        NIX32.to_owned(),
        format!("sha256:{NIX32}"),
        b64.clone(),
        format!("sha256:{b64}"),
        format!("sha256-{b64}"),
        h.to_sri(),
    ];
    for s in spellings {
        assert_eq!(Sha256Hash::parse_any(&s).unwrap(), h, "{s}");
    }
}

#[test]
fn other_algorithms_and_bad_lengths_are_rejected() {
    let bad = [
        "",
        "sha256:",
        "sha512:1d0495fcf8173bdbfb423e6e42def545db831dc010c62d1a1093d3130d81a454",
        "md5:1d0495fcf8173bdbfb423e6e42def545",
        "sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "1d0495fcf8173bdbfb423e6e42def545db831dc010c62d1a1093d3130d81a45",
        "1d0495fcf8173bdbfb423e6e42def545db831dc010c62d1a1093d3130d81a45g",
        "0m54h46i7lwk20d2vihhq0fq7ns5ypg44viy8bxxnfqpz3y9a10e",
        "sha256-AAAA",
        "sha256-!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
    ];
    for s in bad {
        let err = Sha256Hash::parse_any(s).unwrap_err();
        assert!(matches!(err, Error::BadHash { .. }), "{s}: {err}");
    }
}

#[test]
fn prefixed_parse_requires_the_prefix() {
    assert!(Sha256Hash::parse_prefixed(NIX32).is_err());
    assert_eq!(
        Sha256Hash::parse_prefixed(&format!("sha256:{NIX32}")).unwrap(),
        vector()
    );
}

#[test]
fn nix32_rejects_bits_beyond_the_size() {
    // 52 chars carry 260 bits for 256: the first character may only be 0 or 1.
    let mut s = NIX32.to_owned();
    s.replace_range(0..1, "1");
    assert!(nix32_decode(&s).is_ok());
    s.replace_range(0..1, "2");
    assert!(nix32_decode(&s).is_err());
}

#[test]
fn nix32_rejects_impossible_lengths_and_letters() {
    assert_eq!(nix32_decode("").unwrap(), Vec::<u8>::new());
    assert!(nix32_decode("0").is_err());
    for c in ["e", "o", "u", "t", "A", "-"] {
        let s = format!("{}{c}", &NIX32[..51]);
        assert!(nix32_decode(&s).is_err(), "{s}");
    }
}

#[test]
fn nix32_lengths() {
    assert_eq!(nix32_len(20), 32);
    assert_eq!(nix32_len(32), 52);
    assert_eq!(nix32_len(64), 103);
    assert_eq!(nix32_encode(&[0xff]), "7z");
}

#[test]
fn compress_hash_folds_by_xor() {
    let h: Vec<u8> = (0u8..32).collect();
    let r = compress_hash(&h, 20);
    assert_eq!(r.len(), 20);
    for (i, b) in r.iter().enumerate() {
        let expected = if i < 12 {
            (i as u8) ^ (i as u8 + 20)
        } else {
            i as u8
        };
        assert_eq!(*b, expected);
    }
    assert_eq!(compress_hash(&h, 0), Vec::<u8>::new());
    assert_eq!(compress_hash(&h, 32), h);
}

#[test]
fn store_path_hash_from_reference() {
    // §7.3: source path of busybox-static.
    let fp = format!("source:sha256:{HEX}:/nix/store:busybox-static");
    let h = Sha256Hash::digest(fp.as_bytes());
    assert_eq!(
        nix32_encode(&compress_hash(&h.0, 20)),
        "jsm9cyjvamk013ndqlj8ckgaqp3yrw28"
    );
}

proptest! {
    #[test]
    fn nix32_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let s = nix32_encode(&bytes);
        prop_assert_eq!(s.len(), nix32_len(bytes.len()));
        prop_assert_eq!(nix32_decode(&s).unwrap(), bytes);
    }

    #[test]
    fn sha256_spellings_round_trip(bytes in any::<[u8; 32]>()) {
        let h = Sha256Hash(bytes);
        prop_assert_eq!(Sha256Hash::parse_any(&h.to_hex()).unwrap(), h);
        prop_assert_eq!(Sha256Hash::parse_any(&h.to_nix32_prefixed()).unwrap(), h);
        prop_assert_eq!(Sha256Hash::parse_any(&h.to_sri()).unwrap(), h);
    }
}
