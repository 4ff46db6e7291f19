//! The store operations today's worker clients send, in-process (feature
//! `testing`): a raw worker client drives the real `session::worker::run`
//! op by op — content-addressed adds (paths checked against what Nix 2.8
//! computes), reverse queries, roots against eviction, build logs (also
//! read back by the real `nix log` over the HTTP cache), and every
//! unsupported op refused by name with the session going on.

use std::time::Duration;

use nix_relay::http::cache::{HttpState, router, serve};
use nix_relay::session::ClientId;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{TestRelay, fake_backend};
use nix_relay::wire::Limits;
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::nar::{NarNode, encode_nar};
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::worker::store_ops::{GC_DELETE_DEAD, GC_RETURN_LIVE, GcRequest, StoreOp};
use nix_relay::wire::worker::{
    FramedWriter, LegacyAddToStore, Reply, Request, StderrEnd, StderrMsg, WorkerCodec,
    WorkerVersion, client_handshake, read_stderr_stream,
};
use tokio::io::{AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

const DEP: &str = "/nix/store/fars50mlfk67nyzn0mc86b8gwbai49jr-dep.txt";
const DRV: &str = "/nix/store/jvc4is914shvirib0a9wzn7zfs1kgqx4-golden.drv";
/// What `nix-instantiate` wrote for DRV (see wire::content_address tests).
const DRV_TEXT: &str = concat!(
    r#"Derive([("out","/nix/store/0v60zj9lswr8q3ycml9196f7ymwqqzi2-golden","","")],"#,
    r#"[],["/nix/store/fars50mlfk67nyzn0mc86b8gwbai49jr-dep.txt"],"x86_64-linux","/bin/sh","#,
    r#"["-c","echo /nix/store/fars50mlfk67nyzn0mc86b8gwbai49jr-dep.txt > $out"],"#,
    r#"[("builder","/bin/sh"),("name","golden"),"#,
    r#"("out","/nix/store/0v60zj9lswr8q3ycml9196f7ymwqqzi2-golden"),("system","x86_64-linux")])"#
);

fn sp(s: &str) -> StorePath {
    StorePath::parse(s).unwrap()
}

struct Raw {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
    codec: WorkerCodec,
    session: tokio::task::JoinHandle<Result<(), nix_relay::session::Error>>,
    /// STDERR_NEXT lines of the last call.
    said: Vec<String>,
}

impl Raw {
    async fn open(t: &TestRelay, name: &str, trusted: bool) -> Raw {
        Self::open_at(t, name, trusted, WorkerVersion::LATEST).await
    }

    async fn open_at(t: &TestRelay, name: &str, trusted: bool, max: WorkerVersion) -> Raw {
        let (c, s) = tokio::io::duplex(256 << 10);
        let (sr, sw) = tokio::io::split(s);
        let id = ClientId {
            name: name.into(),
            trusted,
        };
        let gone = tokio_util::sync::CancellationToken::new();
        let run =
            nix_relay::session::worker::run(t.relay.clone(), BufReader::new(sr), sw, id, gone);
        let session = tokio::spawn(run);
        let (cr, mut w) = tokio::io::split(c);
        let mut r = BufReader::new(cr);
        let limits = Limits::default();
        let hs = client_handshake(&mut r, &mut w, max, &limits);
        let version = hs.await.expect("handshake").version;
        let codec = WorkerCodec::new(version, Limits::default());
        Raw {
            r,
            w,
            codec,
            session,
            said: Vec::new(),
        }
    }

    /// Sends `req` (and a framed `payload`), then reads its answer: the
    /// reply, or the STDERR_ERROR text.
    async fn call(&mut self, req: &Request, payload: Option<&[u8]>) -> Result<Reply, String> {
        self.call_with(req, payload, true).await
    }

    /// As [`Raw::call`], the payload framed or raw.
    async fn call_with(
        &mut self,
        req: &Request,
        payload: Option<&[u8]>,
        framed: bool,
    ) -> Result<Reply, String> {
        self.w
            .write_all(&self.codec.encode_request(req))
            .await
            .unwrap();
        if let (Some(p), false) = (payload, framed) {
            self.w.write_all(p).await.unwrap();
        } else if let Some(p) = payload {
            let mut f = FramedWriter::new(&mut self.w, 1000);
            f.write_all(p).await.unwrap();
            f.finish().await.unwrap();
        }
        self.w.flush().await.unwrap();
        let mut said = Vec::new();
        let end = read_stderr_stream(&mut self.r, self.codec.version, &Limits::default(), |m| {
            if let StderrMsg::Next(t) = m {
                said.push(String::from_utf8_lossy(&t).into_owned());
            }
            Ok(())
        })
        .await
        .unwrap();
        self.said = said;
        match end {
            StderrEnd::Last => Ok(self.codec.read_reply(&mut self.r, req).await.unwrap()),
            StderrEnd::Error(e) => Err(String::from_utf8_lossy(&e.message).into_owned()),
        }
    }

    async fn add(
        &mut self,
        name: &str,
        cam: &str,
        refs: &[&str],
        payload: &[u8],
    ) -> Result<Reply, String> {
        let req = Request::AddToStore {
            name: name.into(),
            cam_str: cam.into(),
            refs: refs.iter().map(|r| sp(r)).collect(),
            repair: false,
        };
        self.call(&req, Some(payload)).await
    }

    /// The session is still answering.
    async fn alive(&mut self) {
        let req = Request::IsValidPath { path: sp(DEP) };
        assert!(matches!(self.call(&req, None).await, Ok(Reply::Bool(_))));
    }
}

fn added(r: Result<Reply, String>) -> nix_relay::wire::path_info::ValidPathInfo {
    match r {
        Ok(Reply::AddedPath(i)) => i,
        other => panic!("{other:?}"),
    }
}

async fn relay() -> TestRelay {
    let config = fake_backend("a", "fake-ng://a", "");
    TestRelay::start(&config, &[("a", Script::default())]).await
}

#[tokio::test]
async fn content_addressed_adds_get_the_paths_nix_computes() {
    let t = relay().await;
    let mut c = Raw::open(&t, "alice", true).await;
    // Nix < 2.4's op for toFile / .drv files, then AddToStore text:sha256.
    let text = StoreOp::AddTextToStore {
        name: "dep.txt".into(),
        text: b"dep".to_vec(),
        refs: vec![],
    };
    assert_eq!(
        c.call(&Request::Store(text), None).await,
        Ok(Reply::Str(DEP.into()))
    );
    let drv = added(
        c.add("golden.drv", "text:sha256", &[DEP], DRV_TEXT.as_bytes())
            .await,
    );
    assert_eq!(drv.path.as_str(), DRV);
    assert_eq!(
        drv.references
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>(),
        [DEP]
    );
    let h = Sha256Hash::digest(DRV_TEXT.as_bytes());
    assert_eq!(drv.ca, Some(format!("text:{}", h.to_nix32_prefixed())));
    assert!(!drv.sigs.is_empty(), "public, signed by the relay");
    // nix-store --add-fixed sha256 hello.txt, and --recursive (a NAR).
    let flat = added(
        c.add("hello.txt", "fixed:sha256", &[], b"hello relay\n")
            .await,
    );
    assert_eq!(
        flat.path.as_str(),
        "/nix/store/9snxcn6mvl8ynjsxpy4rn31wd655hyws-hello.txt"
    );
    let nar = encode_nar(&NarNode::Regular {
        executable: false,
        contents: b"hello relay\n".to_vec(),
    });
    let rec = added(c.add("hello.txt", "fixed:r:sha256", &[], &nar).await);
    assert_eq!(
        rec.path.as_str(),
        "/nix/store/58s8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.txt"
    );
    assert_eq!(rec.nar_hash, Sha256Hash::digest(&nar));
    // The stored NAR of a flat add is the single-file NAR Nix stores.
    let info = t.stored(&flat.path).await.unwrap();
    assert_eq!(
        (info.nar_hash, info.nar_size),
        (Sha256Hash::digest(&nar), nar.len() as u64)
    );
    // Refused by name, the session goes on.
    let e = c.add("x", "fixed:sha1", &[], b"x").await.unwrap_err();
    assert!(e.contains("sha1") && e.contains("only sha256"), "{e}");
    let e = c
        .add("x", "fixed:r:sha256", &[], b"not a NAR")
        .await
        .unwrap_err();
    assert!(e.contains("NAR"), "{e}");
    let e = c.add("x", "fixed:sha256", &[DEP], b"x").await.unwrap_err();
    assert!(e.contains("cannot have references"), "{e}");
    c.alive().await;
}

#[tokio::test]
async fn an_untrusted_clients_ca_path_is_public_over_public_references() {
    let t = relay().await;
    let mut eve = Raw::open(&t, "eve", false).await;
    let dep = StoreOp::AddTextToStore {
        name: "dep.txt".into(),
        text: b"dep".to_vec(),
        refs: vec![],
    };
    assert_eq!(
        eve.call(&Request::Store(dep), None).await,
        Ok(Reply::Str(DEP.into()))
    );
    assert!(t.stored(&sp(DEP)).await.is_some(), "self-verifying: public");
}

#[tokio::test]
async fn reverse_queries_answer_from_the_store() {
    let t = relay().await;
    let mut c = Raw::open(&t, "alice", true).await;
    let dep = StoreOp::AddTextToStore {
        name: "dep.txt".into(),
        text: b"dep".to_vec(),
        refs: vec![],
    };
    c.call(&Request::Store(dep), None).await.unwrap();
    added(
        c.add("golden.drv", "text:sha256", &[DEP], DRV_TEXT.as_bytes())
            .await,
    );
    let hash = sp(DRV).hash_part().to_owned();
    let q = Request::QueryPathFromHashPart { hash_part: hash };
    assert_eq!(c.call(&q, None).await, Ok(Reply::Str(DRV.into())));
    let q = Request::QueryPathFromHashPart {
        hash_part: "0".repeat(32),
    };
    assert_eq!(c.call(&q, None).await, Ok(Reply::Str(String::new())));
    let q = Request::QueryReferrers { path: sp(DEP) };
    assert_eq!(c.call(&q, None).await, Ok(Reply::Paths(vec![sp(DRV)])));
    let q = Request::Store(StoreOp::QueryAllValidPaths);
    let mut all = vec![sp(DEP), sp(DRV)];
    all.sort();
    assert_eq!(c.call(&q, None).await, Ok(Reply::Paths(all)));
    let q = Request::Store(StoreOp::QueryDeriver { path: sp(DRV) });
    assert_eq!(c.call(&q, None).await, Ok(Reply::Str(String::new())));
    let q = Request::QueryValidDerivers { path: sp(DRV) };
    assert_eq!(c.call(&q, None).await, Ok(Reply::Paths(vec![])));
}

#[tokio::test]
async fn unsupported_ops_are_refused_by_name_and_the_session_goes_on() {
    let t = relay().await;
    let mut c = Raw::open(&t, "alice", true).await;
    let p = sp(DEP);
    let refused = [
        (StoreOp::FindRoots, "FindRoots"),
        (StoreOp::OptimiseStore, "OptimiseStore"),
        (
            StoreOp::VerifyStore {
                check_contents: true,
                repair: false,
            },
            "VerifyStore",
        ),
        (
            StoreOp::QueryDerivationOutputNames { path: p.clone() },
            "QueryDerivationOutputNames",
        ),
        (
            StoreOp::QueryDerivationOutputs { path: p.clone() },
            "QueryDerivationOutputs",
        ),
    ];
    for (op, name) in refused {
        let e = c.call(&Request::Store(op), None).await.unwrap_err();
        assert!(e.contains(name) && e.contains("does not support"), "{e}");
        c.alive().await;
    }
    let gc = |action| GcRequest {
        action,
        paths: vec![],
        ignore_liveness: false,
        max_freed: u64::MAX,
    };
    let e = c
        .call(
            &Request::Store(StoreOp::CollectGarbage(gc(GC_RETURN_LIVE))),
            None,
        )
        .await;
    assert!(e.unwrap_err().contains("collect garbage"));
    let r = c
        .call(
            &Request::Store(StoreOp::CollectGarbage(gc(GC_DELETE_DEAD))),
            None,
        )
        .await;
    assert_eq!(
        r,
        Ok(Reply::Gc {
            paths: vec![],
            bytes_freed: 0
        })
    );
    assert!(c.said.concat().contains("nothing deleted"), "{:?}", c.said);
    let r = c.call(&Request::Store(StoreOp::SyncWithGc), None).await;
    assert_eq!(r, Ok(Reply::Ack));
    c.alive().await;
    // An op number nobody knows cannot be skipped: named, then the end.
    c.w.write_all(&99u64.to_le_bytes()).await.unwrap();
    let mut err = None;
    let end = read_stderr_stream(&mut c.r, c.codec.version, &Limits::default(), |_| Ok(())).await;
    if let Ok(StderrEnd::Error(e)) = end {
        err = Some(String::from_utf8_lossy(&e.message).into_owned());
    }
    assert!(err.as_deref().unwrap_or("").contains("99"), "{err:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), c.session).await;
    assert!(ended.expect("session ends").unwrap().is_err());
}

#[tokio::test]
async fn temp_roots_pin_paths_against_eviction_while_the_session_lasts() {
    let t = relay().await;
    let mut c = Raw::open(&t, "alice", true).await;
    let dep = StoreOp::AddTextToStore {
        name: "dep.txt".into(),
        text: b"dep".to_vec(),
        refs: vec![],
    };
    c.call(&Request::Store(dep), None).await.unwrap();
    added(
        c.add("golden.drv", "text:sha256", &[DEP], DRV_TEXT.as_bytes())
            .await,
    );
    assert_eq!(
        c.call(&Request::AddTempRoot { path: sp(DEP) }, None).await,
        Ok(Reply::Ack)
    );
    t.relay.store().evict_to(0).unwrap();
    assert!(t.stored(&sp(DEP)).await.is_some(), "rooted: kept");
    assert!(t.stored(&sp(DRV)).await.is_none(), "not rooted: evicted");
    c.w.shutdown().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), c.session).await;
    ended.expect("session ends at EOF").unwrap().unwrap();
    t.relay.store().evict_to(0).unwrap();
    assert!(
        t.stored(&sp(DEP)).await.is_none(),
        "the root ended with the session"
    );
    // Permanent roots are for trusted clients, as in Nix.
    let mut eve = Raw::open(&t, "eve", false).await;
    let perm = Request::AddPermRoot {
        path: sp(DEP),
        gc_root: "/tmp/r".into(),
    };
    assert!(
        eve.call(&perm, None)
            .await
            .unwrap_err()
            .contains("not privileged")
    );
    eve.alive().await;
}

