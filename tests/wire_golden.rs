//! Golden tests against real `nix-store --serve --write` conversations
//! (tests/golden/serve, serve protocol 2.7): Nix 2.8.0 on both ends, and
//! Nix 2.26.3 / 2.34.8 clients against a Nix 2.34.8 server.
//!
//! For every transcript both directions are decoded with the crate's wire
//! readers, in lock step (each response with the reader for its request),
//! and every message is re-encoded with the crate's writers: the result
//! must be the recorded bytes, exactly, and nothing may be left undecoded.

mod common;

use common::{
    ClientStream, ExportStream, Payload, Response, ServerStream, Transcript, decode_client,
    decode_server, known_nar_hashes, load,
};
use nix_relay::wire::Limits;
use nix_relay::wire::build::{BuildOptions, BuildResult, BuildStatus};
use nix_relay::wire::export;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::primitives::{put_bytes, put_paths, put_u64};
use nix_relay::wire::serve::{
    self, Request, SERVE_MAGIC_1, SERVE_MAGIC_2, ServeVersion, client_handshake, server_handshake,
};
use nix_relay::wire::store_path::StorePath;

const V2_7: ServeVersion = ServeVersion(0x207);

struct Golden {
    t: Transcript,
    client: ClientStream,
    server: ServerStream,
}

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

/// Re-encodes an export stream (NAR bytes copied from `bytes`), checking
/// each trailer's encoding on the way.
fn reencode_export(s: &ExportStream, bytes: &[u8], what: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in &s.entries {
        export::write_next(&mut buf, true);
        assert_eq!(e.nar_range.len() as u64, e.nar.size, "{what}");
        assert_eq!(
            Sha256Hash::digest(&bytes[e.nar_range.clone()]),
            e.nar.sha256
        );
        buf.extend_from_slice(&bytes[e.nar_range.clone()]);
        let mut t = Vec::new();
        export::write_trailer(&mut t, &e.trailer);
        assert_eq!(t, bytes[e.trailer_range.clone()], "{what}: trailer");
        buf.extend_from_slice(&t);
    }
    export::write_next(&mut buf, false);
    buf
}

