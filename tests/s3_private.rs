//! Private scopes read back from the bucket (`s3::private`) against moto on
//! loopback: an untrusted client's output built through relay A is a cache
//! hit through relay B for that client only, pulled into its private scope
//! on B; an entry copied to another client's prefix is refused (its scope
//! signature names the first client).

use std::time::Duration;

use nix_relay::config::Protocol;
use nix_relay::session::ClientId;
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestClient, TestRelay};
use nix_relay::wire::build::BuildStatus;
use nix_relay::wire::store_path::StorePath;

#[path = "s3_moto/moto.rs"]
mod moto;

async fn relay_on(m: &moto::Moto, bucket: &str, trust: Option<String>) -> TestRelay {
    let untrusted = "untrusted_clients = true\n";
    moto::relay_on_bucket(m, bucket, trust, untrusted, Script::default()).await
}

async fn untrusted(t: &TestRelay, name: &str) -> TestClient {
    let id = ClientId {
        name: name.into(),
        trusted: false,
    };
    TestClient::open(&t.relay, Protocol::Serve, id).await
}

async fn sees(t: &TestRelay, client: Option<&str>, path: &StorePath) -> bool {
    t.relay.store().contains(path, client).await.unwrap()
}

/// Copies every object under `from` to `to` (an attacker with write access
/// to the bucket but not to a relay's key).
async fn copy_prefix(b: &nix_relay::s3::Bucket, from: &str, to: &str) {
    for k in b.list_keys(from).await.unwrap() {
        let body = b.get_bytes(&k, 1 << 30).await.unwrap().unwrap();
        let dest = format!("{to}{}", &k[from.len()..]);
        b.put(&dest, body.into()).await.unwrap();
    }
}

#[tokio::test]
async fn a_private_output_built_through_one_relay_is_a_hit_through_another_for_its_client_only() {
    let Some(m) = moto::moto() else { return };
    nix_relay::s3::use_test_credentials("testing", "testing");
    let bucket = m.bucket("private").await;
    let a = relay_on(&m, "private", None).await;
    // An untrusted client's unsigned source is private to it, and so is
    // what is built from it.
    let (src, src_nar) = drv::source("x-src", b"private source", &[]);
    let (drv_path, d) = drv::derivation("x-out", SYSTEM, std::slice::from_ref(&src.path));
    let out = drv::out_path(&d);
    let mut xa = untrusted(&a, "xavier").await;
    xa.upload(&src, &src_nar).await.unwrap();
    let res = xa.build(&drv_path, &d).await.unwrap();
    assert!(res.status.is_success(), "{:?}\n{}", res.status, xa.log());
    let nar = xa.fetch(&out).await.unwrap();
    xa.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sees(&a, Some("xavier"), &out).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A stores the output"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sees(&a, None, &out).await, "private on A");
    moto::mirror_of(&a).flushed().await;
    let key = format!("private/xavier/{}.narinfo", out.hash_part());
    assert!(
        bucket.exists(&key).await.unwrap(),
        "uploaded under its scope"
    );
    copy_prefix(&bucket, "private/xavier/", "private/yvonne/").await;

    let signer = a.relay.store().settings().signer.clone().unwrap();
    let b = relay_on(&m, "private", Some(signer.public().to_string())).await;
    // Another client, trusted or not, gets no hit; a copy of the entry
    // under its own prefix is refused.
    for (name, trusted) in [("yvonne", false), ("bob", true)] {
        let id = ClientId {
            name: name.into(),
            trusted,
        };
        let mut c = TestClient::open(&b.relay, Protocol::Serve, id).await;
        let res = c.build(&drv_path, &d).await.unwrap();
        assert_ne!(res.status, BuildStatus::AlreadyValid, "{name}: {}", c.log());
        assert!(!sees(&b, Some(name), &out).await, "{name}");
    }
    assert!(!sees(&b, None, &out).await, "nothing public on B");
    // Its own client gets a hit, pulled into its private scope on B.
    let builds = b.fake("a").record().builds_started.len();
    let mut xb = untrusted(&b, "xavier").await;
    let res = xb.build(&drv_path, &d).await.unwrap();
    assert_eq!(res.status, BuildStatus::AlreadyValid, "log:\n{}", xb.log());
    assert_eq!(
        b.fake("a").record().builds_started.len(),
        builds,
        "no build"
    );
    assert!(sees(&b, Some("xavier"), &out).await, "pulled for xavier");
    assert!(!sees(&b, None, &out).await, "still not public on B");
    assert_eq!(xb.fetch(&out).await.unwrap(), nar);
    xb.close().await.unwrap();
}
