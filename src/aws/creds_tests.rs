//! The credential chain: each source, its order, its refusals, and the
//! refresh of expiring credentials (metadata endpoints faked on loopback).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::Error;
use super::creds::{Env, Provider, REFRESH_BEFORE, load};
use super::fake_http;

const NO_IMDS: (&str, &str) = ("AWS_EC2_METADATA_DISABLED", "true");

fn env_with(home: &std::path::Path, more: &[(&str, &str)]) -> Env {
    let home = home.to_str().unwrap();
    Env::from_pairs([("HOME", home)].into_iter().chain(more.iter().copied()))
}

fn write(dir: &std::path::Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test]
async fn environment_variables_come_first() {
    let home = tempfile::tempdir().unwrap();
    write(
        home.path(),
        ".aws/credentials",
        "[default]\naws_access_key_id = FILE\naws_secret_access_key = f\n",
    );
    let env = env_with(
        home.path(),
        &[
            ("AWS_ACCESS_KEY_ID", "ENV"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_SESSION_TOKEN", "t"),
        ],
    );
    let c = load(&env).await.unwrap();
    assert_eq!(
        (c.access_key_id.as_str(), c.session_token.as_deref()),
        ("ENV", Some("t"))
    );
    let half = env_with(home.path(), &[("AWS_ACCESS_KEY_ID", "ENV")]);
    let e = load(&half).await.unwrap_err();
    assert!(e.to_string().contains("environment"), "{e}");
}

#[tokio::test]
async fn the_named_profile_from_the_shared_files() {
    let home = tempfile::tempdir().unwrap();
    write(
        home.path(),
        ".aws/config",
        "[default]\nregion = eu-central-1\n\n[profile relay]\nregion = x\naws_access_key_id = FROM_CONFIG\naws_secret_access_key = c\ns3 =\n  max_concurrent_requests = 4\n",
    );
    write(
        home.path(),
        ".aws/credentials",
        "# comment\n[relay]\naws_access_key_id = FROM_CREDENTIALS\naws_secret_access_key = k\naws_session_token = tok\n",
    );
    let env = env_with(home.path(), &[("AWS_PROFILE", "relay")]);
    let c = load(&env).await.unwrap();
    assert_eq!(
        c.access_key_id, "FROM_CREDENTIALS",
        "the credentials file wins"
    );
    assert_eq!(c.session_token.as_deref(), Some("tok"));
    // the default profile has only a region: on to the next sources
    let e = load(&env_with(home.path(), &[NO_IMDS])).await.unwrap_err();
    assert!(matches!(e, Error::NoCredentials { .. }), "{e}");
    assert!(
        e.to_string().contains("shared credentials/config files"),
        "{e}"
    );
}

#[tokio::test]
async fn shared_file_paths_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "creds",
        "[default]\naws_access_key_id = ELSEWHERE\naws_secret_access_key = k\n",
    );
    let f = dir.path().join("creds");
    let env = Env::from_pairs([("AWS_SHARED_CREDENTIALS_FILE", f.to_str().unwrap())]);
    assert_eq!(load(&env).await.unwrap().access_key_id, "ELSEWHERE");
    let gone = Env::from_pairs([("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/creds")]);
    let e = load(&gone).await.unwrap_err();
    assert!(
        matches!(e, Error::File { .. }),
        "a named file must exist: {e}"
    );
}

