//! SSH plumbing for both sides: the client the relay uses to reach its
//! backends ([`client`], kept alive and watched by [`stall`]) and the channel
//! pump the client-facing front end ([`crate::front`]) shares with it.
//!
//! russh delivers a channel's data through a bounded per-channel queue and
//! stalls the whole connection while it is full, so a channel's reading half
//! is always drained by its own task ([`pump`]) into a byte pipe; the
//! protocol code then reads the pipe and writes the writing half freely.

pub mod client;
pub mod deadline;
pub mod stall;

use bytes::Bytes;
use russh::ChannelMsg;
use russh::ChannelReadHalf;
use tokio::io::{AsyncWriteExt, SimplexStream, WriteHalf};

pub use crate::buildlog::LogSwitch;

/// Bytes buffered between a channel and its reader. Without a bound a fast
/// peer could fill memory while the relay waits on the other side.
pub const PIPE_BYTES: usize = 1 << 20;

/// How a channel ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChannelEnd {
    pub exit_status: Option<u32>,
}

/// Where a channel's messages come from: russh's reading half, or a fake
/// channel in tests.
pub trait ChannelSource: Send {
    /// The next message; `None` once the channel is gone.
    fn next(&mut self) -> impl Future<Output = Option<ChannelMsg>> + Send;
}

impl ChannelSource for ChannelReadHalf {
    async fn next(&mut self) -> Option<ChannelMsg> {
        self.wait().await
    }
}

/// Drains a channel: data into `data`, stderr (extended data 1) to `log`'s
/// current sink (synchronously: nothing waits on a log reader).
/// Returns when the peer sends EOF or closes, or the pipe's reader is gone.
/// Every message is a sign of life on `alive`; while the pipe is full the
/// silence is the relay's, so the wait is held (see [`stall::Alive::hold`]).
pub async fn pump(
    mut rx: impl ChannelSource,
    mut data: WriteHalf<SimplexStream>,
    log: Option<LogSwitch>,
    alive: Option<stall::Alive>,
) -> ChannelEnd {
    let mut end = ChannelEnd::default();
    let mut data_open = true;
    while let Some(msg) = rx.next().await {
        let _hold = alive.as_ref().map(|a| {
            a.touch();
            a.hold()
        });
        match msg {
            ChannelMsg::Data { data: d } => {
                // After the reader is gone, keep draining so the connection
                // does not stall.
                data_open = data_open && data.write_all(&d).await.is_ok();
            }
            ChannelMsg::ExtendedData { data: d, ext: 1 } => {
                if let Some(log) = &log {
                    log.log(Bytes::copy_from_slice(&d));
                }
            }
            ChannelMsg::Eof => {
                let _ = data.shutdown().await;
                data_open = false;
            }
            ChannelMsg::ExitStatus { exit_status } => end.exit_status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = data.shutdown().await;
    end
}
