//! The signer against AWS's SigV4 test suite (`tests/aws-sigv4/`).

use std::path::Path;

use super::creds::Credentials;
use super::sigv4::{Request, Scope, canonical_query, sha256_hex, uri_encode};

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap();
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

struct Case {
    request: Request,
    creds: Credentials,
    region: String,
    service: String,
    now: std::time::SystemTime,
}

fn load(dir: &Path) -> Case {
    let ctx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap()).unwrap();
    let raw = std::fs::read_to_string(dir.join("request.txt")).unwrap();
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
    // the path may hold spaces: METHOD <path…> HTTP/1.1
    let target = first[1..first.len() - 1].join(" ");
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = (query.split('&').filter(|p| !p.is_empty()))
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut headers: Vec<(String, String)> = (lines.map(|l| l.split_once(':').unwrap()))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let payload_sha256 = sha256_hex(body.as_bytes());
    if ctx["sign_body"] == true {
        headers.push(("X-Amz-Content-Sha256".into(), payload_sha256.clone()));
    }
    let c = &ctx["credentials"];
    Case {
        request: Request {
            method: first[0].to_owned(),
            path: percent_decode(path),
            query,
            headers,
            payload_sha256,
        },
        creds: Credentials {
            access_key_id: c["access_key_id"].as_str().unwrap().to_owned(),
            secret_access_key: c["secret_access_key"].as_str().unwrap().to_owned(),
            session_token: c["token"].as_str().map(str::to_owned),
            expires: None,
        },
        region: ctx["region"].as_str().unwrap().to_owned(),
        service: ctx["service"].as_str().unwrap().to_owned(),
        now: super::time::parse_iso8601(ctx["timestamp"].as_str().unwrap()).unwrap(),
    }
}

fn expected(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[test]
fn every_aws_test_vector_signs_to_the_published_signature() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws-sigv4");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 30, "the vectors in {}", root.display());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut case = load(&dir);
        let scope = Scope {
            region: &case.region,
            service: &case.service,
        };
        let signed = case.request.sign(&case.creds, scope, case.now);
        assert_eq!(
            signed.canonical_request,
            expected(&dir, "header-canonical-request.txt"),
            "{name}: canonical request"
        );
        assert_eq!(
            signed.string_to_sign,
            expected(&dir, "header-string-to-sign.txt"),
            "{name}: string to sign"
        );
        let signed = expected(&dir, "header-signed-request.txt");
        let want = (signed.lines())
            .find_map(|l| l.strip_prefix("Authorization:"))
            .unwrap();
        let got = &case.request.headers.last().unwrap();
        assert_eq!(got.0, "Authorization", "{name}");
        assert_eq!(got.1, want.trim(), "{name}: Authorization");
        assert!(
            got.1
                .ends_with(expected(&dir, "header-signature.txt").trim()),
            "{name}: signature"
        );
    }
}

#[test]
fn uri_encoding_keeps_only_unreserved_characters() {
    assert_eq!(
        uri_encode("a-b_c.d~e/f g+h=ሴ", false),
        "a-b_c.d~e%2Ff%20g%2Bh%3D%E1%88%B4"
    );
    assert_eq!(uri_encode("/a b/", true), "/a%20b/");
}

#[test]
fn query_pairs_sort_after_encoding() {
    let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let q = [p("b", "2"), p("a", "x y"), p("A", "1"), p("a", "w")];
    assert_eq!(canonical_query(&q), "A=1&a=w&a=x%20y&b=2");
}
