//! The worker-protocol backend client against a real `nix-daemon --stdio`
//! (Nix 2.8 in CI), spawned locally on a chroot store in a tempdir through
//! `BackendUri::LocalWorker` (the `ssh-ng://` code path minus SSH).
//!
//! A second chroot store (`src`) plays the relay store: `nix-instantiate`
//! writes the lab's busybox and a leaf derivation there; the test uploads
//! busybox (AddToStoreNar), builds (SetOptions + BuildDerivation, log in
//! band), queries the output (QueryPathInfo) and streams its NAR
//! (NarFromPath), checking sizes and hashes against Nix's own answers.
//!
//! Skipped (with a note) where `nix-daemon` or `tests/lab/drv/bb` is
//! missing, except under CI (`CI` set), where that fails the test;
//! `tests/setup.sh` provides both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nix_relay::backend::{self, BackendConn};
use nix_relay::buildlog::{Collect, EventSink, LogEvent};
use nix_relay::config::{Backend, BackendUri};
use nix_relay::wire::Limits;
use nix_relay::wire::build::{BasicDerivation, BuildOptions, BuildStatus, DerivationOutput};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::path_info::ValidPathInfo;
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::worker::stderr::{ACT_BUILD, StderrMsg};
use tokio::io::AsyncReadExt;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawning a nix command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn nix_store(store: &Path) -> Command {
    let mut c = Command::new("nix-store");
    c.arg("--store").arg(store);
    c
}

fn skip_reason() -> Option<String> {
    let daemon = Command::new("nix-daemon").arg("--version").output();
    if !daemon.is_ok_and(|o| o.status.success()) {
        return Some("nix-daemon is not installed".into());
    }
    let bb = repo().join("tests/lab/drv/bb/bin/busybox");
    (!bb.exists()).then(|| format!("{} is missing (run tests/setup.sh)", bb.display()))
}

/// The leaf's BasicDerivation from `nix show-derivation`, its builder
/// script replaced by `script` (the daemon trusts us: it does not check
/// the derivation against its path).
fn basic_derivation(src: &Path, drv: &str, script: &str) -> BasicDerivation {
    let json = run(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .arg("show-derivation")
        .arg("--store")
        .arg(src)
        .arg(drv));
    let v: serde_json::Value = serde_json::from_str(&json).expect("show-derivation json");
    let d = &v[drv];
    let outputs = d["outputs"]
        .as_object()
        .expect("outputs")
        .iter()
        .map(|(name, o)| DerivationOutput {
            name: name.clone(),
            path: o["path"].as_str().expect("output path").into(),
            hash_algo: String::new(),
            hash: String::new(),
        })
        .collect();
    let strs = |k: &str| -> Vec<String> {
        d[k].as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    };
    BasicDerivation {
        outputs,
        input_srcs: strs("inputSrcs")
            .iter()
            .map(|p| StorePath::parse(p).expect("input path"))
            .collect(),
        platform: d["system"].as_str().expect("system").into(),
        builder: d["builder"].as_str().expect("builder").into(),
        args: vec![b"-e".to_vec(), b"-c".to_vec(), script.into()],
        env: d["env"]
            .as_object()
            .expect("env")
            .iter()
            .map(|(k, v)| (k.clone().into(), v.as_str().expect("env value").into()))
            .collect(),
    }
}

/// The info Nix has for `path` in `store`, and its NAR (`nix-store --dump`).
fn path_info_and_nar(store: &Path, path: &StorePath) -> (ValidPathInfo, Vec<u8>) {
    let q = |flag: &str| run(nix_store(store).args(["-q", flag, path.as_str()]));
    let nar = Command::new("nix-store")
        .arg("--dump")
        .arg(store.join(path.as_str().trim_start_matches('/')))
        .output()
        .expect("nix-store --dump")
        .stdout;
    let info = ValidPathInfo {
        path: path.clone(),
        deriver: None,
        nar_hash: Sha256Hash::parse_any(q("--hash").trim()).expect("nar hash"),
        references: q("--references")
            .lines()
            .filter(|l| *l != path.as_str())
            .map(|l| StorePath::parse(l).expect("reference"))
            .collect(),
        registration_time: 0,
        nar_size: q("--size").trim().parse().expect("nar size"),
        ultimate: false,
        sigs: Vec::new(),
        ca: None,
    };
    assert_eq!(info.nar_size, nar.len() as u64);
    (info, nar)
}

fn worker_backend(store: &Path) -> Backend {
    Backend {
        name: "ng".into(),
        uri: BackendUri::LocalWorker,
        ssh_key: None,
        host_key: None,
        systems: vec!["x86_64-linux".into()],
        max_jobs: 1,
        speed_factor: 1.0,
        supported_features: Vec::new(),
        mandatory_features: Vec::new(),
        connect_timeout: std::time::Duration::from_secs(10),
        store: Some(store.display().to_string()),
        untrusted_clients: false,
    }
}