/// Decodes and re-encodes one transcript; returns the decoded values.
async fn golden(name: &'static str) -> Golden {
    let t = load(name);
    let limits = Limits::default();

    // Hello: magic + version each way, and the crate's handshakes produce
    // exactly the other side's recorded bytes.
    assert_eq!(t.c2s[..8], SERVE_MAGIC_1.to_le_bytes(), "{name}");
    assert_eq!(t.c2s[8..16], V2_7.0.to_le_bytes(), "{name}");
    assert_eq!(t.s2c[..8], SERVE_MAGIC_2.to_le_bytes(), "{name}");
    assert_eq!(t.s2c[8..16], V2_7.0.to_le_bytes(), "{name}");
    let mut hello = Vec::new();
    let v = server_handshake(&mut &t.c2s[..16], &mut hello)
        .await
        .unwrap();
    assert_eq!(
        (v, &hello[..]),
        (V2_7, &t.s2c[..16]),
        "{name}: server hello"
    );
    let mut hello = Vec::new();
    let v = client_handshake(&mut &t.s2c[..16], &mut hello)
        .await
        .unwrap();
    assert_eq!(
        (v, &hello[..]),
        (V2_7, &t.c2s[..16]),
        "{name}: client hello"
    );

    let client = decode_client(&t.c2s, &limits)
        .await
        .unwrap_or_else(|e| panic!("{name}: c2s: {e}"));
    assert_eq!(client.end, t.c2s.len(), "{name}: c2s not consumed");
    let version = client.negotiated();
    assert_eq!(version, V2_7);
    let mut at = 16;
    for m in &client.msgs {
        let what = format!("{name}: {:?} at c2s@{}", m.req.command(), m.range.start);
        assert_eq!(m.range.start, at, "{what}: gap");
        let mut buf = Vec::new();
        m.req.write(&mut buf, version);
        assert_eq!(buf, t.c2s[m.range.clone()], "{what}: re-encoding");
        match (&m.req, &m.payload) {
            (Request::AddToStoreNar { info }, Payload::Nar(sum, r)) => {
                assert_eq!(r.len() as u64, info.nar_size, "{what}");
                assert_eq!((sum.size, sum.sha256), (info.nar_size, info.nar_hash));
            }
            (Request::ImportPaths, Payload::Export(s)) => {
                let re = reencode_export(s, &t.c2s, &what);
                assert_eq!(re, t.c2s[s.range.clone()], "{what}: export stream");
            }
            (_, Payload::None) => {}
            (r, p) => panic!("{what}: payload {p:?} after {r:?}"),
        }
        at = m.end();
    }
    assert_eq!(at, t.c2s.len());

    let server = decode_server(&t.s2c, &client.requests(), version, &limits)
        .await
        .unwrap_or_else(|e| panic!("{name}: s2c: {e}"));
    assert_eq!(server.end, t.s2c.len(), "{name}: s2c not consumed");
    assert_eq!(server.responses.len(), client.msgs.len(), "{name}");
    let minor = version.minor();
    let mut at = 16;
    for (i, (resp, range)) in server.responses.iter().enumerate() {
        let req = &client.msgs[i].req;
        let what = format!(
            "{name}: reply to {:?} at s2c@{}",
            req.command(),
            range.start
        );
        assert_eq!(range.start, at, "{what}: gap");
        at = range.end;
        let bytes = &t.s2c[range.clone()];
        let mut buf = Vec::new();
        match resp {
            Response::Paths(p) => put_paths(&mut buf, p.iter()),
            Response::PathInfos(infos) => {
                for (info, download_size) in infos {
                    // Real Nix sends narSize as downloadSize, as the relay does.
                    assert_eq!(*download_size, info.nar_size, "{what}");
                }
                let plain: Vec<_> = infos.iter().map(|(i, _)| i.clone()).collect();
                let codec = serve::ServeCodec::new(ServeVersion(0x200 | u64::from(minor)), limits);
                buf = codec.encode_reply(&serve::Reply::PathInfos(plain.clone()));
                let mut rest = bytes;
                let again = codec.read_path_infos(&mut rest).await;
                assert_eq!(again.unwrap(), plain, "{what}: read_path_infos");
                assert!(rest.is_empty(), "{what}: read_path_infos left bytes");
            }
            Response::Ack => put_u64(&mut buf, 1),
            Response::BuildPaths(code, msg) => {
                put_u64(&mut buf, *code);
                if let Some(m) = msg {
                    put_bytes(&mut buf, m);
                }
            }
            Response::Build(r) => r.write_serve(&mut buf, minor),
            Response::Nar(sum) => {
                assert_eq!(sum.size, bytes.len() as u64, "{what}");
                assert_eq!(sum.sha256, Sha256Hash::digest(bytes), "{what}");
                buf.extend_from_slice(bytes);
            }
            Response::Export(s) => buf = reencode_export(s, &t.s2c, &what),
        }
        assert_eq!(buf, bytes, "{what}: re-encoding");
    }

    // Every NAR sent by DumpStorePath matches the narHash/narSize the
    // same server announced for it in QueryPathInfos.
    let known = known_nar_hashes(&server);
    for (m, (resp, _)) in client.msgs.iter().zip(&server.responses) {
        if let (Request::DumpStorePath { path }, Response::Nar(sum)) = (&m.req, resp) {
            let (hash, size) = known
                .get(path)
                .unwrap_or_else(|| panic!("{name}: {path} dumped without a path info"));
            assert_eq!((sum.sha256, sum.size), (*hash, *size), "{name}: {path}");
        }
    }
    Golden { t, client, server }
}

macro_rules! golden_tests {
    ($($fn_name:ident => $file:literal),* $(,)?) => {$(
        #[tokio::test]
        async fn $fn_name() {
            golden($file).await;
        }
    )*};
}

golden_tests! {
    legacy_copy_from_reencodes_byte_exactly => "legacy-copy-from",
    legacy_copy_to_reencodes_byte_exactly => "legacy-copy-to",
    legacy_export_paths_reencodes_byte_exactly => "legacy-export-paths",
    legacy_fail_reencodes_byte_exactly => "legacy-fail",
    legacy_feature_reencodes_byte_exactly => "legacy-feature",
    legacy_foreign_reencodes_byte_exactly => "legacy-foreign",
    legacy_import_paths_reencodes_byte_exactly => "legacy-import-paths",
    legacy_many_reencodes_byte_exactly => "legacy-many",
    legacy_multi_reencodes_byte_exactly => "legacy-multi",
    legacy_top_reencodes_byte_exactly => "legacy-top",
    // Real Nix 2.26.3 / 2.34.8 clients against a real Nix 2.34.8
    // `nix-store --serve --write` (tests/lab/capture-golden-modern.sh).
    legacy_226_build_leaf_reencodes_byte_exactly => "legacy-226-build",
    legacy_226_build_leaf2_reencodes_byte_exactly => "legacy-226-build.2",
    legacy_226_build_top_reencodes_byte_exactly => "legacy-226-build.3",
    legacy_234_build_leaf_reencodes_byte_exactly => "legacy-234-build",
    legacy_234_build_leaf2_reencodes_byte_exactly => "legacy-234-build.2",
    legacy_234_build_top_reencodes_byte_exactly => "legacy-234-build.3",
    legacy_234_copy_to_reencodes_byte_exactly => "legacy-234-copy-to",
    legacy_234_copy_from_reencodes_byte_exactly => "legacy-234-copy-from",
}

