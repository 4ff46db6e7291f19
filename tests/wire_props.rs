//! Property tests of the serve wire encoding: every value the relay can
//! write reads back equal (with the fields its version lacks reset), with
//! no byte left over; arbitrary or corrupted input never panics. Length
//! and count limits: `wire_limits.rs`.

use nix_relay::wire::build::{
    BasicDerivation, BuildOptions, BuildResult, BuildStatus, DerivationOutput,
};
use nix_relay::wire::export::{self, ExportTrailer};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::nar::{NarLimits, NarNode, NarParser, encode_nar};
use nix_relay::wire::path_info::ValidPathInfo;
use nix_relay::wire::primitives::{put_bool, put_str, put_u64};
use nix_relay::wire::serve::{self, Request, ServeVersion};
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::{Error, Limits};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;

mod common;
use common::props::{SMALL, block_on, bytes, config, store_path};

fn hash() -> impl Strategy<Value = Sha256Hash> {
    any::<[u8; 32]>().prop_map(Sha256Hash)
}

fn derivation() -> impl Strategy<Value = BasicDerivation> {
    let output = (
        "[a-z][a-z0-9]{0,8}",
        prop_oneof![
            Just(String::new()),
            store_path().prop_map(|p| p.to_string())
        ],
        prop_oneof![Just(""), Just("r:sha256"), Just("sha256")],
        prop_oneof![Just(String::new()), "[0-9a-f]{64}"],
    )
        .prop_map(|(name, path, algo, hash)| DerivationOutput {
            name,
            path,
            hash_algo: algo.into(),
            hash,
        });
    (
        vec(output, 0..4),
        vec(store_path(), 0..4),
        "[a-z0-9_-]{0,20}",
        bytes(64),
        vec(bytes(16), 0..4),
        vec((bytes(16), bytes(32)), 0..6),
    )
        .prop_map(
            |(outputs, input_srcs, platform, builder, args, env)| BasicDerivation {
                outputs,
                input_srcs,
                platform,
                builder,
                args,
                env,
            },
        )
}

fn options() -> impl Strategy<Value = BuildOptions> {
    (any::<[u64; 4]>(), any::<bool>(), any::<bool>()).prop_map(|(n, d, k)| BuildOptions {
        max_silent_time: n[0],
        build_timeout: n[1],
        max_log_size: n[2],
        nr_repeats: n[3],
        enforce_determinism: d,
        keep_failed: k,
    })
}

/// What survives encoding at `minor`: later fields read back as defaults.
fn options_at(o: BuildOptions, minor: u8) -> BuildOptions {
    BuildOptions {
        max_log_size: if minor >= 2 { o.max_log_size } else { 0 },
        nr_repeats: if minor >= 3 { o.nr_repeats } else { 0 },
        enforce_determinism: minor >= 3 && o.enforce_determinism,
        keep_failed: minor >= 7 && o.keep_failed,
        ..o
    }
}

fn build_result() -> impl Strategy<Value = BuildResult> {
    (
        (0u64..15).prop_map(|s| BuildStatus::from_u64(s).unwrap()),
        bytes(100),
        any::<(u64, bool, u64, u64)>(),
        vec((".{0,40}", ".{0,80}"), 0..3),
    )
        .prop_map(
            |(status, error_msg, (tb, nd, start, stop), built_outputs)| BuildResult {
                status,
                error_msg,
                times_built: tb,
                is_non_deterministic: nd,
                start_time: start,
                stop_time: stop,
                built_outputs,
            },
        )
}

fn result_at(r: &BuildResult, minor: u8) -> BuildResult {
    let mut out = BuildResult::failure(r.status, r.error_msg.clone());
    if minor >= 3 {
        out.times_built = r.times_built;
        out.is_non_deterministic = r.is_non_deterministic;
        out.start_time = r.start_time;
        out.stop_time = r.stop_time;
    }
    if minor >= 6 {
        out.built_outputs = r.built_outputs.clone();
    }
    out
}

fn path_info() -> impl Strategy<Value = ValidPathInfo> {
    let ca = prop_oneof![
        Just(None),
        "fixed:r:sha256:[0-9a-df-np-sv-z]{52}".prop_map(Some),
        "[ -~]{1,60}".prop_map(Some),
    ];
    (
        (store_path(), proptest::option::of(store_path()), hash()),
        btree_set(store_path(), 0..4),
        (any::<u64>(), 1u64..=(1 << 40), any::<bool>()),
        vec("[a-z.-]{1,10}:[A-Za-z0-9+/=]{0,20}", 0..3),
        ca,
    )
        .prop_map(
            |((path, deriver, nar_hash), references, (rt, size, ult), sigs, ca)| ValidPathInfo {
                path,
                deriver,
                nar_hash,
                references,
                registration_time: rt,
                nar_size: size,
                ultimate: ult,
                sigs,
                ca,
            },
        )
}

