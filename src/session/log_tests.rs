//! The log path's bounds: line pieces, the flight backlog, max-log-size.

use std::time::Duration;

use bytes::Bytes;

use super::*;

fn text(m: &StderrMsg) -> &[u8] {
    match m {
        StderrMsg::Result { kind, fields, .. } if *kind == RES_BUILD_LOG_LINE => match &fields[0] {
            Field::Str(s) => s,
            f => panic!("{f:?}"),
        },
        m => panic!("{m:?}"),
    }
}

#[test]
fn lines_are_split_at_newlines_across_chunks() {
    let mut s = LineSplitter::default();
    let mut got: Vec<Vec<u8>> = Vec::new();
    for chunk in [&b"one\ntw"[..], b"o\n\nthr", b"ee"] {
        got.extend(s.push(7, chunk).iter().map(|m| text(m).to_vec()));
    }
    got.extend(s.finish(7).iter().map(|m| text(m).to_vec()));
    assert_eq!(got, [&b"one"[..], b"two", b"", b"three"]);
}

#[test]
fn a_line_of_exactly_the_bound_is_one_piece() {
    let mut s = LineSplitter::default();
    let mut line = vec![b'y'; MAX_LOG_LINE];
    line.extend_from_slice(b"\nnext\n");
    let got: Vec<usize> = s.push(1, &line).iter().map(|m| text(m).len()).collect();
    assert_eq!(got, [MAX_LOG_LINE, 4]);
    let got: Vec<usize> = s
        .push(1, &line[..MAX_LOG_LINE])
        .iter()
        .map(|m| text(m).len())
        .collect();
    assert_eq!(got, [MAX_LOG_LINE]);
    let got: Vec<usize> = s.push(1, b"\n\n").iter().map(|m| text(m).len()).collect();
    assert_eq!(
        got,
        [0],
        "the first newline ends the cut line, the second is an empty line"
    );
}

#[test]
fn a_gibibyte_without_a_newline_goes_out_in_bounded_pieces() {
    const TOTAL: usize = 1 << 30;
    // An odd chunk size, so pieces and chunks never line up.
    let chunk = vec![b'x'; 1_000_003];
    let mut s = LineSplitter::default();
    let (mut fed, mut out, mut pieces) = (0usize, 0usize, 0usize);
    while fed < TOTAL {
        let n = chunk.len().min(TOTAL - fed);
        for m in s.push(1, &chunk[..n]) {
            let t = text(&m);
            assert_eq!(
                t.len(),
                MAX_LOG_LINE,
                "every full piece is exactly the bound"
            );
            out += t.len();
            pieces += 1;
        }
        fed += n;
        assert!(
            s.partial.capacity() <= MAX_LOG_LINE,
            "buffered at most one piece"
        );
    }
    for m in s.finish(1) {
        let t = text(&m);
        assert!(!t.is_empty() && t.len() <= MAX_LOG_LINE);
        out += t.len();
        pieces += 1;
    }
    assert_eq!(out, TOTAL);
    assert_eq!(pieces, TOTAL.div_ceil(MAX_LOG_LINE));
}

fn chunk(n: usize, b: u8) -> LogEvent {
    LogEvent::Log(Bytes::from(vec![b; n]))
}

fn got(c: LogEvent) -> Recv {
    Recv::Event(c)
}

#[test]
fn the_backlog_holds_at_most_its_bytes_and_a_laggard_hears_what_it_missed() {
    let backlog = Backlog::new(4 * MAX_LOG_LINE);
    let mut slow = backlog.subscribe();
    let mut fast = backlog.subscribe();
    for i in 0..100u8 {
        // A big chunk is split into pieces of at most MAX_LOG_LINE.
        backlog.publish(chunk(MAX_LOG_LINE + 1000, i));
        assert!(backlog.held() <= 4 * MAX_LOG_LINE, "{}", backlog.held());
        let mut got = 0;
        while let Some(Recv::Event(c)) = fast.try_recv() {
            assert!(c.size() <= MAX_LOG_LINE);
            got += c.size();
        }
        assert_eq!(got, MAX_LOG_LINE + 1000, "the fast reader misses nothing");
    }
    let total = 100 * (MAX_LOG_LINE + 1000) as u64;
    let Some(Recv::Dropped(n)) = slow.try_recv() else {
        panic!("the slow reader must hear of the gap first");
    };
    let mut rest = 0u64;
    while let Some(r) = slow.try_recv() {
        let Recv::Event(c) = r else { panic!("{r:?}") };
        rest += c.size() as u64;
    }
    assert_eq!(n + rest, total, "dropped + received = everything");
    assert!(rest <= 4 * MAX_LOG_LINE as u64);
}

#[test]
fn the_backlog_lets_go_of_what_every_reader_has_seen() {
    let backlog = Backlog::new(LOG_BACKLOG_BYTES);
    backlog.publish(chunk(1000, 1));
    assert_eq!(backlog.held(), 0, "nobody attached: nothing kept");
    let mut a = backlog.subscribe();
    let b = backlog.subscribe();
    backlog.publish(chunk(1000, 2));
    assert_eq!(a.try_recv(), Some(got(chunk(1000, 1))), "the log's start");
    assert_eq!(a.try_recv(), Some(got(chunk(1000, 2))));
    assert_eq!(backlog.held(), 1000, "b has not read it yet");
    drop(b);
    assert_eq!(backlog.held(), 0);
    assert_eq!(a.try_recv(), None);
}