#[tokio::test]
async fn a_profile_that_needs_sts_or_sso_is_refused_with_the_way_out() {
    let home = tempfile::tempdir().unwrap();
    write(
        home.path(),
        ".aws/config",
        "[profile ci]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = default\n",
    );
    let e = load(&env_with(home.path(), &[("AWS_PROFILE", "ci")]))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("role_arn") && msg.contains("credential_process"),
        "{msg}"
    );
    let e = load(&env_with(home.path(), &[("AWS_PROFILE", "nope")]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no such profile"), "{e}");
}

#[tokio::test]
async fn credential_process_output_is_used_with_its_expiry() {
    let home = tempfile::tempdir().unwrap();
    let doc = r#"{"Version":1,"AccessKeyId":"PROC","SecretAccessKey":"s","SessionToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#;
    write(
        home.path(),
        ".aws/config",
        &format!("[default]\ncredential_process = printf '%s' '{doc}'\n"),
    );
    let c = load(&env_with(home.path(), &[])).await.unwrap();
    assert_eq!(
        (c.access_key_id.as_str(), c.session_token.as_deref()),
        ("PROC", Some("t"))
    );
    assert_eq!(
        c.expires,
        super::time::parse_iso8601("2099-01-01T00:00:00Z")
    );
    write(
        home.path(),
        ".aws/config",
        "[default]\ncredential_process = exit 3\n",
    );
    let e = load(&env_with(home.path(), &[])).await.unwrap_err();
    assert!(e.to_string().contains("credential_process"), "{e}");
}

fn iso(t: SystemTime) -> String {
    let d = super::time::amz_date(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

/// A fake IMDSv2 handing out credentials valid for `valid`, counting fetches.
async fn imds(valid: Duration) -> (fake_http::FakeHttp, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let n = fetches.clone();
    let server = fake_http::serve(move |r| {
        let token_ok = r.header("x-aws-ec2-metadata-token") == Some("TOKEN");
        match (r.method.as_str(), r.path.as_str()) {
            ("PUT", "/latest/api/token") if r.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() => {
                (200, "TOKEN".into())
            }
            (_, _) if !token_ok => (401, String::new()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "relay-role\n".into()),
            ("GET", "/latest/meta-data/iam/security-credentials/relay-role") => {
                let i = n.fetch_add(1, Ordering::SeqCst);
                let exp = iso(SystemTime::now() + valid);
                (200, format!(r#"{{"Code":"Success","AccessKeyId":"ROLE{i}","SecretAccessKey":"s","Token":"t","Expiration":"{exp}"}}"#))
            }
            _ => (404, String::new()),
        }
    })
    .await;
    (server, fetches)
}

#[tokio::test]
async fn the_instance_role_over_imdsv2_is_cached_until_near_expiry() {
    let (server, fetches) = imds(Duration::from_secs(6 * 3600)).await;
    let env = Env::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url.as_str())]);
    let p = Provider::chain(env);
    assert_eq!(p.get().await.unwrap().access_key_id, "ROLE0");
    assert_eq!(p.get().await.unwrap().access_key_id, "ROLE0", "cached");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0].method, "PUT", "IMDSv2: a session token first");
    assert!(
        seen[1..]
            .iter()
            .all(|r| r.header("x-aws-ec2-metadata-token") == Some("TOKEN"))
    );
}

#[tokio::test]
async fn expiring_credentials_are_fetched_again_and_kept_if_that_fails() {
    let (server, fetches) = imds(REFRESH_BEFORE / 2).await;
    let env = Env::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url.as_str())]);
    let p = Provider::chain(env);
    assert_eq!(p.get().await.unwrap().access_key_id, "ROLE0");
    assert_eq!(
        p.get().await.unwrap().access_key_id,
        "ROLE1",
        "within REFRESH_BEFORE: fetched again"
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    drop(server); // the endpoint goes away; the current ones are still valid
    assert_eq!(p.get().await.unwrap().access_key_id, "ROLE1");
}

#[tokio::test]
async fn no_role_and_no_endpoint_are_errors_naming_the_source() {
    let server = fake_http::serve(|r| match r.method.as_str() {
        "PUT" => (200, "TOKEN".into()),
        _ => (404, String::new()),
    })
    .await;
    let env = Env::from_pairs([("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url.as_str())]);
    let e = load(&env).await.unwrap_err();
    assert!(crate::error_chain(&e).contains("no IAM role"), "{e}");
    assert!(!e.is_transient());
    drop(server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = load(&Env::from_pairs([(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        url.as_str(),
    )]))
    .await
    .unwrap_err();
    assert!(e.is_transient(), "a refused connection may pass: {e}");
    assert!(e.to_string().contains("EC2 instance metadata"), "{e}");
}

#[tokio::test]
async fn container_credentials_with_the_authorization_token() {
    let server = fake_http::serve(|r| match r.header("authorization") {
        Some("Bearer xyz") => (200, r#"{"AccessKeyId":"ECS","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#.into()),
        _ => (403, String::new()),
    })
    .await;
    let full = format!("{}/v2/credentials/abc", server.url);
    let env = Env::from_pairs([
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer xyz"),
    ]);
    assert_eq!(load(&env).await.unwrap().access_key_id, "ECS");
    assert_eq!(server.seen.lock().unwrap()[0].path, "/v2/credentials/abc");
    let env = Env::from_pairs([("AWS_CONTAINER_CREDENTIALS_FULL_URI", full.as_str())]);
    assert!(
        load(&env)
            .await
            .unwrap_err()
            .to_string()
            .contains("container")
    );
}

#[test]
fn the_secret_never_shows_in_debug_output() {
    let c = super::Credentials {
        access_key_id: "AKID".into(),
        secret_access_key: "SECRET".into(),
        session_token: Some("TOKEN".into()),
        expires: None,
    };
    let s = format!("{c:?}");
    assert!(
        s.contains("AKID") && !s.contains("SECRET") && !s.contains("TOKEN"),
        "{s}"
    );
}
