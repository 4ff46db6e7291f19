//! A length or count over a limit is refused before anything is read or
//! allocated: every length field of the serve encoding, at the limit and
//! past it, and the narSize of uploads.

use std::collections::BTreeSet;

use nix_relay::wire::build::BuildResult;
use nix_relay::wire::export::{self, EXPORT_MAGIC};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::path_info::ValidPathInfo;
use nix_relay::wire::primitives::{put_bool, put_bytes, put_str, put_u64};
use nix_relay::wire::serve::{self, Request, ServeVersion};
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::{Error, Limits};
use proptest::prelude::*;

mod common;
use common::props::{SMALL, block_on, config};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lengths_over_the_limits_fail_with_too_long_before_reading_on(
        excess in 1u64..=u64::MAX,
    ) {
        for (name, prefix, max) in CASES {
            let mut buf = prefix();
            let len = max.saturating_add(excess);
            put_u64(&mut buf, len);
            // Nothing follows the length: reading on would be an EOF, and
            // allocating `len` bytes or elements would abort the process.
            match block_on(read_case(name, &buf)) {
                Err(Error::TooLong { len: l, max: m, .. }) => {
                    prop_assert_eq!((l, m), (len, *max), "{}", name);
                }
                other => prop_assert!(false, "{}: {:?}", name, other),
            }
        }
    }
}

#[tokio::test]
async fn a_length_exactly_at_the_limit_is_accepted_and_one_more_is_not() {
    for (name, prefix, max) in CASES {
        let mut at = prefix();
        put_u64(&mut at, *max);
        // Accepted: the reader goes on and runs out of input.
        let r = read_case(name, &at).await;
        assert!(matches!(&r, Err(e) if e.is_eof()), "{name} = max: {r:?}");
        let mut over = prefix();
        put_u64(&mut over, max + 1);
        let r = read_case(name, &over).await;
        assert!(
            matches!(r, Err(Error::TooLong { .. })),
            "{name} = max + 1: {r:?}"
        );
    }
}

const DRV: &str = "/nix/store/kn1c2q6hhbq0m00jwk1qkrpnkj4p42wc-lab-top.drv";
const MAX_COLL: u64 = SMALL.max_collection_len as u64;
const MAX_STR: u64 = SMALL.max_string_bytes as u64;
const MAX_PATH: u64 = Limits::MAX_PATH_BYTES as u64;

fn words(w: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    for &x in w {
        put_u64(&mut b, x);
    }
    b
}

