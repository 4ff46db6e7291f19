//! The binary-cache server over a real socket, with a minimal HTTP/1.1
//! client (one request per connection, `Connection: close`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

const HASH: &str = "0123456789abcdfghijklmnpqrsvwxyz";
const MISSING_HASH: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
const NAR_HASH: &str = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
const ZST_HASH: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
const NAR_SIZE: usize = 5 << 20;
const NARINFO: &str = "StorePath: /nix/store/0123456789abcdfghijklmnpqrsvwxyz-x\n";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| v.parse().unwrap())
    }
}

/// Sends one request and reads the whole reply until the server closes.
async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| l.split_once(": ").unwrap())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    request(addr, "GET", target).await
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Deterministic bytes that are not a repeating short pattern.
fn nar_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A store with one public entry and secrets in every hidden directory.
fn populate(root: &Path) {
    write(root, &format!("{HASH}.narinfo"), NARINFO.as_bytes());
    write(root, &format!("nar/{NAR_HASH}.nar"), &nar_bytes(NAR_SIZE));
    write(root, &format!("nar/{ZST_HASH}.nar.zst"), b"zstd bytes");
    write(root, "meta/x", b"secret provenance");
    write(root, &format!("meta/{HASH}.narinfo"), b"secret");
    write(root, &format!("private/{MISSING_HASH}.narinfo"), b"secret");
    write(root, &format!("private/nar/{NAR_HASH}.nar"), b"secret");
    write(root, &format!("tmp/{NAR_HASH}.nar"), b"in progress");
}

struct Server {
    root: tempfile::TempDir,
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_with(setup: impl FnOnce(&Path)) -> Server {
    let root = tempfile::tempdir().unwrap();
    setup(root.path());
    let hits = Arc::new(Mutex::new(Vec::new()));
    let sink = hits.clone();
    let state = HttpState {
        root: root.path().to_owned(),
        on_narinfo_hit: Some(Arc::new(move |h: &str| {
            sink.lock().unwrap().push(h.to_owned())
        })),
        upstream: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, router(state)));
    Server {
        root,
        addr,
        hits,
        task,
    }
}

async fn start() -> Server {
    start_with(populate).await
}

