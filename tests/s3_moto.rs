//! The cache on S3-compatible storage (issue 18) against a real S3 server,
//! moto on loopback (see `s3_moto/moto.rs`): the S3 calls, crash safety of
//! an upload, and two relays sharing one bucket.

use std::sync::Arc;
use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::s3::{Bucket, PART_SIZE, mirror};
use nix_relay::store::NarInfo;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::store_path::StorePath;

#[path = "s3_moto/moto.rs"]
mod moto;

/// `n` bytes of a pattern that is not all one value.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn objects_conditional_puts_and_multipart_uploads() {
    let Some(m) = moto::moto() else { return };
    let b = m.bucket("calls").await;
    assert!(!b.exists("a/b.txt").await.unwrap());
    b.put("a/b.txt", "one".into()).await.unwrap();
    assert!(b.exists("a/b.txt").await.unwrap());
    let got = b.get_bytes("a/b.txt", 100).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"one"[..]));
    assert_eq!(b.get_bytes("absent", 100).await.unwrap(), None);
    assert!(b.get_bytes("a/b.txt", 2).await.is_err(), "bounded read");
    // If-None-Match: * — the first writer wins, the second is told.
    assert!(b.put_if_absent("lease", "A".into()).await.unwrap());
    assert!(!b.put_if_absent("lease", "B".into()).await.unwrap());
    assert_eq!(b.get_bytes("lease", 10).await.unwrap().unwrap(), b"A");
    // A file over one part goes up in parts and comes back whole.
    let dir = tempfile::tempdir().unwrap();
    let big = pattern(2 * PART_SIZE + 12345);
    let file = dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let sent = mirror::upload_file(&b, "nar/big.nar", &file).await.unwrap();
    assert_eq!(sent, big.len() as u64, "bytes sent");
    let max = big.len() as u64;
    let back = b.get_bytes("nar/big.nar", max).await.unwrap().unwrap();
    assert!(back == big, "multipart round trip");
    assert!(b.list_uploads().await.unwrap().is_empty(), "completed");
    let mut keys = b.list_keys("").await.unwrap();
    keys.sort();
    assert_eq!(keys, ["a/b.txt", "lease", "nar/big.nar"]);
    assert_eq!(b.list_keys("nar/").await.unwrap(), ["nar/big.nar"]);
    b.delete("a/b.txt").await.unwrap();
    assert!(!b.exists("a/b.txt").await.unwrap());
}

/// A narinfo for a NAR at `url` (its hash and size do not matter here).
fn narinfo(url: &str) -> (String, String) {
    let path = StorePath::parse("/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-crash").unwrap();
    let n = NarInfo {
        store_path: path.clone(),
        url: url.into(),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(b"x"),
        nar_size: 1,
        references: vec![],
        deriver: None,
        system: None,
        sigs: vec![],
        ca: None,
    };
    (path.hash_part().to_owned(), n.render())
}

/// Kill -9 mid-upload, in-process: the entry's NAR is a FIFO that delivers
/// one part and then nothing, so the upload stops inside its multipart
/// upload; the task is dropped there. No narinfo and no NAR are visible;
/// the next start's clean-up aborts the multipart upload.
#[tokio::test]
async fn an_upload_killed_midway_leaves_no_entry_and_the_next_start_aborts_it() {
    let Some(m) = moto::moto() else { return };
    let b = m.bucket("crash").await;
    let root = tempfile::tempdir().unwrap();
    let (hash, text) = narinfo("nar/stuck.nar");
    std::fs::create_dir_all(root.path().join("nar")).unwrap();
    std::fs::write(root.path().join(format!("{hash}.narinfo")), text).unwrap();
    let fifo = root.path().join("nar/stuck.nar");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo");
    let (b2, r2, h2) = (b.clone(), root.path().to_owned(), hash.clone());
    let upload = tokio::spawn(async move { mirror::upload_entry(&b2, (&r2, None), "", &h2).await });
    // The writer: one part and one byte, then it stays open and silent.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        f.write_all(&pattern(PART_SIZE + 1)).unwrap();
        f
    });
    while b.list_uploads().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upload.abort();
    assert!(upload.await.unwrap_err().is_cancelled());
    assert!(
        !b.exists(&format!("{hash}.narinfo")).await.unwrap(),
        "no narinfo"
    );
    assert!(!b.exists("nar/stuck.nar").await.unwrap(), "no NAR");
    assert_eq!(b.list_uploads().await.unwrap().len(), 1);
    // A younger upload is left alone (another relay may be writing it)…
    let century = Duration::from_secs(3600 * 24 * 365 * 100);
    assert_eq!(mirror::abort_stale(&b, century).await.unwrap(), 0);
    // …an older one is aborted (moto dates every upload in 2010).
    let aborted = mirror::abort_stale(&b, nix_relay::s3::STALE_UPLOAD_AGE).await;
    assert_eq!(aborted.unwrap(), 1);
    assert!(b.list_uploads().await.unwrap().is_empty());
    drop(writer.join().unwrap());
}

