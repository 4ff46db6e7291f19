use std::collections::BTreeSet;

use super::*;
use crate::wire::nar::{NarNode, encode_nar};

fn path(name: &str) -> StorePath {
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

fn file_nar(contents: &[u8]) -> Vec<u8> {
    encode_nar(&NarNode::Regular {
        executable: false,
        contents: contents.to_vec(),
    })
}

fn info_for(p: &StorePath, nar: &[u8], refs: &[StorePath]) -> ValidPathInfo {
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

async fn add(store: &Store, info: ValidPathInfo, nar: &[u8]) -> Result<ValidPathInfo, Error> {
    let mut w = store.begin(NarLimits::default()).await?;
    let mut r = nar;
    w.pump(&mut r, None::<&mut tokio::io::Sink>, &info.path)
        .await?;
    w.commit(info, Verify::Declared).await
}

#[tokio::test]
async fn a_verified_upload_becomes_visible_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let nar = file_nar(b"hello");
    let p = path("hello");
    assert!(!store.contains(&p).await.unwrap());
    add(&store, info_for(&p, &nar, &[]), &nar).await.unwrap();
    let info = store.path_info(&p).await.unwrap().unwrap();
    assert_eq!(info.nar_size, nar.len() as u64);
    let (_, mut r) = store.open_nar(&p).await.unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut back)
        .await
        .unwrap();
    assert_eq!(back, nar);
}

#[tokio::test]
async fn a_hash_mismatch_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let nar = file_nar(b"hello");
    let p = path("hello");
    let mut info = info_for(&p, &nar, &[]);
    info.nar_hash = Sha256Hash::digest(b"something else");
    let err = add(&store, info, &nar).await.unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    assert!(!store.contains(&p).await.unwrap());
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
    let store = Store::open(dir.path()).unwrap();
    let nar = file_nar(b"hello world");
    let p = path("hello");
    let err = add(&store, info_for(&p, &nar, &[]), &nar[..nar.len() - 8])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Nar { .. }), "{err}");
    assert!(!store.contains(&p).await.unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn leftovers_of_a_crashed_upload_are_discarded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    std::fs::write(dir.path().join("tmp/123-0.nar"), b"half a nar").unwrap();
    let _store = Store::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn the_closure_lists_references_before_referrers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
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
            .closure_sorted(std::slice::from_ref(&c))
            .await
            .unwrap(),
        vec![a.clone(), b.clone(), c.clone()]
    );
    let missing = path_n(4, "d");
    assert!(matches!(
        store.closure_sorted(&[missing]).await,
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