async fn connect(store: &Path) -> (BackendConn, Arc<Collect>) {
    let log = Arc::new(Collect::default());
    let sink: Arc<dyn EventSink> = log.clone();
    let conn = backend::connect(&worker_backend(store), Some(sink), Limits::default())
        .await
        .expect("connecting to nix-daemon --stdio");
    (conn, log)
}

#[tokio::test]
async fn upload_build_query_and_fetch_over_a_real_daemon() {
    if let Some(why) = skip_reason() {
        // Under CI a test that did not run must not pass.
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(!ci, "{why}, and CI is set: this test must run");
        eprintln!("skipping: {why}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let drv = run(Command::new("nix-instantiate")
        .arg("--store")
        .arg(&src)
        .arg(repo().join("tests/lab/drv"))
        .args(["-A", "leaves", "--arg", "nLeaves", "1", "--argstr", "seed"])
        .arg("ng-backend"));
    let drv = drv.trim().to_owned();
    let drv_path = StorePath::parse(&drv).expect("drv path");
    let good = basic_derivation(
        &src,
        &drv,
        "echo 'hello from builder'; echo line2; echo \"leaf seed=$seed\" > $out",
    );
    let bb = good.input_srcs[0].clone();
    let (bb_info, bb_nar) = path_info_and_nar(&src, &bb);

    let (mut conn, log) = connect(&dst).await;
    let c = &mut conn.client;
    assert!(matches!(c, backend::Client::Worker(_)));
    assert_eq!(
        c.query_valid_paths(vec![bb.clone()], false).await.unwrap(),
        []
    );
    c.add_to_store_nar(&bb_info, &mut &bb_nar[..])
        .await
        .unwrap();
    assert_eq!(
        c.query_valid_paths(vec![bb.clone()], false).await.unwrap(),
        [bb]
    );

    let opts = backend::Options::from(BuildOptions {
        max_silent_time: 60,
        build_timeout: 60,
        ..Default::default()
    });
    let res = c
        .build_derivation(&drv_path, &good, &opts, &*log)
        .await
        .unwrap();
    assert!(res.status.is_success(), "{res:?}");
    let events = log.take();
    let typed_build = events.iter().any(|e| {
        matches!(e, LogEvent::Activity(m) if matches!(&**m,
            StderrMsg::StartActivity { kind, .. } if *kind == ACT_BUILD))
    });
    assert!(
        typed_build,
        "the daemon's build activity, typed: {events:?}"
    );
    let text: String = (events.iter().filter_map(LogEvent::text))
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .collect();
    eprintln!("build log:\n{text}");
    assert!(text.contains(&format!("building '{drv}'")), "{text}");
    assert!(text.contains("hello from builder\nline2\n"), "{text}");

    // The output, as the daemon describes it and streams it.
    let out = good.output_paths().unwrap();
    let infos = c.query_path_infos(out.clone()).await.unwrap();
    assert_eq!(infos.len(), 1);
    let (nix_info, nix_nar) = path_info_and_nar(&dst, &out[0]);
    assert_eq!(infos[0].nar_hash, nix_info.nar_hash);
    assert_eq!(infos[0].nar_size, nix_info.nar_size);
    c.dump_store_path(&out[0]).await.unwrap();
    let mut nar = vec![0u8; infos[0].nar_size as usize];
    c.reader().read_exact(&mut nar).await.unwrap();
    assert_eq!(nar, nix_nar);
    assert_eq!(Sha256Hash::digest(&nar), infos[0].nar_hash);
    let leaf = std::fs::read_to_string(dst.join(out[0].as_str().trim_start_matches('/'))).unwrap();
    assert_eq!(leaf, "leaf seed=ng-backend\n");

    // The same connection after a path it lacks and a failing build.
    let missing = StorePath::parse("/nix/store/00000000000000000000000000000000-gone").unwrap();
    assert_eq!(c.query_path_infos(vec![missing]).await.unwrap(), []);
    let mut bad = good.clone();
    bad.args[2] = b"echo 'about to fail'; exit 3".to_vec();
    let bad_drv = StorePath::parse(&drv.replace("leaf-0.drv", "leaf-bad.drv")).unwrap();
    for o in &mut bad.outputs {
        o.path = o.path.replace("leaf-0", "leaf-bad");
    }
    for (k, v) in &mut bad.env {
        if k == b"out" {
            *v = bad.outputs[0].path.clone().into_bytes();
        }
    }
    let res = c
        .build_derivation(&bad_drv, &bad, &opts, &*log)
        .await
        .unwrap();
    assert_eq!(res.status, BuildStatus::PermanentFailure, "{res:?}");
    assert!(log.take_text().contains("about to fail\n"));
    assert_eq!(c.query_valid_paths(out.clone(), false).await.unwrap(), out);
    drop(conn);
    // Store paths are read-only: make the tempdir removable.
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(tmp.path())
        .status();
}