fn paths() -> impl Strategy<Value = Vec<StorePath>> {
    vec(store_path(), 0..5)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<bool>(), any::<bool>(), paths()).prop_map(|(lock, substitute, paths)| {
            Request::QueryValidPaths {
                lock,
                substitute,
                paths,
            }
        }),
        paths().prop_map(|paths| Request::QueryPathInfos { paths }),
        store_path().prop_map(|path| Request::DumpStorePath { path }),
        Just(Request::ImportPaths),
        (any::<bool>(), paths()).prop_map(|(sign, paths)| Request::ExportPaths { sign, paths }),
        (vec(".{0,30}", 0..4), options())
            .prop_map(|(paths, options)| Request::BuildPaths { paths, options }),
        (any::<bool>(), paths()).prop_map(|(include_outputs, paths)| {
            Request::QueryClosure {
                include_outputs,
                paths,
            }
        }),
        (store_path(), derivation(), options()).prop_map(|(drv_path, drv, options)| {
            Request::BuildDerivation {
                drv_path,
                drv,
                options,
            }
        }),
        path_info().prop_map(|info| Request::AddToStoreNar { info }),
    ]
}

/// The request as it reads back at `minor` (build options gated).
fn request_at(r: &Request, minor: u8) -> Request {
    match r.clone() {
        Request::BuildPaths { paths, options } => Request::BuildPaths {
            paths,
            options: options_at(options, minor),
        },
        Request::BuildDerivation {
            drv_path,
            drv,
            options,
        } => Request::BuildDerivation {
            drv_path,
            drv,
            options: options_at(options, minor),
        },
        other => other,
    }
}

fn trailer() -> impl Strategy<Value = ExportTrailer> {
    (
        store_path(),
        btree_set(store_path(), 0..4),
        proptest::option::of(store_path()),
    )
        .prop_map(|(path, references, deriver)| ExportTrailer {
            path,
            references,
            deriver,
        })
}