#[tokio::test]
async fn build_logs_are_stored_and_served_to_real_nix_log() {
    let t = relay().await;
    let mut eve = Raw::open(&t, "eve", false).await;
    let add_log = Request::AddBuildLog { drv_path: sp(DRV) };
    let e = eve.call(&add_log, Some(b"forged")).await.unwrap_err();
    assert!(e.contains("not privileged to add build logs"), "{e}");
    eve.alive().await;
    let mut c = Raw::open(&t, "alice", true).await;
    let log = "building golden\nhello from the builder\n".repeat(50);
    assert_eq!(c.call(&add_log, Some(log.as_bytes())).await, Ok(Reply::Ack));
    let stored = t.relay.store().build_log(&sp(DRV), None).await.unwrap();
    assert_eq!(stored.as_deref(), Some(log.as_bytes()));
    // The .drv itself, so `nix log` can read it from the cache.
    let dep = StoreOp::AddTextToStore {
        name: "dep.txt".into(),
        text: b"dep".to_vec(),
        refs: vec![],
    };
    c.call(&Request::Store(dep), None).await.unwrap();
    added(
        c.add("golden.drv", "text:sha256", &[DEP], DRV_TEXT.as_bytes())
            .await,
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = tokio::spawn(serve(
        listener,
        router(HttpState::new(t.relay.store().root())),
    ));
    let home = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "log"])
        .args(["--option", "substituters", ""])
        .arg("--store")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(DRV)
        .env("HOME", home.path())
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .unwrap()
        .expect("nix");
    http.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nix log failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        log,
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn a_nix_2_3_client_adds_a_nar_hashed_path_and_is_told_why_not_a_flat_one() {
    let t = relay().await;
    let mut c = Raw::open_at(&t, "old", true, WorkerVersion::new(1, 21)).await;
    let nar = encode_nar(&NarNode::Regular {
        executable: false,
        contents: b"hello relay\n".to_vec(),
    });
    let add = |fixed, recursive| {
        Request::AddToStoreLegacy(LegacyAddToStore {
            base_name: "hello.txt".into(),
            fixed,
            recursive,
            hash_algo: "sha256".into(),
        })
    };
    // nix-store --add hello.txt (Nix 2.3 sends fixed = false).
    let r = c.call_with(&add(false, false), Some(&nar), false).await;
    assert_eq!(
        r,
        Ok(Reply::Str(
            "/nix/store/58s8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.txt".into()
        ))
    );
    let r = c.call_with(&add(true, true), Some(&nar), false).await;
    assert_eq!(
        r,
        Ok(Reply::Str(
            "/nix/store/58s8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.txt".into()
        ))
    );
    let e = c
        .call_with(&add(true, false), Some(&nar), false)
        .await
        .unwrap_err();
    assert!(e.contains("flat fixed-output"), "{e}");
    c.alive().await;
}