#[test]
fn every_transcript_in_the_directory_is_covered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/serve");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".c2s").map(str::to_owned)
        })
        .collect();
    found.sort();
    assert_eq!(found, common::TRANSCRIPTS);
}

fn build_of(g: &Golden) -> (&Request, &BuildResult) {
    let i = g
        .client
        .msgs
        .iter()
        .position(|m| matches!(m.req, Request::BuildDerivation { .. }))
        .expect("a BuildDerivation");
    let Response::Build(r) = &g.server.responses[i].0 else {
        panic!("no BuildResult");
    };
    (&g.client.msgs[i].req, r)
}

#[tokio::test]
async fn legacy_top_decodes_to_the_recorded_values() {
    let g = golden("legacy-top").await;
    let cmds: Vec<u64> = g
        .client
        .msgs
        .iter()
        .map(|m| m.req.command() as u64)
        .collect();
    assert_eq!(cmds, [1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 8, 2, 3]);
    let busybox = sp("/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-busybox-static");
    let Response::Paths(valid) = &g.server.responses[0].0 else {
        panic!()
    };
    assert_eq!(valid, std::slice::from_ref(&busybox));

    let Request::AddToStoreNar { info } = &g.client.msgs[1].req else {
        panic!()
    };
    assert_eq!(
        info.path,
        sp("/nix/store/0rp72hlhgrxrlfgn3zrzkx2m375v90l6-lab-leaf-2")
    );
    assert_eq!(
        info.deriver,
        Some(sp(
            "/nix/store/g8idl98p8f26mndfzw76ynjpax3g49nz-lab-leaf-2.drv"
        ))
    );
    assert_eq!(
        info.nar_hash.to_hex(),
        "46cadc1c8a09dd02f7164de102f90233d1a1300210a09c679c43dcce4ea61217"
    );
    assert_eq!((info.nar_size, info.registration_time), (144, 1795444105));
    assert!(info.references.is_empty() && info.sigs.is_empty() && info.ca.is_none());
    assert!(!info.ultimate);

    let (req, res) = build_of(&g);
    let Request::BuildDerivation {
        drv_path,
        drv,
        options,
    } = req
    else {
        panic!()
    };
    let top = sp("/nix/store/z887g98x432n9rgq2ai7xrh5k62bfi8z-lab-top");
    assert_eq!(
        drv_path,
        &sp("/nix/store/kn1c2q6hhbq0m00jwk1qkrpnkj4p42wc-lab-top.drv")
    );
    assert_eq!(nix_relay::wire::build::drv_name(drv_path), "lab-top");
    assert_eq!(drv.outputs.len(), 1);
    assert_eq!(drv.outputs[0].name, "out");
    assert_eq!(drv.outputs[0].path, top.as_str());
    assert_eq!(
        (
            drv.outputs[0].hash_algo.as_str(),
            drv.outputs[0].hash.as_str()
        ),
        ("", "")
    );
    assert_eq!(drv.output_paths().unwrap(), std::slice::from_ref(&top));
    assert_eq!(drv.input_srcs.len(), 11);
    assert!(drv.input_srcs.contains(&busybox));
    assert_eq!(drv.platform, "x86_64-linux");
    assert_eq!(drv.builder, format!("{busybox}/bin/sh").as_bytes());
    assert_eq!((drv.args.len(), drv.env.len()), (3, 6));
    assert!(drv.required_features().unwrap().is_empty());
    let defaults = BuildOptions {
        max_silent_time: 0,
        build_timeout: 0,
        max_log_size: 0,
        nr_repeats: 0,
        enforce_determinism: true,
        keep_failed: false,
    };
    assert_eq!(*options, defaults);

    assert_eq!(res.status, BuildStatus::Built);
    assert!(res.error_msg.is_empty());
    assert_eq!(res.times_built, 1);
    assert!(!res.is_non_deterministic);
    assert_eq!((res.start_time, res.stop_time), (1795444106, 1795444106));
    assert_eq!(res.built_outputs.len(), 1);
    let (id, json) = &res.built_outputs[0];
    assert_eq!(
        id,
        "sha256:c9adaee16f30ad7a5315267ee49bb3832167f577122df705ca477d3a241207a1!out"
    );
    assert!(json.contains(r#""outPath":"z887g98x432n9rgq2ai7xrh5k62bfi8z-lab-top""#));

    let Response::PathInfos(infos) = &g.server.responses[12].0 else {
        panic!()
    };
    let (info, _) = &infos[0];
    assert_eq!(infos.len(), 1);
    assert_eq!(info.path, top);
    assert_eq!(
        info.nar_hash.to_nix32_prefixed(),
        "sha256:1zx169151lgzamnivj4i4g79p4gy5f1dwl8s83iq71qq86679zfa"
    );
    assert_eq!((info.nar_size, info.references.len()), (1488, 10));
    assert_eq!(info.deriver.as_ref(), Some(drv_path));
    let Response::Nar(nar) = &g.server.responses[13].0 else {
        panic!()
    };
    assert_eq!((nar.size, nar.sha256), (1488, info.nar_hash));
}

#[tokio::test]
async fn legacy_fail_carries_permanent_failure_and_the_builder_message() {
    let g = golden("legacy-fail").await;
    let (_, res) = build_of(&g);
    assert_eq!(res.status, BuildStatus::PermanentFailure);
    assert_eq!(res.status as u64, 3);
    assert!(!res.status.is_success());
    let msg = String::from_utf8(res.error_msg.clone()).unwrap();
    assert!(msg.contains("failed with exit code 3"), "{msg:?}");
    assert!(msg.contains("/nix/store/f96aadca0nfan0107zhwngjgk8ca8sp1-lab-fail.drv"));
    assert!(msg.starts_with("\x1b[0m"), "ANSI escapes are kept: {msg:?}");
    assert_eq!(res.times_built, 1);
    assert!(res.built_outputs.is_empty());
}

#[tokio::test]
async fn legacy_multi_lists_outputs_sorted_and_reports_both() {
    let g = golden("legacy-multi").await;
    let (req, res) = build_of(&g);
    let Request::BuildDerivation { drv, .. } = req else {
        panic!()
    };
    let names: Vec<&str> = drv.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["dev", "out"]);
    assert_eq!(res.built_outputs.len(), 2);
    let dumps = g
        .client
        .msgs
        .iter()
        .filter(|m| matches!(m.req, Request::DumpStorePath { .. }))
        .count();
    assert_eq!(dumps, 2);
}

#[tokio::test]
async fn feature_and_foreign_derivations_carry_features_and_platform() {
    let g = golden("legacy-feature").await;
    let Request::BuildDerivation { drv, .. } = build_of(&g).0 else {
        panic!()
    };
    assert_eq!(drv.required_features().unwrap(), ["big-parallel"]);
    let g = golden("legacy-foreign").await;
    let Request::BuildDerivation { drv, .. } = build_of(&g).0 else {
        panic!()
    };
    assert_eq!(drv.platform, "aarch64-linux");
}

#[tokio::test]
async fn legacy_copy_from_closure_and_dumps_match_the_path_infos() {
    let g = golden("legacy-copy-from").await;
    let cmds: Vec<u64> = g
        .client
        .msgs
        .iter()
        .map(|m| m.req.command() as u64)
        .collect();
    assert_eq!(cmds, [2, 7, 2, 2, 3, 3, 3]);
    let Request::QueryClosure {
        include_outputs,
        paths,
    } = &g.client.msgs[1].req
    else {
        panic!()
    };
    assert!(!include_outputs);
    assert_eq!(paths.len(), 1);
    let Response::Paths(closure) = &g.server.responses[1].0 else {
        panic!()
    };
    assert_eq!(closure.len(), 3);
    assert!(closure.contains(&paths[0]));
    assert_eq!(known_nar_hashes(&g.server).len(), 3);
}

#[tokio::test]
async fn import_and_export_streams_carry_the_same_paths_and_bytes() {
    let imp = golden("legacy-import-paths").await;
    let exp = golden("legacy-export-paths").await;
    let Payload::Export(sent) = &imp.client.msgs[0].payload else {
        panic!()
    };
    let Response::Export(got) = &exp.server.responses[0].0 else {
        panic!()
    };
    let Request::ExportPaths { sign, paths } = &exp.client.msgs[0].req else {
        panic!()
    };
    assert!(!sign);
    let leaf = sp("/nix/store/jsfhm1c9mqimgw8830z7c80ci6v9nh9f-lab-leaf-0");
    let top = sp("/nix/store/4i8gd9qlkp6di14a14nhxh6k8i0b5y8c-lab-top");
    assert_eq!(paths, &[leaf.clone(), top.clone()]);
    for s in [sent, got] {
        let t: Vec<_> = s.entries.iter().map(|e| &e.trailer).collect();
        assert_eq!((&t[0].path, &t[1].path), (&leaf, &top), "references first");
        assert!(t[0].references.is_empty());
        assert_eq!(t[1].references.iter().collect::<Vec<_>>(), [&leaf]);
        assert_eq!(
            t[1].deriver,
            Some(sp(
                "/nix/store/5bh88si9rfm16fpk9n6d5v4jx59libzn-lab-top.drv"
            ))
        );
        let sizes: Vec<u64> = s.entries.iter().map(|e| e.nar.size).collect();
        assert_eq!(sizes, [152, 776]);
    }
    assert_eq!(
        imp.t.c2s[sent.range.clone()],
        exp.t.s2c[got.range.clone()],
        "Nix exports what was imported, byte for byte"
    );
}

/// Encodes at `minor`, decodes at `minor`; returns the value and the size.
async fn result_at(r: &BuildResult, minor: u8) -> (BuildResult, usize) {
    let mut buf = Vec::new();
    r.write_serve(&mut buf, minor);
    let mut rest = &buf[..];
    let limits = Limits::default();
    let back = BuildResult::read_serve(&mut rest, minor, &limits)
        .await
        .unwrap();
    assert!(rest.is_empty(), "minor {minor}: bytes left");
    (back, buf.len())
}

#[tokio::test]
async fn build_result_fields_appear_only_from_their_minor() {
    let g = golden("legacy-top").await;
    let full = build_of(&g).1.clone();
    let (id, json) = &full.built_outputs[0];
    let map_len = 8 + (8 + id.len().next_multiple_of(8)) + (8 + json.len().next_multiple_of(8));

    let (r2, n2) = result_at(&full, 2).await;
    assert_eq!(n2, 16, "status + empty errorMsg");
    assert_eq!(r2, BuildResult::failure(BuildStatus::Built, Vec::new()));

    let (r3, n3) = result_at(&full, 3).await;
    assert_eq!(
        n3,
        16 + 32,
        "+ timesBuilt, isNonDeterministic, startTime, stopTime"
    );
    let times = BuildResult {
        built_outputs: Vec::new(),
        ..full.clone()
    };
    assert_eq!(r3, times);
    assert_eq!(result_at(&full, 5).await, (times, 48));

    let (r6, n6) = result_at(&full, 6).await;
    assert_eq!((r6, n6), (full.clone(), 48 + map_len), "+ builtOutputs");
    let (r7, n7) = result_at(&full, 7).await;
    assert_eq!((r7, n7), (full, n6), "nothing new at 2.7");
    assert_eq!(
        48 + map_len,
        g.server.responses[11].1.len(),
        "as recorded at 2.7"
    );
}

#[tokio::test]
async fn build_options_fields_appear_only_from_their_minor() {
    let g = golden("legacy-top").await;
    let Request::BuildDerivation { options, .. } = build_of(&g).0 else {
        panic!()
    };
    let odd = BuildOptions {
        max_silent_time: 11,
        build_timeout: 22,
        max_log_size: 33,
        nr_repeats: 44,
        enforce_determinism: true,
        keep_failed: true,
    };
    for opts in [*options, odd] {
        let expect = |minor: u8| BuildOptions {
            max_silent_time: opts.max_silent_time,
            build_timeout: opts.build_timeout,
            max_log_size: if minor >= 2 { opts.max_log_size } else { 0 },
            nr_repeats: if minor >= 3 { opts.nr_repeats } else { 0 },
            enforce_determinism: minor >= 3 && opts.enforce_determinism,
            keep_failed: minor >= 7 && opts.keep_failed,
        };
        for (minor, len) in [(0u8, 16), (2, 24), (3, 40), (7, 48)] {
            let mut buf = Vec::new();
            opts.write(&mut buf, minor);
            assert_eq!(buf.len(), len, "minor {minor}");
            let mut rest = &buf[..];
            let back = BuildOptions::read(&mut rest, minor).await.unwrap();
            assert!(rest.is_empty());
            assert_eq!(back, expect(minor), "minor {minor}");
        }
    }
    // The recorded 2.7 options: 0,0,0,0,1,0.
    let mut buf = Vec::new();
    options.write(&mut buf, 7);
    let words: Vec<u64> = buf
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, [0, 0, 0, 0, 1, 0]);
}
