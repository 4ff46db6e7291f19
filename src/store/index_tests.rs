use std::collections::BTreeSet;

use super::super::{Provenance, Verify};
use super::*;
use crate::wire::content_address::CaMethod;
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::NarLimits;
use crate::wire::path_info::ValidPathInfo;

fn path_n(n: usize, name: &str) -> StorePath {
    let h: String =
        std::iter::repeat_n(b"0123456789abcdfghijklmnpqrsvwxyz"[n % 32] as char, 32).collect();
    StorePath::parse(&format!("/nix/store/{h}-{name}")).unwrap()
}

async fn add(
    store: &Store,
    p: &StorePath,
    refs: &[StorePath],
    deriver: Option<StorePath>,
    scope: &Scope,
) {
    let nar = super::super::flat_nar(p.as_str().as_bytes().to_vec());
    let info = ValidPathInfo {
        path: p.clone(),
        deriver,
        nar_hash: Sha256Hash::digest(&nar),
        references: refs.iter().cloned().collect::<BTreeSet<_>>(),
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: vec![],
        ca: None,
    };
    let mut w = store.begin(NarLimits::default()).await.unwrap();
    let mut r = &nar[..];
    w.pump(&mut r, None::<&mut tokio::io::Sink>, p)
        .await
        .unwrap();
    let prov = Provenance::Uploaded {
        client: "t".into(),
        trusted: true,
    };
    w.commit(info, Verify::Declared, scope, &prov)
        .await
        .unwrap();
}

#[tokio::test]
async fn hash_part_referrers_derivers_and_listing_respect_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Default::default()).unwrap();
    let (lib, app, drv, mine) = (
        path_n(1, "lib"),
        path_n(2, "app"),
        path_n(3, "app.drv"),
        path_n(4, "mine"),
    );
    let eve = Scope::Private("eve".into());
    add(&store, &lib, &[], None, &Scope::Public).await;
    add(
        &store,
        &drv,
        std::slice::from_ref(&lib),
        None,
        &Scope::Public,
    )
    .await;
    add(
        &store,
        &app,
        &[lib.clone(), app.clone()],
        Some(drv.clone()),
        &Scope::Public,
    )
    .await;
    add(&store, &mine, std::slice::from_ref(&lib), None, &eve).await;

    let hp = |p: &StorePath| p.hash_part().to_owned();
    assert_eq!(
        store.path_from_hash_part(&hp(&app), None).await.unwrap(),
        Some(app.clone())
    );
    assert_eq!(
        store.path_from_hash_part(&hp(&mine), None).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .path_from_hash_part(&hp(&mine), Some("eve"))
            .await
            .unwrap(),
        Some(mine.clone())
    );
    assert_eq!(
        store.path_from_hash_part("../meta", None).await.unwrap(),
        None
    );

    assert_eq!(
        store.referrers(&lib, None).await.unwrap(),
        vec![app.clone(), drv.clone()]
    );
    let mut all_eve = vec![app.clone(), drv.clone(), mine.clone()];
    all_eve.sort();
    assert_eq!(store.referrers(&lib, Some("eve")).await.unwrap(), all_eve);
    assert_eq!(
        store.referrers(&app, None).await.unwrap(),
        vec![app.clone()]
    );

    assert_eq!(
        store.valid_derivers(&app, None).await.unwrap(),
        vec![drv.clone()]
    );
    assert!(store.valid_derivers(&lib, None).await.unwrap().is_empty());

    let mut public = vec![lib.clone(), app.clone(), drv.clone()];
    public.sort();
    assert_eq!(store.all_paths(None).await.unwrap(), public);
    assert_eq!(store.all_paths(Some("eve")).await.unwrap().len(), 4);
}

#[tokio::test]
async fn ca_paths_of_untrusted_clients_are_public_only_over_public_references() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Default::default()).unwrap();
    let (public_ref, private_ref) = (path_n(1, "pub"), path_n(2, "priv"));
    add(&store, &public_ref, &[], None, &Scope::Public).await;
    add(
        &store,
        &private_ref,
        &[],
        None,
        &Scope::Private("eve".into()),
    )
    .await;
    for (refs, public) in [
        (vec![public_ref.clone()], true),
        (vec![private_ref.clone()], false),
    ] {
        let text = format!("text referring to {refs:?}").into_bytes();
        let h = Sha256Hash::digest(&text);
        let p = CaMethod::Text.store_path("t.drv", &h, &refs).unwrap();
        let nar = super::super::flat_nar(text);
        let mut w = store.begin(NarLimits::default()).await.unwrap();
        let mut r = &nar[..];
        w.pump(&mut r, None::<&mut tokio::io::Sink>, &p)
            .await
            .unwrap();
        let s = w.summary(&p).await.unwrap();
        let info = ValidPathInfo {
            path: p.clone(),
            deriver: None,
            nar_hash: s.sha256,
            references: refs.into_iter().collect(),
            registration_time: 0,
            nar_size: s.size,
            ultimate: false,
            sigs: vec![],
            ca: Some(CaMethod::Text.render(&h)),
        };
        let got = store.commit_ca(w, info, "eve", false).await.unwrap();
        assert_eq!(got.ca.as_deref(), Some(CaMethod::Text.render(&h).as_str()));
        assert_eq!(store.contains(&p, None).await.unwrap(), public, "{p}");
        assert!(store.contains(&p, Some("eve")).await.unwrap());
    }
}
