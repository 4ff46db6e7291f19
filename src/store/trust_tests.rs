//! What a client's upload may write into a narinfo (issue 15, item 4).

use std::collections::BTreeSet;

use super::*;
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::{NarNode, encode_nar};

fn path(name: &str) -> StorePath {
    StorePath::parse(&format!("/nix/store/{}-{name}", "1".repeat(32))).unwrap()
}

fn nar(contents: &[u8]) -> Vec<u8> {
    encode_nar(&NarNode::Regular {
        executable: false,
        contents: contents.to_vec(),
    })
}

fn info_for(p: &StorePath, nar: &[u8]) -> ValidPathInfo {
    ValidPathInfo {
        path: p.clone(),
        deriver: None,
        nar_hash: Sha256Hash::digest(nar),
        references: BTreeSet::new(),
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: vec![],
        ca: None,
    }
}

fn upstream() -> signing::SecretKey {
    signing::SecretKey::from_seed("upstream-1", [9; 32])
}

/// A store that trusts `upstream-1` and signs with `relay-1`.
fn open(dir: &Path) -> Store {
    let settings = Settings {
        signer: Some(Arc::new(signing::SecretKey::from_seed("relay-1", [3; 32]))),
        trusted_keys: vec![upstream().public()],
        ..Default::default()
    };
    Store::open(dir, settings).unwrap()
}

async fn upload(
    store: &Store,
    info: ValidPathInfo,
    nar: &[u8],
    client: &str,
    trusted: bool,
) -> Result<Scope, Error> {
    let mut w = store.begin(NarLimits::default()).await?;
    let mut r = nar;
    w.pump(&mut r, None::<&mut tokio::io::Sink>, &info.path)
        .await?;
    store
        .commit_upload(w, info, Verify::Declared, client, trusted)
        .await
}

fn narinfo_text(dir: &Path, p: &StorePath) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("{}.narinfo", p.hash_part()))).ok()
}

#[tokio::test]
async fn a_newline_in_a_signature_or_ca_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let n = nar(b"x");
    let p = path("x");
    let good = upstream().sign(&fingerprint(&info_for(&p, &n)));
    let nix32 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
    let injected_sig = format!("{good}\nCA: fixed:r:sha256:{nix32}");
    let injected_ca = format!("fixed:r:sha256:{nix32}\nSig: {good}");
    for (sigs, ca) in [(vec![injected_sig], None), (vec![], Some(injected_ca))] {
        let mut info = info_for(&p, &n);
        info.sigs = sigs;
        info.ca = ca;
        let err = upload(&store, info, &n, "lab", true).await.unwrap_err();
        assert!(matches!(err, Error::BadMetadata { .. }), "{err}");
        assert!(!store.contains(&p, Some("lab")).await.unwrap());
    }
    assert!(narinfo_text(dir.path(), &p).is_none());
    let left = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(left, 0, "temp files left");
    // AddSignatures checks the same way.
    let info = info_for(&p, &n);
    upload(&store, info, &n, "lab", true).await.unwrap();
    let before = narinfo_text(dir.path(), &p).unwrap();
    let err = store
        .add_signatures(&p, &[format!("{good}\nCA: text:x")], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadMetadata { .. }), "{err}");
    assert_eq!(narinfo_text(dir.path(), &p).unwrap(), before);
}

#[tokio::test]
async fn a_signature_no_trusted_key_verifies_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let n = nar(b"y");
    let p = path("y");
    let mut info = info_for(&p, &n);
    let fp = fingerprint(&info);
    let forged = signing::SecretKey::from_seed("upstream-1", [8; 32]).sign(&fp);
    let stranger = signing::SecretKey::from_seed("stranger-1", [7; 32]).sign(&fp);
    let genuine = upstream().sign(&fp);
    info.sigs = vec![forged.clone(), stranger.clone(), genuine.clone()];
    let scope = upload(&store, info, &n, "lab", true).await.unwrap();
    assert_eq!(scope, Scope::Public);
    let sigs = store.narinfo(&p, None).await.unwrap().unwrap().sigs;
    assert!(sigs.contains(&genuine), "{sigs:?}");
    assert!(!sigs.contains(&forged), "{sigs:?}");
    assert!(!sigs.contains(&stranger), "{sigs:?}");
    assert!(sigs.iter().any(|s| s.starts_with("relay-1:")), "{sigs:?}");
    assert_eq!(sigs.len(), 2, "{sigs:?}");
}

#[tokio::test]
async fn a_reupload_of_a_public_path_keeps_the_existing_narinfo() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let n = nar(b"z");
    let p = path("z");
    upload(&store, info_for(&p, &n), &n, "lab", true)
        .await
        .unwrap();
    let before = narinfo_text(dir.path(), &p).unwrap();
    let prov = dir
        .path()
        .join("meta")
        .join(format!("{}.prov", p.hash_part()));
    let prov_before = std::fs::read(&prov).unwrap();
    // Same path again, with a valid upstream signature and a CA: by a
    // trusted client, then by an untrusted one.
    let mut again = info_for(&p, &n);
    again.sigs = vec![upstream().sign(&fingerprint(&again))];
    again.ca = Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into());
    for (client, trusted) in [("lab", true), ("eve", false)] {
        let scope = upload(&store, again.clone(), &n, client, trusted)
            .await
            .unwrap();
        assert_eq!(scope, Scope::Public);
        assert_eq!(narinfo_text(dir.path(), &p).unwrap(), before, "{client}");
        assert_eq!(std::fs::read(&prov).unwrap(), prov_before, "{client}");
    }
    assert!(!dir.path().join("private").join("eve").exists());
    let left = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(left, 0, "temp files left");
}
