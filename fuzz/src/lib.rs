//! Shared harness for the fuzz targets: an allocation budget, a poll-once
//! executor for readers over in-memory slices, and payload walkers that
//! consume what follows a request the way the sessions do.

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use cap::Cap;
use nix_relay_wire::nar::{NarLimits, NarNode, copy_nar};
use nix_relay_wire::{self as wire, Limits};

pub mod nar_tree;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Small collection limits; a string limit larger than the slack of
/// [`budget_for`], so a reader that preallocates a declared length before
/// the bytes arrive is caught.
pub const LIMITS: Limits = Limits {
    max_string_bytes: 1 << 20,
    max_collection_len: 1 << 10,
    max_nar_bytes: 1 << 20,
};

pub const NAR_LIMITS: NarLimits = NarLimits {
    max_depth: 64,
    max_name_len: 255,
    max_target_len: 4095,
    max_nar_bytes: 1 << 20,
    max_entries: 1 << 12,
};

/// Bytes a decoder may hold while reading `input_len` bytes with [`LIMITS`]:
/// a multiple of what it read (values are bigger than their encoding, and
/// buffers grow by doubling) plus slack for a few preallocated collections
/// (at most 1024 elements each) — well below `LIMITS.max_string_bytes`.
pub fn budget_for(input_len: usize) -> usize {
    64 * input_len + (256 << 10)
}

/// While alive, any allocation beyond `extra` more bytes than are live now
/// fails, which aborts the process: libFuzzer reports it as a crash.
pub struct Budget(());

impl Budget {
    pub fn new(extra: usize) -> Budget {
        let limit = ALLOC.allocated().saturating_add(extra);
        ALLOC
            .set_limit(limit)
            .expect("limit above what is allocated");
        Budget(())
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        ALLOC.set_limit(usize::MAX).expect("raising the limit");
    }
}

/// Runs a future that reads only from in-memory slices: it must complete
/// on its first poll (a slice reader never waits).
pub fn run<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read from an in-memory slice returned Pending"),
    }
}

/// Streams one NAR from `r` as the sessions do; on success checks it
/// re-encodes byte for byte.
pub async fn stream_nar(r: &mut &[u8]) -> wire::Result<()> {
    let start = *r;
    let mut out = Vec::new();
    let summary = copy_nar(r, &mut out, NAR_LIMITS).await?;
    let consumed = start.len() - r.len();
    assert_eq!(
        out,
        start[..consumed],
        "copy_nar writes exactly what it read"
    );
    assert_eq!(
        summary.size, consumed as u64,
        "summary size = bytes consumed"
    );
    let tree = nar_tree::decode(&out);
    assert_eq!(
        nix_relay_wire::nar::encode_nar(&tree),
        out,
        "accepted NAR re-encodes"
    );
    Ok(())
}

/// The smallest valid NAR, for building inputs.
pub fn empty_file_nar() -> Vec<u8> {
    nix_relay_wire::nar::encode_nar(&NarNode::Regular {
        executable: false,
        contents: Vec::new(),
    })
}
