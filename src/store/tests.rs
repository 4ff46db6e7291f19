use std::collections::BTreeSet;

use super::*;
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::{NarNode, encode_nar};

pub(super) fn path(name: &str) -> StorePath {
    StorePath::parse(&format!(
        "/nix/store/{}-{name}",
        "a".repeat(32).replace('a', "1")
    ))
    .unwrap()
}

fn path_n(n: usize, name: &str) -> StorePath {
    let h: String =
        std::iter::repeat_n(b"0123456789abcdfghijklmnpqrsvwxyz"[n % 32] as char, 32).collect();
    StorePath::parse(&format!("/nix/store/{h}-{name}")).unwrap()
}

pub(super) fn file_nar(contents: &[u8]) -> Vec<u8> {
    encode_nar(&NarNode::Regular {
        executable: false,
        contents: contents.to_vec(),
    })
}

pub(super) fn info_for(p: &StorePath, nar: &[u8], refs: &[StorePath]) -> ValidPathInfo {
    ValidPathInfo {
        path: p.clone(),
        deriver: None,
        nar_hash: Sha256Hash::digest(nar),
        references: refs.iter().cloned().collect::<BTreeSet<_>>(),
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: vec![],
        ca: None,
    }
}

pub(super) fn uploaded() -> Provenance {
    Provenance::Uploaded {
        client: "t".into(),
        trusted: true,
    }
}

async fn add_in(
    store: &Store,
    info: ValidPathInfo,
    nar: &[u8],
    scope: &Scope,
) -> Result<ValidPathInfo, Error> {
    let mut w = store.begin(NarLimits::default()).await?;
    let mut r = nar;
    w.pump(&mut r, None::<&mut tokio::io::Sink>, &info.path)
        .await?;
    w.commit(info, Verify::Declared, scope, &uploaded()).await
}

async fn add(store: &Store, info: ValidPathInfo, nar: &[u8]) -> Result<ValidPathInfo, Error> {
    add_in(store, info, nar, &Scope::Public).await
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, Settings::default()).unwrap()
}

#[tokio::test]
async fn a_verified_upload_becomes_visible_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let nar = file_nar(b"hello");
    let p = path("hello");
    assert!(!store.contains(&p, None).await.unwrap());
    add(&store, info_for(&p, &nar, &[]), &nar).await.unwrap();
    let info = store.path_info(&p, None).await.unwrap().unwrap();
    assert_eq!(info.nar_size, nar.len() as u64);
    let (_, mut r) = store.open_nar(&p, None).await.unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut back)
        .await
        .unwrap();
    assert_eq!(back, nar);
}

#[tokio::test]
async fn a_hash_mismatch_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let nar = file_nar(b"hello");
    let p = path("hello");
    let mut info = info_for(&p, &nar, &[]);
    info.nar_hash = Sha256Hash::digest(b"something else");
    let err = add(&store, info, &nar).await.unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    assert!(!store.contains(&p, None).await.unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("nar")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn a_truncated_nar_is_rejected_and_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let nar = file_nar(b"hello world");
    let p = path("hello");
    let err = add(&store, info_for(&p, &nar, &[]), &nar[..nar.len() - 8])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Nar { .. }), "{err}");
    assert!(!store.contains(&p, None).await.unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn leftovers_of_a_crashed_upload_are_discarded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::write(dir.path().join("tmp/123-0.nar"), b"half a nar").unwrap();
    let _store = open(dir.path());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn the_closure_lists_references_before_referrers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b, c) = (path_n(1, "a"), path_n(2, "b"), path_n(3, "c"));
    for (p, refs) in [
        (&a, vec![]),
        (&b, vec![a.clone()]),
        (&c, vec![a.clone(), b.clone(), c.clone()]),
    ] {
        let nar = file_nar(p.name().as_bytes());
        add(&store, info_for(p, &nar, &refs), &nar).await.unwrap();
    }
    assert_eq!(
        store
            .closure_sorted(std::slice::from_ref(&c), None)
            .await
            .unwrap()
            .0,
        vec![a.clone(), b.clone(), c.clone()]
    );
    let missing = path_n(4, "d");
    assert!(matches!(
        store.closure_sorted(&[missing], None).await,
        Err(Error::Missing(_))
    ));
}