/// The value of the sample `key` (`name` or `name{labels}`) in Prometheus
/// text, 0 when absent.
fn sample(text: &str, key: &str) -> f64 {
    (text.lines())
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key)
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

async fn relay_on(m: &moto::Moto, bucket: &str, trust: Option<String>) -> TestRelay {
    moto::relay_on_bucket(m, bucket, trust, "", Script::default()).await
}

/// Relay A builds; its mirror uploads the output; relay B, on the same
/// bucket and trusting A's key, answers the same build as a cache hit
/// with no backend build, and serves the NAR.
#[tokio::test]
async fn an_output_built_through_one_relay_is_a_cache_hit_through_another() {
    let Some(m) = moto::moto() else { return };
    // The only test here whose relays upload and read: the recorder is
    // process-global, the other tests move none of the s3 metrics.
    let metrics = nix_relay::metrics::install([SYSTEM.to_owned()].into()).unwrap();
    nix_relay::s3::use_test_credentials("testing", "testing");
    let bucket: Arc<Bucket> = m.bucket("shared").await;
    let a = relay_on(&m, "shared", None).await;
    let (drv_path, d) = drv::derivation("shared-out", SYSTEM, &[]);
    let out = drv::out_path(&d);
    let mut ca = a.client(Protocol::Serve, "alice").await;
    let res = ca.build(&drv_path, &d).await.unwrap();
    assert!(
        res.status.is_success(),
        "A builds it: {:?}\n{}",
        res.status,
        ca.log()
    );
    assert_eq!(a.fake("a").record().builds_started.len(), 1);
    // The relay stores an output as its client copies it out.
    let a_nar = ca.fetch(&out).await.unwrap();
    ca.close().await.unwrap();
    a.wait_stored(&out, Duration::from_secs(10)).await;
    moto::mirror_of(&a).flushed().await;
    let hash = out.hash_part();
    let keys = bucket.list_keys("").await.unwrap();
    assert!(keys.contains(&format!("{hash}.narinfo")), "{keys:?}");
    assert!(bucket.exists(&format!("meta/{hash}.prov")).await.unwrap());
    assert!(bucket.exists("nix-cache-info").await.unwrap());
    let text = metrics.render();
    assert_eq!(sample(&text, "nix_relay_s3_uploads_total"), 1.0, "{text}");
    let nar_size = a.stored(&out).await.unwrap().nar_size as f64;
    assert!(sample(&text, "nix_relay_s3_upload_bytes_total") > nar_size);
    assert_eq!(sample(&text, "nix_relay_s3_queue_depth"), 0.0);

    let signer = a.relay.store().settings().signer.clone().unwrap();
    let b = relay_on(&m, "shared", Some(signer.public().to_string())).await;
    let mut cb = b.client(Protocol::Serve, "bob").await;
    let res = cb.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::AlreadyValid, "log:\n{}", cb.log());
    assert!(
        b.fake("a").record().builds_started.is_empty(),
        "no backend build on B"
    );
    assert!(b.stored(&out).await.is_some(), "pulled into B's store");
    let text = metrics.render();
    let hits = sample(&text, "nix_relay_s3_reads_total{result=\"hit\"}");
    assert!(hits >= 1.0, "B read the narinfo from the bucket:\n{text}");
    assert_eq!(cb.fetch(&out).await.unwrap(), a_nar);
}
