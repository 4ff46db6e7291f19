//! The tee through [`NarWriter::pump`]: the client's copy and the store
//! side ([`super::spool`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::Digest;
use tokio::io::{AsyncWrite, BufReader};

use super::spool::{CHUNK_BYTES, Gate, QUEUE_CHUNKS};
use super::tests::{file_nar, info_for, path, read_back, uploaded};
use super::*;
use crate::wire::hash::Sha256Hash;

/// A client that takes every byte at once and keeps them.
#[derive(Clone, Default)]
struct Client(Arc<Mutex<Vec<u8>>>);

impl Client {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Opens the gate when dropped: a failing test must not leave the store
/// side waiting (the runtime's shutdown would wait for it).
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open(usize::MAX / 2);
    }
}

/// Tees `nar` (read in `CHUNK_BYTES` pieces) to `client` and commits it.
async fn tee(store: Store, nar: Arc<Vec<u8>>, client: Client) -> Result<ValidPathInfo, Error> {
    let p = path("teed");
    let mut w = store.begin(NarLimits::default()).await?;
    let mut r = BufReader::with_capacity(CHUNK_BYTES, &nar[..]);
    let mut c = client;
    w.pump(&mut r, Some(&mut c), &p).await?;
    let info = info_for(&p, &nar, &[]);
    w.commit(info, Verify::Declared, &Scope::Public, &uploaded())
        .await
}

#[tokio::test]
async fn the_client_gets_every_byte_and_the_entry_is_verified_in_every_compression() {
    let nar = Arc::new(file_nar(&vec![9u8; 3 * CHUNK_BYTES + 12345]));
    for c in [Compression::Zstd, Compression::Xz, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            compression: c,
            ..Default::default()
        };
        let store = Store::open(dir.path(), settings).unwrap();
        let client = Client::default();
        let info = tee(store.clone(), nar.clone(), client.clone())
            .await
            .unwrap();
        assert!(client.bytes() == *nar, "{c:?}: the client's copy differs");
        assert_eq!(info.nar_hash, Sha256Hash::digest(&nar), "{c:?}");
        let p = path("teed");
        assert!(
            read_back(&store, &p, None).await == *nar,
            "{c:?}: stored copy"
        );
        let n = store.narinfo(&p, None).await.unwrap().unwrap();
        assert_eq!((n.nar_hash, n.nar_size), (info.nar_hash, nar.len() as u64));
        let file = std::fs::read(dir.path().join(&n.url)).unwrap();
        let file_hash = Sha256Hash(sha2::Sha256::digest(&file).into());
        assert_eq!(n.file_hash, Some(file_hash), "{c:?}: FileHash");
        assert_eq!(n.file_size, Some(file.len() as u64), "{c:?}: FileSize");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}

/// The store side held back: the client gets each chunk before the store
/// side's queue takes it, so it is exactly a queue plus one chunk ahead,
/// and no further; released, everything completes and is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_side_behind_holds_the_client_one_queue_ahead_then_all_completes() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let store = Store::open(dir.path(), Settings::default())
        .unwrap()
        .gated(gate.clone());
    let _open = OpenOnDrop(gate.clone());
    let nar = Arc::new(file_nar(&vec![7u8; 40 * CHUNK_BYTES]));
    let client = Client::default();
    let teeing = tokio::spawn(tee(store.clone(), nar.clone(), client.clone()));
    let ahead = (QUEUE_CHUNKS + 1) * CHUNK_BYTES;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.len() < ahead {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tee stalled early"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Time for a tee that does not wait to run on (not a timed assertion:
    // a correct one stays put however long this takes).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.len(), ahead, "the client ran ahead of the bound");
    assert!(!teeing.is_finished());
    gate.open(usize::MAX / 2);
    let info = tokio::time::timeout(Duration::from_secs(10), teeing)
        .await
        .expect("the tee hung after the store side was released")
        .unwrap()
        .unwrap();
    assert!(client.bytes() == *nar);
    assert_eq!(info.nar_hash, Sha256Hash::digest(&nar));
    assert!(read_back(&store, &path("teed"), None).await == *nar);
}

#[tokio::test]
async fn an_abandoned_tee_leaves_no_entry_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Settings::default()).unwrap();
    let nar = file_nar(&vec![1u8; 2 * CHUNK_BYTES]);
    let p = path("teed");
    let mut w = store.begin(NarLimits::default()).await.unwrap();
    let mut client = Client::default();
    let mut r = &nar[..CHUNK_BYTES];
    let e = w.pump(&mut r, Some(&mut client), &p).await.unwrap_err();
    assert!(e.to_string().contains("streaming the NAR"), "{e}");
    drop(w);
    assert!(store.narinfo(&p, None).await.unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