#[test]
fn topo_sort_survives_claimed_reference_cycles() {
    let (a, b) = (path_n(1, "a"), path_n(2, "b"));
    let refs = HashMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([a.clone()])),
    ]);
    let sorted = topo_sort(&refs);
    assert_eq!(sorted.len(), 2);
}

pub(super) async fn read_back(store: &Store, p: &StorePath, client: Option<&str>) -> Vec<u8> {
    let (_, mut r) = store.open_nar(p, client).await.unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut back)
        .await
        .unwrap();
    back
}

#[tokio::test]
async fn every_compression_reads_back_the_exact_nar() {
    let nar = file_nar(&vec![42u8; 300_000]);
    for c in [Compression::Zstd, Compression::Xz, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            compression: c,
            ..Default::default()
        };
        let store = Store::open(dir.path(), settings).unwrap();
        let p = path("blob");
        add(&store, info_for(&p, &nar, &[]), &nar).await.unwrap();
        assert_eq!(read_back(&store, &p, None).await, nar, "{c:?}");
        let n = store.narinfo(&p, None).await.unwrap().unwrap();
        let file = std::fs::read(dir.path().join(&n.url)).unwrap();
        assert_eq!(n.file_size, Some(file.len() as u64));
        assert_eq!(n.file_hash, Some(Sha256Hash::digest(&file)));
        if c != Compression::None {
            assert!(file.len() < nar.len() / 10, "{c:?} compresses");
        }
    }
}

#[tokio::test]
async fn public_entries_carry_a_relay_signature_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = signing::SecretKey::from_seed("relay-1", [3; 32]);
    let settings = Settings {
        signer: Some(std::sync::Arc::new(key.clone())),
        ..Default::default()
    };
    let store = Store::open(dir.path(), settings).unwrap();
    let nar = file_nar(b"x");
    let (a, b) = (path_n(1, "a"), path_n(2, "b"));
    add(&store, info_for(&a, &nar, &[]), &nar).await.unwrap();
    add(&store, info_for(&b, &nar, std::slice::from_ref(&a)), &nar)
        .await
        .unwrap();
    let n = store.narinfo(&b, None).await.unwrap().unwrap();
    assert_eq!(n.sigs.len(), 1);
    assert!(key.public().verifies(&n.fingerprint(), &n.sigs[0]));
    let text = std::fs::read_to_string(
        dir.path()
            .join("meta")
            .join(format!("{}.prov", b.hash_part())),
    )
    .unwrap();
    assert_eq!(text, "uploaded client=t trusted=true\n");
}

#[tokio::test]
async fn private_entries_are_seen_only_by_their_client_and_stay_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let key = signing::SecretKey::from_seed("relay-1", [3; 32]);
    let settings = Settings {
        signer: Some(std::sync::Arc::new(key)),
        ..Default::default()
    };
    let store = Store::open(dir.path(), settings).unwrap();
    let nar = file_nar(b"secret");
    let p = path("mine");
    add_in(
        &store,
        info_for(&p, &nar, &[]),
        &nar,
        &Scope::Private("eve".into()),
    )
    .await
    .unwrap();
    assert!(store.contains(&p, Some("eve")).await.unwrap());
    assert!(!store.contains(&p, Some("bob")).await.unwrap());
    assert!(!store.contains(&p, None).await.unwrap());
    assert!(
        !dir.path()
            .join(format!("{}.narinfo", p.hash_part()))
            .exists(),
        "not in the served directory"
    );
    assert!(
        store
            .narinfo(&p, Some("eve"))
            .await
            .unwrap()
            .unwrap()
            .sigs
            .is_empty()
    );
    assert_eq!(read_back(&store, &p, Some("eve")).await, nar);
    let (_, private) = store
        .closure_sorted(std::slice::from_ref(&p), Some("eve"))
        .await
        .unwrap();
    assert!(private);
}

