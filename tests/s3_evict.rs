//! The bucket's size cap (`[cache] store_max_size`, `s3::evict`) against
//! moto on loopback: the least recently used entries go (narinfo first),
//! a refreshed one stays, a NAR shared by two narinfos stays while one is
//! left, orphan NARs and narinfos without a NAR go, two passes at once
//! leave a consistent bucket, and nothing younger than the guard goes.

use std::sync::Arc;
use std::time::Duration;

use nix_relay::s3::evict::{Evictor, Pass, Policy};
use nix_relay::s3::{Bucket, Mirror};
use nix_relay::store::NarInfo;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::store_path::StorePath;

#[path = "s3_moto/moto.rs"]
mod moto;

const NAR: usize = 1000;

/// The hash part of entry `i`.
fn hash(i: usize) -> String {
    format!("{i:0>32}")
}

/// The narinfo of entry `i`, its NAR at `nar`.
fn narinfo(i: usize, nar: &str) -> String {
    let path = StorePath::parse(&format!("/nix/store/{}-e{i}", hash(i))).unwrap();
    NarInfo {
        store_path: path,
        url: nar.into(),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(b"x"),
        nar_size: NAR as u64,
        references: vec![],
        deriver: None,
        system: None,
        sigs: vec![],
        ca: None,
    }
    .render()
}

/// Writes entry `i` as the mirror does (NAR, provenance, narinfo last),
/// its narinfo pointing at `nar` (written unless it is there).
async fn put_entry(b: &Bucket, scope: &str, i: usize, nar: &str) {
    if !b.exists(&format!("{scope}{nar}")).await.unwrap() {
        let body = vec![i as u8; NAR];
        b.put(&format!("{scope}{nar}"), body.into()).await.unwrap();
    }
    let h = hash(i);
    b.put(&format!("{scope}meta/{h}.prov"), "built".into())
        .await
        .unwrap();
    b.put(&format!("{scope}{h}.narinfo"), narinfo(i, nar).into())
        .await
        .unwrap();
}

/// The bucket's LastModified has a resolution of one second.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// Every narinfo's NAR is in the bucket; the narinfo keys, sorted.
async fn consistent(b: &Bucket) -> Vec<String> {
    let keys = b.list_keys("").await.unwrap();
    let mut narinfos = Vec::new();
    for k in keys.iter().filter(|k| k.ends_with(".narinfo")) {
        let text = b.get_bytes(k, 1 << 20).await.unwrap().unwrap();
        let n = NarInfo::parse(std::str::from_utf8(&text).unwrap()).unwrap();
        let scope = k
            .rsplit_once('/')
            .map_or(String::new(), |(s, _)| format!("{s}/"));
        let nar = format!("{scope}{}", n.url);
        assert!(keys.contains(&nar), "{k} without its NAR {nar}: {keys:?}");
        narinfos.push(k.clone());
    }
    narinfos.sort();
    narinfos
}

fn sample(text: &str, key: &str) -> f64 {
    (text.lines())
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key)
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

