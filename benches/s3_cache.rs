//! The cache on S3 against the cache on disk, same run, print-only (issue
//! 18): narinfo latency p50/p99 and NAR MiB/s over the relay's HTTP cache.
//!
//!   cargo test --bench s3_cache --features nix-relay/testing [-- --small N --big N --big-mib M]
//!
//! moto (a Python S3 server, tests/setup.sh installs it) on loopback; two
//! in-process relays (the `testing` rig, a fake backend) on one bucket.
//! Relay A builds `--small` small outputs and `--big` incompressible
//! `--big-mib` MiB ones and mirrors them to the bucket; relay B starts with
//! an empty local store. Then, over each relay's HTTP cache (a fresh TCP
//! connection per GET, one request at a time):
//! * disk: A serves its local files;
//! * s3 cold: B's first GET of a narinfo pulls the entry (narinfo and NAR,
//!   verified) from the bucket into its store, then serves it;
//! * s3 warm: B again, the entry now local.
//!
//! The cold figures are moto's (single-process Python, objects in memory),
//! not those of MinIO, Garage or AWS. Exit status 0 when it ran.

#[path = "../tests/s3_moto/moto.rs"]
mod moto;

use std::time::{Duration, Instant};

use nix_relay::config::Protocol;
use nix_relay::outbound::{BaseUrl, Client};
use nix_relay::testing::drv;
use nix_relay::testing::fake::Script;
use nix_relay::testing::harness::{SYSTEM, TestRelay, fake_backend};
use nix_relay::wire::nar::NarNode;
use nix_relay::wire::store_path::StorePath;

/// Bounds for one GET (loopback; moto can be slow on a busy machine).
const STALL: Duration = Duration::from_secs(60);
const MAX_BODY: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(120);

struct Args {
    small: usize,
    big: usize,
    big_mib: usize,
}

fn parse() -> Args {
    let mut a = Args {
        small: 200,
        big: 3,
        big_mib: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> usize {
            let v = it.next().and_then(|v| v.parse().ok());
            v.unwrap_or_else(|| panic!("s3_cache: {k} needs a number"))
        };
        match k.as_str() {
            "--small" => a.small = num(),
            "--big" => a.big = num(),
            "--big-mib" => a.big_mib = num(),
            "--bench" => {}
            _ => panic!("usage: s3_cache [--small N] [--big N] [--big-mib M]"),
        }
    }
    a
}

/// `n` bytes that zstd cannot shrink (xorshift64 from `seed`).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn relay_on(m: &moto::Moto, trust: Option<String>) -> TestRelay {
    let trust = trust.map_or(String::new(), |k| {
        format!("trusted_public_keys = [\"{k}\"]\n")
    });
    let config = format!(
        "{}\n[cache]\nstore = \"{}\"\n{trust}",
        fake_backend("a", "fake://a", ""),
        m.url("bench"),
    );
    TestRelay::start(&config, &[("a", Script::default())]).await
}

/// Builds `name` through `t` (its output `node`, or the fake's default)
/// and copies it out, so the relay stores it.
async fn build(t: &TestRelay, name: &str, node: Option<NarNode>) -> StorePath {
    let script = node.map_or(Script::default(), |n| Script::default().output("out", n));
    t.fake("a").set_script(script);
    let (drv_path, d) = drv::derivation(name, SYSTEM, &[]);
    let out = drv::out_path(&d);
    let mut c = t.client(Protocol::Serve, "bench").await;
    let res = c.build(&drv_path, &d).await.expect("build");
    assert!(res.status.is_success(), "{name}: {:?}", res.status);
    c.fetch(&out).await.expect("copying the output out");
    c.close().await.expect("closing the session");
    t.wait_stored(&out, WAIT).await;
    out
}