#[tokio::test]
async fn narinfo_is_served_with_type_and_length() {
    let s = start().await;
    let r = get(s.addr, &format!("/{HASH}.narinfo")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/x-nix-narinfo"));
    assert_eq!(r.content_length(), Some(NARINFO.len()));
    assert_eq!(r.body, NARINFO.as_bytes());
}

#[tokio::test]
async fn missing_narinfo_is_404_with_a_short_body() {
    let s = start().await;
    let r = get(s.addr, &format!("/{MISSING_HASH}.narinfo")).await;
    assert_eq!(r.status, 404);
    assert!(!r.body.is_empty() && r.body.len() < 100);
}

#[tokio::test]
async fn narinfo_hit_hook_gets_the_hash_part_only_on_hits() {
    let s = start().await;
    get(s.addr, &format!("/{HASH}.narinfo")).await;
    request(s.addr, "HEAD", &format!("/{HASH}.narinfo")).await;
    get(s.addr, &format!("/{MISSING_HASH}.narinfo")).await;
    get(s.addr, "/xyz.narinfo").await;
    assert_eq!(
        *s.hits.lock().unwrap(),
        vec![HASH.to_owned(), HASH.to_owned()]
    );
}

#[tokio::test]
async fn large_nar_streams_intact() {
    let s = start().await;
    let r = get(s.addr, &format!("/nar/{NAR_HASH}.nar")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-nix-nar"));
    assert_eq!(r.content_length(), Some(NAR_SIZE));
    assert!(r.header("transfer-encoding").is_none());
    assert!(r.body == nar_bytes(NAR_SIZE), "body differs");
}

#[tokio::test]
async fn compressed_nar_is_served_as_a_nar() {
    let s = start().await;
    let r = get(s.addr, &format!("/nar/{ZST_HASH}.nar.zst")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-nix-nar"));
    assert_eq!(r.body, b"zstd bytes");
    let xz = get(s.addr, &format!("/nar/{ZST_HASH}.nar.xz")).await;
    assert_eq!(xz.status, 404);
}

#[tokio::test]
async fn head_has_the_get_headers_and_no_body() {
    let s = start().await;
    for target in [
        format!("/{HASH}.narinfo"),
        format!("/nar/{NAR_HASH}.nar"),
        "/nix-cache-info".to_owned(),
        "/healthz".to_owned(),
    ] {
        let g = get(s.addr, &target).await;
        let h = request(s.addr, "HEAD", &target).await;
        assert_eq!(h.status, 200, "{target}");
        assert_eq!(
            h.header("content-type"),
            g.header("content-type"),
            "{target}"
        );
        assert_eq!(h.content_length(), Some(g.body.len()), "{target}");
        assert!(h.body.is_empty(), "{target}");
    }
    let missing = request(s.addr, "HEAD", &format!("/{MISSING_HASH}.narinfo")).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
}

#[tokio::test]
async fn default_cache_info_when_the_file_is_absent() {
    let s = start().await;
    let r = get(s.addr, "/nix-cache-info").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/x-nix-cache-info"));
    assert_eq!(r.body, DEFAULT_CACHE_INFO.as_bytes());
    assert_eq!(r.content_length(), Some(DEFAULT_CACHE_INFO.len()));
}

#[tokio::test]
async fn cache_info_file_overrides_the_default() {
    let info = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n";
    let s = start_with(|root| write(root, "nix-cache-info", info.as_bytes())).await;
    let r = get(s.addr, "/nix-cache-info").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/x-nix-cache-info"));
    assert_eq!(r.body, info.as_bytes());
}

#[tokio::test]
async fn healthz_says_ok() {
    let s = start().await;
    let r = get(s.addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok\n".as_slice()));
}

#[tokio::test]
async fn hidden_directories_and_traversal_are_404() {
    let s = start().await;
    let targets = [
        "/meta/x".to_owned(),
        format!("/meta/{HASH}.narinfo"),
        format!("/private/{MISSING_HASH}.narinfo"),
        format!("/private/nar/{NAR_HASH}.nar"),
        format!("/tmp/{NAR_HASH}.nar"),
        "/nar/../meta/x".to_owned(),
        format!("/nar/../{HASH}.narinfo"),
        "/%2e%2e/meta/x".to_owned(),
        "/%2e%2e%2fmeta%2fx".to_owned(),
        "/nar/%2e%2e%2fmeta%2fx".to_owned(),
        format!("/nar/..%2ftmp%2f{NAR_HASH}.nar"),
        format!("/nar/%2e%2e%2f{HASH}.narinfo"),
        format!("/meta%2f{HASH}.narinfo"),
        format!("/nar/{NAR_HASH}.nar/"),
        format!("/nar/{NAR_HASH}.nar%00"),
        "/meta".to_owned(),
        "/nar".to_owned(),
        "/nar/".to_owned(),
        "/tmp".to_owned(),
        "/private".to_owned(),
        "/".to_owned(),
    ];
    for target in &targets {
        let r = get(s.addr, target).await;
        assert_eq!(r.status, 404, "{target}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("secret"),
            "{target}"
        );
    }
}

#[tokio::test]
async fn malformed_names_are_404() {
    let s = start().await;
    let upper = HASH.to_uppercase();
    let targets = [
        format!("/{}.narinfo", &HASH[1..]),
        format!("/{HASH}0.narinfo"),
        format!("/e{}.narinfo", &HASH[1..]),
        format!("/{upper}.narinfo"),
        format!("/{HASH}.narinfo.bak"),
        format!("/{HASH}"),
        format!("/nar/{}.nar", &NAR_HASH[1..]),
        format!("/nar/{NAR_HASH}0.nar"),
        format!("/nar/u{}.nar", &NAR_HASH[1..]),
        format!("/nar/{NAR_HASH}.nar.gz"),
        format!("/nar/{NAR_HASH}.narinfo"),
        format!("/nar/{NAR_HASH}"),
        format!("/nar/{HASH}.narinfo"),
        format!("/{NAR_HASH}.nar"),
        "/nix-cache-info/x".to_owned(),
        "/healthz/".to_owned(),
    ];
    for target in &targets {
        assert_eq!(get(s.addr, target).await.status, 404, "{target}");
    }
    assert!(s.hits.lock().unwrap().is_empty());
}

#[tokio::test]
async fn directory_where_a_file_should_be_is_404() {
    let s = start().await;
    std::fs::create_dir(s.root.path().join(format!("{MISSING_HASH}.narinfo"))).unwrap();
    let r = get(s.addr, &format!("/{MISSING_HASH}.narinfo")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn io_errors_other_than_not_found_are_500() {
    // `nar` is a file, so opening `nar/<file>` fails with ENOTDIR (even as root).
    let s = start_with(|root| write(root, "nar", b"not a directory")).await;
    let r = get(s.addr, &format!("/nar/{NAR_HASH}.nar")).await;
    assert_eq!(r.status, 500);
    assert!(!r.body.is_empty() && r.body.len() < 100);
}

#[test]
fn name_validation_accepts_exactly_the_cache_shapes() {
    assert_eq!(narinfo_hash(&format!("{HASH}.narinfo")), Some(HASH));
    assert_eq!(narinfo_hash(HASH), None);
    assert_eq!(narinfo_hash("../x.narinfo"), None);
    for suffix in [".nar", ".nar.zst", ".nar.xz"] {
        let name = format!("{NAR_HASH}{suffix}");
        assert_eq!(nar_file_name(&name), Some(name.as_str()));
    }
    assert_eq!(nar_file_name(&format!("{NAR_HASH}.nar.bz2")), None);
    assert_eq!(nar_file_name(&format!("é{}.nar", &NAR_HASH[2..])), None);
    assert_eq!(nar_file_name(""), None);
}
