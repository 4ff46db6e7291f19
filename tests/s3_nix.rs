//! Nix itself substitutes from the relay's bucket (issue 18): relay A
//! (in-process, a fake backend) builds an output and mirrors it to moto's
//! S3; then Nix 2.34 — the Debian sid root of tests/lab/roots.sh, run by
//! chroot in a private mount namespace with a fresh empty /nix — runs
//! `nix copy --from 's3://bucket?endpoint=…&region=…'`. With a wrong key
//! for the relay's name it is refused and nothing lands; with the relay's
//! public key the path arrives, `nix-store --verify-path` accepts it, and
//! its file has the built contents; `nix-store -r` with the bucket as a
//! substituter fetches it into another fresh store.
//!
//! Needs root (mount namespaces) and the sid root; without them the test
//! says so and passes, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use nix_relay::config::Protocol;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::nar::NarNode;

#[path = "s3_moto/moto.rs"]
mod moto;

const CONTENTS: &[u8] = b"built through relay A, fetched by Nix from the bucket\n";

/// Anonymous reads of the bucket's objects. AWS needs s3:GetObject only
/// (it covers HEAD); moto checks a HEAD against "s3:HeadObject".
const PUBLIC_READ: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
"Principal":"*","Action":["s3:GetObject","s3:HeadObject"],"Resource":"arn:aws:s3:::nix-sub/*"}]}"#;

/// The sid root with Nix 2.34 (tests/lab/roots.sh), if complete.
fn nix_root() -> Option<PathBuf> {
    let roots =
        std::env::var("NIX_RELAY_ROOTS").unwrap_or_else(|_| "/var/cache/nix-relay-ci/roots".into());
    let root = Path::new(&roots).join("sid");
    let marker = std::fs::read_to_string(root.join(".nix-relay-root")).unwrap_or_default();
    let complete = marker.starts_with("2.34.") && root.join("usr/bin/nix").exists();
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if complete && is_root {
        return Some(root);
    }
    let why = format!(
        "{}: no complete Nix 2.34 root (tests/lab/roots.sh ensure 2.34) or not run as root",
        root.display()
    );
    assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// Runs `args` by chroot in `root`, in a private mount namespace with
/// `fresh/nix` on /nix and `fresh/etc-nix` on /etc/nix.
fn nix_in(root: &Path, fresh: &Path, args: &[&str]) -> Output {
    let script = r#"r=$1 d=$2; shift 2
        mount --bind "$d/nix" "$r/nix" && mount --bind "$d/etc-nix" "$r/etc/nix" &&
        mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" &&
        exec chroot "$r" /usr/bin/env HOME=/nix/home "$@""#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(script)
        .arg("sh")
        .arg(root)
        .arg(fresh)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("running unshare");
    eprintln!(
        "$ {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh, empty /nix and a nix.conf for it.
fn fresh_store() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("nix")).unwrap();
    std::fs::create_dir_all(d.path().join("etc-nix")).unwrap();
    let conf = "experimental-features = nix-command\nbuild-users-group =\n\
                sandbox = false\nsubstituters =\nrequire-sigs = true\n";
    std::fs::write(d.path().join("etc-nix/nix.conf"), conf).unwrap();
    d
}

#[tokio::test]
async fn nix_2_34_copies_from_the_bucket_with_the_relays_key_and_refuses_a_wrong_one() {
    let Some(m) = moto::moto() else { return };
    let Some(root) = nix_root() else { return };
    nix_relay::s3::use_test_credentials("testing", "testing");
    let bucket = m.bucket("nix-sub").await;
    // Debian's Nix 2.34 is built without AWS support: its s3:// GETs are
    // unsigned, so the bucket grants anonymous reads.
    bucket.put_policy(PUBLIC_READ).await.unwrap();
    let config = format!(
        "{}\n[cache]\nstore = \"{}\"\n",
        fake_backend("a", "fake://a", ""),
        m.url("nix-sub")
    );
    let node = NarNode::Regular {
        executable: false,
        contents: CONTENTS.to_vec(),
    };
    let a = TestRelay::start(&config, &[("a", Script::default().output("out", node))]).await;
    let (drv_path, d) = drv::derivation("from-the-bucket", SYSTEM, &[]);
    let out = drv::out_path(&d);
    let mut c = a.client(Protocol::Serve, "alice").await;
    let res = c.build(&drv_path, &d).await.unwrap();
    assert!(res.status.is_success(), "{:?}\n{}", res.status, c.log());
    c.fetch(&out).await.unwrap();
    c.close().await.unwrap();
    a.wait_stored(&out, Duration::from_secs(10)).await;
    let up = a.relay.upstream().and_then(|u| u.mirror().cloned());
    up.unwrap().flushed().await;

    let key = a.relay.store().settings().signer.clone().unwrap();
    let good = key.public().to_string();
    let name = good.split_once(':').unwrap().0;
    let other = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let wrong = format!("{name}:{other}");
    let url = m.url("nix-sub");
    let path = out.to_string();
    let fresh = fresh_store();
    let copy = |k: &str| {
        let mut args = vec!["nix", "copy", "--from", url.as_str()];
        args.extend(["--option", "trusted-public-keys", k]);
        args.push(path.as_str());
        nix_in(&root, fresh.path(), &args)
    };
    let refused = copy(&wrong);
    assert!(!refused.status.success(), "a wrong key was accepted");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("signature"),
        "refused for its signature: {err}"
    );
    let file = fresh
        .path()
        .join("nix/store")
        .join(&path["/nix/store/".len()..]);
    assert!(!file.exists(), "nothing landed with a wrong key");

    assert!(
        copy(&good).status.success(),
        "nix copy with the relay's key"
    );
    let verify = nix_in(&root, fresh.path(), &["nix-store", "--verify-path", &path]);
    assert!(verify.status.success(), "nix-store --verify-path");
    assert_eq!(std::fs::read(&file).unwrap(), CONTENTS);

    // As a substituter: `nix-store -r` into another fresh store.
    let fresh = fresh_store();
    let args = ["nix-store", "-r", &path, "--option", "substituters", &url];
    let mut args = args.to_vec();
    args.extend(["--option", "trusted-public-keys", &good]);
    assert!(
        nix_in(&root, fresh.path(), &args).status.success(),
        "nix-store -r"
    );
    let file = fresh
        .path()
        .join("nix/store")
        .join(&path["/nix/store/".len()..]);
    assert_eq!(std::fs::read(&file).unwrap(), CONTENTS, "substituted");
}
