//! What a backend answers, read with the decoders the relay's backend
//! clients run: `ServeCodec::read_reply` (`backend::client`: valid paths,
//! path infos, acks, BuildResult) and, for `nix-daemon`, each op's STDERR
//! stream (`WorkerCodec::read_stderr_log_capped`) then its result
//! (`WorkerCodec::read_paths`, `read_path_info`, `read_build_result`, as
//! `backend::worker`). Byte 0: bit 0 the protocol, the rest the version;
//! then per reply one byte picks the request it answers. Checks: every
//! reply re-encodes and parses back equal; memory stays within a budget
//! proportional to the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nix_relay_fuzz::{Budget, LIMITS, budget_for, run};
use nix_relay_wire::Result;
use nix_relay_wire::build::BasicDerivation;
use nix_relay_wire::serve::{Command, ServeCodec, ServeVersion};
use nix_relay_wire::store_path::StorePath;
use nix_relay_wire::worker::{Reply, Request, StderrMsg, WorkerCodec, WorkerVersion};

const WORKER_MINORS: [u8; 6] = [21, 25, 30, 34, 35, 38];

async fn serve(mut r: &[u8], codec: ServeCodec) -> Result<()> {
    while let Some((&pick, rest)) = r.split_first() {
        r = rest;
        let cmd = Command::ALL[usize::from(pick) % Command::ALL.len()];
        let reply = codec.read_reply(&mut r, cmd).await?;
        let buf = codec.encode_reply(&reply);
        let back = run(codec.read_reply(&mut &buf[..], cmd));
        assert_eq!(back.expect("a re-encoded reply parses"), reply, "{cmd:?}");
    }
    Ok(())
}

/// The requests `backend::worker` sends and whose results it reads.
fn worker_request(pick: u8) -> Request {
    let path = StorePath::parse("/nix/store/00000000000000000000000000000000-x").unwrap();
    match pick % 3 {
        0 => Request::QueryValidPaths {
            paths: Vec::new(),
            substitute: false,
        },
        1 => Request::QueryPathInfo { path },
        _ => Request::BuildDerivation {
            drv_path: path,
            drv: BasicDerivation {
                outputs: Vec::new(),
                input_srcs: Vec::new(),
                platform: String::new(),
                builder: Vec::new(),
                args: Vec::new(),
                env: Vec::new(),
            },
            mode: 0,
        },
    }
}

async fn worker_result(r: &mut &[u8], codec: WorkerCodec, req: &Request) -> Result<Reply> {
    Ok(match req {
        Request::QueryValidPaths { .. } => Reply::Paths(codec.read_paths(r).await?),
        Request::QueryPathInfo { path } => {
            Reply::PathInfo(codec.read_path_info(r, path.clone()).await?)
        }
        _ => Reply::Build(codec.read_build_result(r).await?),
    })
}

async fn worker(mut r: &[u8], codec: WorkerCodec) -> Result<()> {
    while let Some((&pick, rest)) = r.split_first() {
        r = rest;
        let req = worker_request(pick);
        loop {
            match codec.read_stderr_log_capped(&mut r).await?.0 {
                StderrMsg::Last => break,
                StderrMsg::Error(_) => return Ok(()),
                _ => {}
            }
        }
        let reply = worker_result(&mut r, codec, &req).await?;
        let buf = codec.encode_reply(&[], Some(&reply));
        let mut back = &buf[..];
        assert_eq!(run(codec.read_stderr(&mut back)).unwrap(), StderrMsg::Last);
        let again = run(codec.read_reply(&mut back, &req));
        assert_eq!(again.expect("a re-encoded result parses"), reply);
        assert!(back.is_empty(), "re-encoded result read exactly");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let _b = Budget::new(budget_for(data.len()));
    if sel & 1 == 0 {
        let version = ServeVersion(0x200 | u64::from((sel >> 1) % 8));
        let _ = run(serve(rest, ServeCodec::new(version, LIMITS)));
    } else {
        let minor = WORKER_MINORS[usize::from(sel >> 1) % WORKER_MINORS.len()];
        let codec = WorkerCodec::new(WorkerVersion::new(1, minor), LIMITS);
        let _ = run(worker(rest, codec));
    }
});