#[tokio::test(start_paused = true)]
async fn a_reader_waits_for_the_next_chunk() {
    let backlog = Backlog::new(LOG_BACKLOG_BYTES);
    let mut r = backlog.subscribe();
    let waiting = tokio::spawn(async move { r.recv().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    backlog.publish(chunk(3, b'a'));
    assert_eq!(waiting.await.unwrap(), got(chunk(3, b'a')));
}

#[test]
fn the_smaller_max_log_size_wins_and_0_means_the_relays() {
    assert_eq!(effective_max_log_size(0, 64 << 20), 64 << 20);
    assert_eq!(effective_max_log_size(1000, 64 << 20), 1000);
    assert_eq!(effective_max_log_size(1 << 40, 64 << 20), 64 << 20);
}

/// A flight log with one reader, and a way to read what reached it.
fn flight_log() -> (Arc<FlightLog>, LogReader) {
    let log = FlightLog::new();
    let reader = log.subscribe();
    (log, reader)
}

fn drain(r: &mut LogReader) -> Vec<LogEvent> {
    std::iter::from_fn(|| r.try_recv())
        .map(|x| match x {
            Recv::Event(e) => e,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn max_log_size_stops_the_build_and_no_more_log_passes() {
    let (log, mut reader) = flight_log();
    let (sink, over) = log.attempt(10_000, Activity::now());
    let mut sent = 0;
    while !over.is_cancelled() {
        sink.publish(chunk(999, b'x'));
        sent += 1;
        assert!(sent < 1000, "the limit must stop the build");
    }
    sink.publish(chunk(10, b'y'));
    let passed: usize = drain(&mut reader).iter().map(LogEvent::size).sum();
    assert_eq!(passed, 10 * 999, "what fits under the limit, nothing after");
}

#[test]
fn a_log_under_max_log_size_passes_whole() {
    let (log, mut reader) = flight_log();
    let (sink, over) = log.attempt(10_000, Activity::now());
    for _ in 0..10 {
        sink.publish(chunk(1000, b'x'));
    }
    let passed: usize = drain(&mut reader).iter().map(LogEvent::size).sum();
    assert_eq!(passed, 10_000);
    assert!(!over.is_cancelled(), "exactly the limit is allowed");
}

fn start(id: u64, parent: u64) -> StderrMsg {
    StderrMsg::StartActivity {
        id,
        level: 3,
        kind: 105,
        text: Vec::new(),
        fields: Vec::new(),
        parent,
    }
}

fn act(m: StderrMsg) -> LogEvent {
    LogEvent::Activity(Arc::new(m))
}

#[test]
fn activity_ids_are_the_flights_so_a_retry_never_reuses_one() {
    let (log, mut reader) = flight_log();
    let phase = |id| StderrMsg::Result {
        id,
        kind: 104,
        fields: Vec::new(),
    };
    for _attempt in 0..2 {
        // Every attempt's backend numbers its activities the same way.
        let (sink, _) = log.attempt(u64::MAX, Activity::now());
        sink.publish(act(start(7, 0)));
        sink.publish(act(start(8, 7)));
        sink.publish(act(phase(8)));
        sink.publish(act(phase(99)));
        sink.publish(act(StderrMsg::StopActivity { id: 8 }));
        sink.publish(act(StderrMsg::StopActivity { id: 8 }));
    }
    let got = drain(&mut reader);
    let want = [
        act(start(1, 0)),
        act(start(2, 1)),
        act(phase(2)),
        act(StderrMsg::StopActivity { id: 2 }),
        act(start(3, 0)),
        act(start(4, 3)),
        act(phase(4)),
        act(StderrMsg::StopActivity { id: 4 }),
    ];
    assert_eq!(got, want, "unknown and stopped ids are dropped");
}

#[test]
fn the_kept_copy_is_the_text_a_serve_client_sees() {
    let (log, _reader) = flight_log();
    let (sink, _) = log.attempt(u64::MAX, Activity::now());
    log.note("building 'x' on a");
    sink.publish(LogEvent::Log(Bytes::from_static(b"hello\n")));
    sink.publish(act(start(1, 0)));
    assert_eq!(log.take_kept(), b"nix-relay: building 'x' on a\nhello\n");
}

#[test]
fn a_reader_attaching_mid_build_gets_the_logs_start_then_the_gap_then_live() {
    let backlog = Backlog::new(LOG_BACKLOG_BYTES);
    let mut first = backlog.subscribe();
    assert_eq!(
        first.try_recv(),
        None,
        "the first reader starts at the start"
    );
    backlog.publish(chunk(1000, 1));
    let mut early = backlog.subscribe();
    assert_eq!(early.try_recv(), Some(got(chunk(1000, 1))));
    assert_eq!(early.try_recv(), None, "nothing went by unseen");
    for i in 0..100u8 {
        backlog.publish(chunk(1000, i));
    }
    let mut late = backlog.subscribe();
    let mut replayed = Vec::new();
    let gap = loop {
        match late.try_recv() {
            Some(Recv::Event(LogEvent::Log(c))) => replayed.extend_from_slice(&c),
            other => break other,
        }
    };
    assert_eq!(replayed.len(), LOG_REPLAY_BYTES, "the log's start, bounded");
    assert_eq!(&replayed[..1000], &[1u8; 1000][..]);
    assert_eq!(gap, Some(Recv::Skipped(101_000 - LOG_REPLAY_BYTES as u64)));
    assert_eq!(late.try_recv(), None);
    backlog.publish(chunk(10, 7));
    assert_eq!(late.try_recv(), Some(got(chunk(10, 7))), "then live");
    drop((first, early));
}
