//! Stand-in endpoints on 127.0.0.1 for what moto cannot do: one that
//! throttles every call, and a proxy in front of moto that answers EC2's
//! no-capacity error to spot RunInstances (moto always has spot capacity)
//! and forwards everything else, keeping every request body.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One HTTP/1.1 request as it arrived: the head, then the body
/// Content-Length says.
pub fn read_request(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 65536];
    let mut got = Vec::new();
    while let Ok(k) = s.read(&mut buf) {
        got.extend_from_slice(&buf[..k]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let done = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            let len = (head.lines())
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            body.len() >= len
        });
        if k == 0 || done {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn error_reply(s: &mut TcpStream, status: &str, code: &str, message: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
    );
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// An endpoint that throttles every call, counting them and keeping the
/// first request as it arrived.
pub fn throttling_server() -> (u16, Arc<AtomicUsize>, Arc<Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Mutex::new(String::new()));
    let (count, keep) = (n.clone(), first.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let got = read_request(&mut s);
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                *keep.lock().unwrap() = got;
            }
            let msg = "Request limit exceeded.";
            error_reply(
                &mut s,
                "503 Service Unavailable",
                "RequestLimitExceeded",
                msg,
            );
        }
    });
    (port, n, first)
}

/// A proxy in front of moto (`127.0.0.1:<moto>`).
pub struct SpotProxy {
    pub port: u16,
    /// Answer spot RunInstances with InsufficientInstanceCapacity.
    pub refuse_spot: Arc<AtomicBool>,
    /// Every request body, in order.
    pub bodies: Arc<Mutex<Vec<String>>>,
}

pub fn spot_proxy(moto: u16) -> SpotProxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let refuse_spot = Arc::new(AtomicBool::new(true));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (refuse, keep) = (refuse_spot.clone(), bodies.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let req = read_request(&mut s);
            let body = req.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
            keep.lock().unwrap().push(body.clone());
            let spot_run = body.contains("Action=RunInstances")
                && body.contains("InstanceMarketOptions.MarketType=spot");
            if spot_run && refuse.load(Ordering::SeqCst) {
                let msg = "We currently do not have sufficient capacity in the Availability Zone you requested.";
                error_reply(
                    &mut s,
                    "500 Internal Server Error",
                    "InsufficientInstanceCapacity",
                    msg,
                );
                continue;
            }
            forward(&mut s, moto, &req);
        }
    });
    SpotProxy {
        port,
        refuse_spot,
        bodies,
    }
}

/// Sends `req` to moto (one request per connection) and its reply back.
fn forward(client: &mut TcpStream, moto: u16, req: &str) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", moto)) else {
        return;
    };
    let req = req.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    let _ = up.write_all(req.as_bytes());
    let mut reply = Vec::new();
    let _ = up.read_to_end(&mut reply);
    let _ = client.write_all(&reply);
}