#[test]
fn uploads_are_classified_by_signature_and_client_trust() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signing::SecretKey::from_seed("upstream-1", [9; 32]);
    let settings = Settings {
        trusted_keys: vec![signer.public()],
        ..Default::default()
    };
    let store = Store::open(dir.path(), settings).unwrap();
    let nar = file_nar(b"x");
    let mut info = info_for(&path("x"), &nar, &[]);
    assert_eq!(
        store.classify_upload(&info, "eve", false).0,
        Scope::Private("eve".into())
    );
    assert_eq!(store.classify_upload(&info, "bob", true).0, Scope::Public);
    info.sigs.push(signer.sign(&fingerprint(&info)));
    let (scope, prov) = store.classify_upload(&info, "eve", false);
    assert_eq!(scope, Scope::Public);
    assert_eq!(
        prov,
        Provenance::Signed {
            key: "upstream-1".into()
        }
    );
    info.sigs =
        vec![signing::SecretKey::from_seed("upstream-1", [8; 32]).sign(&fingerprint(&info))];
    assert_eq!(
        store.classify_upload(&info, "eve", false).0,
        Scope::Private("eve".into()),
        "forged signature"
    );
}

#[tokio::test]
async fn over_the_cap_the_least_recently_used_unpinned_entries_go() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        compression: Compression::None,
        ..Default::default()
    };
    let store = Store::open(dir.path(), settings).unwrap();
    let paths: Vec<StorePath> = (0..4).map(|i| path_n(i, "blob")).collect();
    for (i, p) in paths.iter().enumerate() {
        let nar = file_nar(&vec![i as u8; 1000]);
        add(&store, info_for(p, &nar, &[]), &nar).await.unwrap();
        let prov = dir
            .path()
            .join("meta")
            .join(format!("{}.prov", p.hash_part()));
        let when =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(prov)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let per_entry = store.total_bytes() / 4;
    let _ = read_back(&store, &paths[0], None).await; // oldest, but just used
    let pin = store.pin(std::slice::from_ref(&paths[1]));
    let removed = store.evict_to(2 * per_entry).unwrap();
    assert_eq!(removed, 2);
    let mut left = Vec::new();
    for p in &paths {
        left.push(store.contains(p, None).await.unwrap());
    }
    assert_eq!(
        left,
        [true, true, false, false],
        "used and pinned entries stay"
    );
    drop(pin);
    let reopened = open(dir.path());
    assert_eq!(
        reopened.total_bytes(),
        2 * per_entry,
        "the total survives a restart"
    );
}

#[tokio::test]
async fn added_signatures_are_recorded_in_the_narinfo() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let nar = file_nar(b"x");
    let p = path("x");
    add(&store, info_for(&p, &nar, &[]), &nar).await.unwrap();
    // Recorded, not verified (a trusted client's AddSignatures), but it
    // must be a well-formed signature.
    let sig = signing::SecretKey::from_seed("other-1", [4; 32]).sign("anything");
    assert!(
        store
            .add_signatures(&p, std::slice::from_ref(&sig), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .narinfo(&p, None)
            .await
            .unwrap()
            .unwrap()
            .sigs
            .contains(&sig)
    );
    assert!(
        !store
            .add_signatures(&path_n(5, "y"), &[sig], None)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_commit_that_cannot_publish_its_narinfo_fails_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = path("blocked");
    let nar = file_nar(b"x");
    // A directory where the narinfo goes: the final rename fails, as it
    // would on a full disk.
    std::fs::create_dir(dir.path().join(format!("{}.narinfo", p.hash_part()))).unwrap();
    let err = add(&store, info_for(&p, &nar, &[]), &nar)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                step: "publishing",
                ..
            }
        ),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

#[tokio::test]
async fn the_use_hook_hears_of_each_use_with_the_entry_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let used = Arc::new(std::sync::Mutex::new(Vec::new()));
    let u = used.clone();
    assert!(store.set_on_use(Arc::new(move |d: &str, h: &str| {
        u.lock().unwrap().push((d.to_owned(), h.to_owned()));
    })));
    let nar = file_nar(b"used");
    let (p, q) = (path_n(1, "pub"), path_n(2, "priv"));
    add(&store, info_for(&p, &nar, &[]), &nar).await.unwrap();
    let bob = Scope::Private("bob".into());
    add_in(&store, info_for(&q, &nar, &[]), &nar, &bob)
        .await
        .unwrap();
    assert!(used.lock().unwrap().is_empty(), "a commit is no use");
    drop(store.open_nar(&q, Some("bob")).await.unwrap());
    store.touch_public(p.hash_part());
    let want = [
        ("private/bob".to_owned(), q.hash_part().to_owned()),
        (String::new(), p.hash_part().to_owned()),
    ];
    assert_eq!(*used.lock().unwrap(), want);
}