fn nar_node() -> impl Strategy<Value = NarNode> {
    let leaf = prop_oneof![
        (any::<bool>(), bytes(40)).prop_map(|(executable, contents)| NarNode::Regular {
            executable,
            contents
        }),
        "[a-z./]{1,20}".prop_map(|t| NarNode::Symlink {
            target: t.into_bytes()
        }),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        btree_map("[a-z0-9_-]{1,8}", inner, 0..4).prop_map(|m| {
            NarNode::Directory(m.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect())
        })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn basic_derivation_reads_back_equal(d in derivation()) {
        let mut buf = Vec::new();
        d.write(&mut buf);
        let mut rest = &buf[..];
        prop_assert_eq!(block_on(BasicDerivation::read(&mut rest, &SMALL)).unwrap(), d);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn build_options_read_back_at_every_minor_with_later_fields_dropped(
        o in options(), minor in 0u8..=7,
    ) {
        let mut buf = Vec::new();
        o.write(&mut buf, minor);
        let words = 2 + usize::from(minor >= 2) + 2 * usize::from(minor >= 3)
            + usize::from(minor >= 7);
        prop_assert_eq!(buf.len(), 8 * words);
        let mut rest = &buf[..];
        prop_assert_eq!(block_on(BuildOptions::read(&mut rest, minor)).unwrap(), options_at(o, minor));
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn build_result_reads_back_at_every_minor_with_later_fields_dropped(
        r in build_result(), minor in 0u8..=7,
    ) {
        let mut buf = Vec::new();
        r.write_serve(&mut buf, minor);
        let mut rest = &buf[..];
        let back = block_on(BuildResult::read_serve(&mut rest, minor, &SMALL)).unwrap();
        prop_assert_eq!(back, result_at(&r, minor));
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn add_to_store_nar_header_reads_back_equal(info in path_info()) {
        let mut buf = Vec::new();
        info.write_add_header(&mut buf);
        let mut rest = &buf[..];
        let back = block_on(ValidPathInfo::read_add_header(&mut rest, &Limits::default()));
        prop_assert_eq!(back.unwrap(), info);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn serve_path_info_records_read_back_at_minor_4_and_3(
        info in path_info(), download in any::<u64>(), minor in prop_oneof![Just(3u8), Just(4u8)],
    ) {
        let mut buf = Vec::new();
        info.write_serve_record(&mut buf, download, minor);
        let mut expect = ValidPathInfo { registration_time: 0, ultimate: false, ..info.clone() };
        if minor < 4 {
            expect.nar_hash = Sha256Hash([0; 32]);
            expect.ca = None;
            expect.sigs.clear();
        }
        let mut rest = &buf[..];
        let back = block_on(async {
            let p = nix_relay::wire::primitives::read_path(&mut rest, "path").await?;
            ValidPathInfo::read_serve_record(&mut rest, p, minor, &SMALL).await
        });
        prop_assert_eq!(back.unwrap(), (expect.clone(), download));
        prop_assert!(rest.is_empty());

        // A whole QueryPathInfos reply: records, then "".
        let mut buf = Vec::new();
        let codec = serve::ServeCodec::new(ServeVersion(0x200 | u64::from(minor)), SMALL);
        buf.extend(codec.encode_reply(&serve::Reply::PathInfos(vec![info.clone(), info])));
        let mut rest = &buf[..];
        let back = block_on(codec.read_path_infos(&mut rest)).unwrap();
        prop_assert_eq!(back, vec![expect.clone(), expect]);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn every_request_reads_back_equal_at_2_5_to_2_7(
        req in request(), minor in 5u8..=7,
    ) {
        let v = ServeVersion(0x200 | u64::from(minor));
        let mut buf = Vec::new();
        req.write(&mut buf, v);
        let mut rest = &buf[..];
        // Default limits: generated narSizes go up to 1 TiB.
        let back = block_on(Request::read(&mut rest, v, &Limits::default())).unwrap();
        prop_assert_eq!(back, Some(request_at(&req, minor)));
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn add_to_store_nar_is_an_unknown_command_below_2_5(
        info in path_info(), minor in 0u8..5,
    ) {
        let v = ServeVersion(0x200 | u64::from(minor));
        let mut buf = Vec::new();
        Request::AddToStoreNar { info }.write(&mut buf, ServeVersion::LATEST);
        let r = block_on(Request::read(&mut &buf[..], v, &SMALL));
        prop_assert!(matches!(r, Err(Error::UnknownCommand(9))), "{:?}", r);
    }

    #[test]
    fn export_trailer_reads_back_equal_with_or_without_a_legacy_signature(
        t in trailer(), sig in proptest::option::of("[ -~]{0,40}"),
    ) {
        let mut buf = Vec::new();
        export::write_trailer(&mut buf, &t);
        if let Some(sig) = &sig {
            // Replace the final "no signature" flag with a signature.
            buf.truncate(buf.len() - 8);
            put_bool(&mut buf, true);
            put_str(&mut buf, sig);
        }
        let mut rest = &buf[..];
        prop_assert_eq!(block_on(export::read_trailer(&mut rest, &SMALL)).unwrap(), t);
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn export_streams_of_generated_nars_read_back_entry_by_entry(
        entries in vec((nar_node(), trailer()), 0..4),
    ) {
        let mut buf = Vec::new();
        for (node, t) in &entries {
            export::write_next(&mut buf, true);
            buf.extend_from_slice(&encode_nar(node));
            export::write_trailer(&mut buf, t);
        }
        export::write_next(&mut buf, false);
        let mut rest = &buf[..];
        for (node, t) in &entries {
            prop_assert!(block_on(export::read_next(&mut rest)).unwrap());
            let nar = encode_nar(node);
            let mut p = NarParser::new(NarLimits::default());
            let n = p.feed(rest).unwrap();
            rest = &rest[n..];
            let sum = p.finish().unwrap();
            prop_assert_eq!((sum.size, sum.sha256), (nar.len() as u64, Sha256Hash::digest(&nar)));
            prop_assert_eq!(&block_on(export::read_trailer(&mut rest, &SMALL)).unwrap(), t);
        }
        prop_assert!(!block_on(export::read_next(&mut rest)).unwrap());
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_reader(
        cmd in prop_oneof![Just(None), (0u64..=10).prop_map(Some)],
        tail in bytes(512),
        minor in 0u8..=7,
    ) {
        let mut buf = Vec::new();
        if let Some(c) = cmd {
            put_u64(&mut buf, c);
        }
        buf.extend_from_slice(&tail);
        let v = ServeVersion(0x200 | u64::from(minor));
        block_on(async {
            let _ = Request::read(&mut &buf[..], v, &SMALL).await;
            let _ = BuildResult::read_serve(&mut &tail[..], minor, &SMALL).await;
            let codec = serve::ServeCodec::new(v, SMALL);
            for cmd in serve::Command::ALL {
                let _ = codec.read_reply(&mut &tail[..], cmd).await;
            }
            let _ = export::read_trailer(&mut &buf[..], &SMALL).await;
            let _ = ValidPathInfo::read_add_header(&mut &tail[..], &SMALL).await;
        });
    }

    #[test]
    fn corrupted_valid_requests_never_panic(
        req in request(),
        flips in vec((any::<prop::sample::Index>(), 1u8..=255), 1..5),
        minor in 5u8..=7,
    ) {
        let v = ServeVersion(0x200 | u64::from(minor));
        let mut buf = Vec::new();
        req.write(&mut buf, v);
        for (i, x) in flips {
            let i = i.index(buf.len());
            buf[i] ^= x;
        }
        if let Ok(Some(r)) = block_on(Request::read(&mut &buf[..], v, &SMALL)) {
            // Whatever was accepted can be encoded again.
            r.write(&mut Vec::new(), v);
        }
    }
}
