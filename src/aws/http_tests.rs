//! The HTTP layer: endpoints, the reply bound, the time bound.

use std::time::Duration;

use bytes::Bytes;

use super::Error;
use super::fake_http;
use super::http::{Call, Endpoint, HttpClient, SERVICE_TIMEOUTS, Timeouts};

#[test]
fn endpoints_parse_with_default_ports_and_print_their_authority() {
    let ep = Endpoint::parse("https://ec2.eu-central-1.amazonaws.com").unwrap();
    assert_eq!(
        (ep.https, ep.host.as_str(), ep.port),
        (true, "ec2.eu-central-1.amazonaws.com", 443)
    );
    assert_eq!(ep.authority(), "ec2.eu-central-1.amazonaws.com");
    let ep = Endpoint::parse("http://127.0.0.1:5000/").unwrap();
    assert_eq!(
        (ep.https, ep.port, ep.authority().as_str()),
        (false, 5000, "127.0.0.1:5000")
    );
    let ep = Endpoint::parse("http://[::1]:8080").unwrap();
    assert_eq!(
        (ep.host.as_str(), ep.authority().as_str()),
        ("::1", "[::1]:8080")
    );
    let (ep, path) = Endpoint::split("http://169.254.170.2/v2/creds?x=1").unwrap();
    assert_eq!((ep.port, path), (80, "/v2/creds?x=1"));
    for bad in [
        "ec2.amazonaws.com",
        "ftp://x",
        "https://",
        "http://h:port",
        "http://h/path",
        "http://u@h",
        "http://[::1",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
}

fn get(max_reply: usize) -> Call<'static> {
    Call {
        method: "GET",
        path_and_query: "/x",
        headers: &[],
        body: Bytes::new(),
        max_reply,
    }
}

#[tokio::test]
async fn a_reply_over_the_bound_is_refused_and_one_within_is_read() {
    let server = fake_http::serve(|_| (200, "x".repeat(1000))).await;
    let ep = Endpoint::parse(&server.url).unwrap();
    let http = HttpClient::new(SERVICE_TIMEOUTS);
    let r = http.send(&ep, get(1000)).await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let e = http.send(&ep, get(999)).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { limit: 999, .. }), "{e}");
    assert!(!e.is_transient());
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen[0].header("host"),
        Some(ep.authority().as_str()),
        "Host added"
    );
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_closed_port_is_transient() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = Endpoint::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    let quick = Timeouts {
        connect: Duration::from_secs(5),
        call: Duration::from_millis(300),
    };
    let e = HttpClient::new(quick).send(&ep, get(10)).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { what: "answer", .. }), "{e}");
    assert!(e.is_transient());
    // A port bound but not listening refuses connections, and stays ours:
    // a freed port could be taken by another test's server meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let ep = Endpoint::parse(&format!("http://{}", closed.local_addr().unwrap())).unwrap();
    let e = HttpClient::new(quick).send(&ep, get(10)).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.is_transient());
    drop(l);
}
