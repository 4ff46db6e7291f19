//! FramedReader on arbitrary frame sequences (after two bytes that pick
//! the frame limit and the read size). Checks against a reference model of
//! `(u64 len>0 · len bytes)* · u64 0`: the payload read, where it stops
//! (never a byte past the terminator), oversize frames refused before
//! their bytes are read, `drain` resynchronising to the terminator; and
//! what was read survives a FramedWriter → FramedReader round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay_fuzz::{Budget, budget_for, run};
use nix_relay_wire::Limits;
use nix_relay_wire::worker::{FramedReader, FramedWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the reference decoder makes of `data`.
#[derive(Debug, PartialEq)]
enum Model {
    /// Terminator found: payload, bytes up to and including it.
    Done(Vec<u8>, usize),
    /// A frame over the limit starting at this offset (payload before it).
    Oversize(Vec<u8>),
    /// Input ended first.
    Eof,
}

fn model(data: &[u8], max: u64) -> Model {
    let (mut pos, mut out) = (0usize, Vec::new());
    loop {
        let Some(hdr) = data.get(pos..pos + 8) else {
            return Model::Eof;
        };
        let len = u64::from_le_bytes(hdr.try_into().unwrap());
        pos += 8;
        if len == 0 {
            return Model::Done(out, pos);
        }
        if len > max {
            return Model::Oversize(out);
        }
        let Some(frame) = data.get(pos..).and_then(|d| d.get(..len as usize)) else {
            return Model::Eof;
        };
        out.extend_from_slice(frame);
        pos += frame.len();
    }
}

/// Reads with a buffer of `step` bytes until end, error or limit.
async fn read_all(fr: &mut FramedReader<&[u8]>, step: usize) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        match fr.read(&mut buf).await {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [lim, step, stream @ ..] = data else {
        return;
    };
    let max = 1usize << (lim % 24);
    let step = usize::from(*step) + 1;
    let limits = Limits {
        max_string_bytes: max,
        ..Limits::default()
    };
    let want = model(stream, max as u64);
    let _b = Budget::new(budget_for(data.len()) + step);
    run(async {
        let mut fr = FramedReader::new(stream, &limits);
        let (got, res) = read_all(&mut fr, step).await;
        match &want {
            Model::Done(payload, end) => {
                res.expect("a well-framed stream reads");
                assert_eq!(&got, payload);
                assert!(fr.is_done());
                assert_eq!(
                    fr.into_inner().len(),
                    stream.len() - end,
                    "stops at the terminator"
                );
                roundtrip(&got, step).await;
            }
            Model::Oversize(before) => {
                let err = res.expect_err("an oversize frame is refused");
                assert!(err.to_string().contains("exceeds the limit"), "{err}");
                assert_eq!(&got, before, "nothing of the oversize frame is returned");
                // drain() resynchronises: it ends at the terminator if any.
                let end = model(stream, u64::MAX);
                match (fr.drain().await, end) {
                    (Ok(_), Model::Done(_, end)) => {
                        assert_eq!(fr.into_inner().len(), stream.len() - end)
                    }
                    (Err(e), Model::Eof) => assert!(e.is_eof(), "{e}"),
                    (r, m) => panic!("drain gave {r:?}, model {m:?}"),
                }
            }
            Model::Eof => {
                let err = res.expect_err("a truncated stream is an error");
                assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
                assert!(got.len() <= stream.len());
            }
        }
    });
});

/// Whatever was read, written in frames of `step` bytes, reads back equal.
async fn roundtrip(payload: &[u8], step: usize) {
    let mut w = FramedWriter::new(Vec::new(), step);
    w.write_all(payload).await.expect("write to a Vec");
    w.finish().await.expect("finish to a Vec");
    let bytes = std::mem::take(w.get_mut());
    let mut fr = FramedReader::new(
        &bytes[..],
        &Limits {
            max_string_bytes: step,
            ..Limits::default()
        },
    );
    let mut back = Vec::new();
    fr.read_to_end(&mut back).await.expect("reads back");
    assert_eq!(back, payload);
    assert!(fr.is_done() && fr.into_inner().is_empty());
}