type Case = (&'static str, fn() -> Vec<u8>, u64);

/// Each case: a valid stream up to a length field, and that field's limit.
const CASES: &[Case] = &[
    ("QueryValidPaths count", || words(&[1, 0, 0]), MAX_COLL),
    ("QueryPathInfos count", || words(&[2]), MAX_COLL),
    ("DumpStorePath path length", || words(&[3]), MAX_PATH),
    ("ExportPaths count", || words(&[5, 0]), MAX_COLL),
    ("BuildPaths count", || words(&[6]), MAX_COLL),
    ("BuildPaths string", || words(&[6, 1]), MAX_STR),
    ("QueryClosure count", || words(&[7, 1]), MAX_COLL),
    ("BuildDerivation drvPath", || words(&[8]), MAX_PATH),
    ("BuildDerivation outputs", drv_prefix, MAX_COLL),
    (
        "BuildDerivation inputSrcs",
        || [drv_prefix(), words(&[0])].concat(),
        MAX_COLL,
    ),
    (
        "BuildDerivation builder",
        || [drv_prefix(), words(&[0, 0, 0])].concat(),
        MAX_STR,
    ),
    (
        "BuildDerivation env",
        || [drv_prefix(), words(&[0, 0, 0, 0, 0])].concat(),
        MAX_COLL,
    ),
    ("AddToStoreNar references", || add_prefix(false), MAX_COLL),
    ("BuildResult errorMsg", || words(&[0]), MAX_STR),
    (
        "BuildResult builtOutputs",
        || words(&[0, 0, 1, 0, 2, 3]),
        MAX_COLL,
    ),
    ("export references", export_prefix, MAX_COLL),
];

fn drv_prefix() -> Vec<u8> {
    let mut b = words(&[8]);
    put_str(&mut b, DRV);
    b
}

/// An AddToStoreNar header up to its references (or up to its narSize).
fn add_prefix(to_nar_size: bool) -> Vec<u8> {
    let mut b = words(&[9]);
    put_str(&mut b, DRV);
    put_str(&mut b, "");
    put_str(&mut b, &Sha256Hash([7; 32]).to_hex());
    if to_nar_size {
        put_u64(&mut b, 0); // references
        put_u64(&mut b, 1795444105); // registrationTime
    }
    b
}

fn export_prefix() -> Vec<u8> {
    let mut b = words(&[EXPORT_MAGIC]);
    put_str(&mut b, DRV);
    b
}

async fn read_case(name: &str, buf: &[u8]) -> Result<(), Error> {
    let mut r = buf;
    if name.starts_with("BuildResult") {
        BuildResult::read_serve(&mut r, 7, &SMALL).await.map(drop)
    } else if name.starts_with("export") {
        export::read_trailer(&mut r, &SMALL).await.map(drop)
    } else {
        Request::read(&mut r, ServeVersion::LATEST, &SMALL)
            .await
            .map(drop)
    }
}

#[tokio::test]
async fn more_path_info_records_than_the_collection_limit_are_refused() {
    let info = ValidPathInfo {
        path: StorePath::parse(DRV).unwrap(),
        deriver: None,
        nar_hash: Sha256Hash([1; 32]),
        references: BTreeSet::new(),
        registration_time: 0,
        nar_size: 8,
        ultimate: false,
        sigs: Vec::new(),
        ca: None,
    };
    let n = SMALL.max_collection_len;
    let mut buf = Vec::new();
    let codec = serve::ServeCodec::new(serve::ServeVersion::LATEST, SMALL);
    buf.extend(codec.encode_reply(&serve::Reply::PathInfos(vec![info.clone(); n])));
    assert_eq!(codec.read_path_infos(&mut &buf[..]).await.unwrap().len(), n);
    let mut buf = Vec::new();
    buf.extend(codec.encode_reply(&serve::Reply::PathInfos(vec![info; n + 1])));
    let err = codec.read_path_infos(&mut &buf[..]).await.unwrap_err();
    assert!(matches!(err, Error::TooLong { .. }), "{err}");
}

/// An upload header declaring `nar_size`, complete (no NAR follows).
fn add_header(nar_size: u64) -> Vec<u8> {
    let mut b = add_prefix(true);
    put_u64(&mut b, nar_size);
    put_bool(&mut b, false); // ultimate
    put_u64(&mut b, 0); // sigs
    put_bytes(&mut b, b""); // ca
    b
}

#[tokio::test]
async fn a_zero_nar_size_upload_header_is_refused() {
    let b = add_header(0);
    let err = Request::read(&mut &b[..], ServeVersion::LATEST, &SMALL)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadValue {
                field: "narSize",
                value: 0
            }
        ),
        "{err}"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_upload_over_max_nar_bytes_is_refused_at_its_header(
        excess in 1u64..=u64::MAX - SMALL.max_nar_bytes,
    ) {
        let size = SMALL.max_nar_bytes + excess;
        let b = add_header(size);
        let r = block_on(Request::read(&mut &b[..], ServeVersion::LATEST, &SMALL));
        prop_assert!(
            matches!(r, Err(Error::TooLong { field: "narSize", len, .. }) if len == size),
            "{:?}", r
        );
        let ok = block_on(Request::read(&mut &add_header(SMALL.max_nar_bytes)[..], ServeVersion::LATEST, &SMALL));
        prop_assert!(matches!(ok, Ok(Some(Request::AddToStoreNar { .. }))), "{:?}", ok);
    }
}