#[tokio::test]
async fn above_the_cap_the_least_recently_used_entries_go_narinfo_first() {
    let Some(m) = moto::moto() else { return };
    let metrics = nix_relay::metrics::install(Default::default()).unwrap();
    let b: Arc<Bucket> = m.bucket("evict").await;
    // Oldest first: 1, 2 (private), 3, 4, then 0; 5 shares 1's NAR; 6's
    // narinfo lost its NAR; one NAR nobody refers to.
    for (i, scope) in [(1, ""), (2, "private/bob/"), (3, ""), (4, "")] {
        put_entry(&b, scope, i, &format!("nar/e{i}.nar")).await;
        next_second().await;
    }
    put_entry(&b, "", 0, "nar/e0.nar").await;
    put_entry(&b, "", 6, "nar/e6.nar").await;
    b.delete("nar/e6.nar").await.unwrap();
    b.put("nar/orphan.nar", vec![9; NAR].into()).await.unwrap();
    next_second().await;
    put_entry(&b, "", 5, "nar/e1.nar").await;
    // Entry 0 is used: its narinfo becomes the newest.
    next_second().await;
    let key0 = format!("{}.narinfo", hash(0));
    let zero = Duration::ZERO;
    assert!(
        nix_relay::s3::refresh::refresh_if_old(&b, &key0, zero)
            .await
            .unwrap()
    );
    let before = b.stat(&key0).await.unwrap().unwrap();
    assert_eq!(
        before.size as usize,
        b.get_bytes(&key0, 1 << 20).await.unwrap().unwrap().len()
    );

    // Everything is younger than the real guard: nothing goes but the
    // narinfo whose NAR is gone (no guard: an upload writes its NAR first).
    let guarded = Policy {
        max_size: 0,
        guard: nix_relay::s3::STALE_UPLOAD_AGE,
    };
    let p = Evictor::new(b.clone(), guarded).pass().await.unwrap();
    assert_eq!(
        p,
        Pass {
            dangling: 1,
            bucket_bytes: 6 * NAR as u64,
            ..Pass::default()
        }
    );

    // NARs: e0..e4 and the orphan, 6000 bytes; the cap 3500.
    let policy = Policy {
        max_size: 3500,
        guard: zero,
    };
    let p = Evictor::new(b.clone(), policy).pass().await.unwrap();
    let want = Pass {
        evicted: 3,
        orphans: 1,
        dangling: 0,
        freed: 3 * NAR as u64,
        bucket_bytes: 3 * NAR as u64,
    };
    assert_eq!(p, want, "1 (its NAR kept for 5), private 2, 3 went");
    let left = consistent(&b).await;
    let names: Vec<String> = [0, 4, 5]
        .iter()
        .map(|&i| format!("{}.narinfo", hash(i)))
        .collect();
    assert_eq!(left, names, "the refreshed 0 stays");
    for gone in ["nar/orphan.nar", "private/bob/nar/e2.nar", "nar/e3.nar"] {
        assert!(!b.exists(gone).await.unwrap(), "{gone}");
    }
    assert!(b.exists("nar/e1.nar").await.unwrap(), "5 still uses it");
    assert!(!b.exists(&format!("meta/{}.prov", hash(3))).await.unwrap());
    let text = metrics.render();
    assert_eq!(
        sample(&text, "nix_relay_s3_evicted_total{reason=\"lru\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "nix_relay_s3_evicted_total{reason=\"orphan\"}"),
        1.0
    );
    assert_eq!(sample(&text, "nix_relay_s3_evicted_bytes_total"), 3000.0);
    assert_eq!(sample(&text, "nix_relay_s3_bucket_bytes"), 3000.0);

    // Two relays' passes at once, down to one NAR: 4 then 5 (and the NAR
    // it shared with 1) go, the refreshed 0 stays.
    let policy = Policy {
        max_size: NAR as u64,
        guard: zero,
    };
    let (e1, e2) = (
        Evictor::new(b.clone(), policy),
        Evictor::new(b.clone(), policy),
    );
    let (p1, p2) = tokio::join!(e1.pass(), e2.pass());
    let (p1, p2) = (p1.unwrap(), p2.unwrap());
    assert_eq!((p1.evicted, p2.evicted), (2, 2), "both decided the same");
    assert_eq!(consistent(&b).await, [key0]);
    assert!(!b.exists("nar/e1.nar").await.unwrap());
    let again = Evictor::new(b.clone(), policy).pass().await.unwrap();
    assert_eq!(
        again,
        Pass {
            bucket_bytes: NAR as u64,
            ..Pass::default()
        }
    );
}

/// Entry `i` in the local store at `root` (public), committed `age` ago.
fn local_entry(root: &std::path::Path, i: usize, age: Duration) {
    let nar = format!("nar/e{i}.nar");
    std::fs::create_dir_all(root.join("nar")).unwrap();
    std::fs::write(root.join(&nar), vec![i as u8; NAR]).unwrap();
    let ni = root.join(format!("{}.narinfo", hash(i)));
    std::fs::write(&ni, narinfo(i, &nar)).unwrap();
    let f = std::fs::File::options().write(true).open(&ni).unwrap();
    f.set_modified(std::time::SystemTime::now() - age).unwrap();
}

/// A restart's repair uploads the local public entries the bucket lacks;
/// with a cap, not those committed before the bucket's oldest narinfo
/// (evicted there, not lost in a crash).
#[tokio::test]
async fn a_capped_buckets_repair_does_not_bring_back_evicted_entries() {
    let Some(m) = moto::moto() else { return };
    let b: Arc<Bucket> = m.bucket("repair").await;
    put_entry(&b, "", 7, "nar/e7.nar").await;
    next_second().await;
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(24 * 3600);
    local_entry(dir.path(), 8, 2 * day);
    local_entry(dir.path(), 9, Duration::ZERO);
    let open = || nix_relay::store::Store::open(dir.path(), Default::default()).unwrap();
    let stale = nix_relay::s3::STALE_UPLOAD_AGE;
    Mirror::start(b.clone(), open(), stale, true)
        .flushed()
        .await;
    let (old, new) = (
        format!("{}.narinfo", hash(8)),
        format!("{}.narinfo", hash(9)),
    );
    assert!(b.exists(&new).await.unwrap(), "lost in a crash: uploaded");
    assert!(!b.exists(&old).await.unwrap(), "evicted: left out");
    Mirror::start(b.clone(), open(), stale, false)
        .flushed()
        .await;
    assert!(b.exists(&old).await.unwrap(), "no cap: every missing one");
}