/// The relay's HTTP cache on 127.0.0.1 (as `nix-relay serve` sets it up).
async fn serve(t: &TestRelay) -> BaseUrl {
    let store = t.relay.store().clone();
    let state = nix_relay::http::HttpState {
        root: store.root().to_owned(),
        on_narinfo_hit: None,
        upstream: t.relay.upstream().cloned(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = nix_relay::http::router(state);
    tokio::spawn(nix_relay::http::serve(listener, router));
    BaseUrl {
        https: false,
        host: "127.0.0.1".into(),
        port,
        path: String::new(),
    }
}

/// GET `rel`: its body (200 required) and how long it took.
async fn get(client: &Client, base: &BaseUrl, rel: &str) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let reply = client.get(base, rel).await.expect("GET");
    assert_eq!(reply.status, 200, "GET {rel}");
    let body = reply.bytes(MAX_BODY, STALL).await.expect("reading a body");
    (body, t0.elapsed())
}

fn nar_url(narinfo: &[u8]) -> String {
    let text = String::from_utf8_lossy(narinfo);
    let url = text.lines().find_map(|l| l.strip_prefix("URL: "));
    url.expect("a narinfo has a URL").to_owned()
}

/// Narinfo GET latencies for `paths`, sorted.
async fn narinfos(client: &Client, base: &BaseUrl, paths: &[StorePath]) -> Vec<Duration> {
    let mut out = Vec::new();
    for p in paths {
        out.push(
            get(client, base, &format!("{}.narinfo", p.hash_part()))
                .await
                .1,
        );
    }
    out.sort();
    out
}

/// MiB/s over `paths`: narinfo GET (a cold one pulls the entry) + NAR GET.
async fn nars(client: &Client, base: &BaseUrl, paths: &[StorePath]) -> f64 {
    let (mut bytes, mut took) = (0, Duration::ZERO);
    for p in paths {
        let (ni, t1) = get(client, base, &format!("{}.narinfo", p.hash_part())).await;
        let (nar, t2) = get(client, base, &nar_url(&ni)).await;
        bytes += nar.len();
        took += t1 + t2;
    }
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args = parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let Some(m) = moto::moto() else { return };
    nix_relay::s3::use_test_credentials("testing", "testing");
    m.bucket("bench").await;
    let t0 = Instant::now();
    let a = relay_on(&m, None).await;
    let mut small = Vec::new();
    for i in 0..args.small {
        small.push(build(&a, &format!("s3-small-{i}"), None).await);
    }
    let mut big = Vec::new();
    for i in 0..args.big {
        let contents = noise(args.big_mib << 20, i as u64 + 1);
        let node = NarNode::Regular {
            executable: false,
            contents,
        };
        big.push(build(&a, &format!("s3-big-{i}"), Some(node)).await);
    }
    let up = a.relay.upstream().and_then(|u| u.mirror().cloned());
    up.expect("relay A mirrors to the bucket").flushed().await;
    let filled = t0.elapsed();
    let key = a.relay.store().settings().signer.clone().unwrap();
    let b = relay_on(&m, Some(key.public().to_string())).await;
    let (url_a, url_b) = (serve(&a).await, serve(&b).await);
    let client = Client::new(Duration::from_secs(10));
    // One request to each server first: no first-request set-up measured.
    get(&client, &url_a, "nix-cache-info").await;
    get(&client, &url_b, "nix-cache-info").await;
    let disk = narinfos(&client, &url_a, &small).await;
    let cold = narinfos(&client, &url_b, &small).await;
    let warm = narinfos(&client, &url_b, &small).await;
    let nar_disk = nars(&client, &url_a, &big).await;
    let nar_cold = nars(&client, &url_b, &big).await;
    let nar_warm = nars(&client, &url_b, &big).await;
    report(
        &args,
        filled,
        [&disk, &cold, &warm],
        [nar_disk, nar_cold, nar_warm],
    );
}

fn report(args: &Args, filled: Duration, lat: [&Vec<Duration>; 3], mib_s: [f64; 3]) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "s3_cache: {} small + {} x {} MiB entries; relay A filled and mirrored in {:.1} s; load {load}",
        args.small,
        args.big,
        args.big_mib,
        filled.as_secs_f64()
    );
    println!("mode      narinfo p50 ms  p99 ms   NAR MiB/s");
    for (i, mode) in ["disk", "s3 cold", "s3 warm"].iter().enumerate() {
        let (p50, p99) = (pct(lat[i], 0.5), pct(lat[i], 0.99));
        println!("{mode:<9} {p50:>14.2} {p99:>7.2} {:>11.1}", mib_s[i]);
    }
    let ratio = |i: usize| {
        let p99 = pct(lat[i], 0.99) / pct(lat[0], 0.99);
        format!("p99 x{p99:.1}, NAR MiB/s x{:.2}", mib_s[i] / mib_s[0])
    };
    println!("s3 cold / disk: {}", ratio(1));
    println!("s3 warm / disk: {}", ratio(2));
    println!("(cold = pulled from moto, a Python S3 server: its figures, not MinIO's or AWS's)");
}
