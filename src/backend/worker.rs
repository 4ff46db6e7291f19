//! Worker-protocol client: the relay driving a backend's
//! `nix-daemon --stdio` (`ssh-ng://`). The same operations as
//! [`super::ServeClient`], one request at a time; every op's STDERR stream
//! is read to its end (activities of any op are tolerated), and a
//! `STDERR_ERROR` becomes an `Err` carrying the daemon's message.
//!
//! The build log arrives in-band and is published, as it is read, to the
//! build's event sink ([`event_of`]): log lines (`RESULT` 101/107) and
//! `STDERR_NEXT` text as log bytes, every other activity message typed, so
//! a worker client can get the backend's activities as they are.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::buildlog::{EventSink, LogEvent, log_pieces};
use crate::wire::build::{BasicDerivation, BuildOptions, BuildResult};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;
use crate::wire::worker::framed::DEFAULT_FRAME_SIZE;
use crate::wire::worker::stderr::{
    LVL_INFO, RES_BUILD_LOG_LINE, RES_POST_BUILD_LOG_LINE, write_read_reply,
};
use crate::wire::worker::{
    BUILD_MODE_NORMAL, ClientOptions, Field, FramedWriter, NarUpload, Reply, Request, StderrMsg,
    WorkerCodec, WorkerError, WorkerVersion,
};
use crate::wire::{Error, Limits, Result};

pub struct WorkerClient<R, W> {
    pub r: R,
    pub w: W,
    pub version: WorkerVersion,
    limits: Limits,
    /// An operation started and has not been read to its end.
    pub(super) busy: bool,
}

/// What a STDERR message contributes to a build's events, if anything: a
/// log line or `STDERR_NEXT` text as log bytes (newline-ended; `dropped`
/// bytes of it were cut on reading, a line longer than
/// [`MAX_LOG_MESSAGE`](crate::wire::worker::stderr::MAX_LOG_MESSAGE), which
/// a note says), any other activity message as it is.
pub fn event_of(msg: StderrMsg, dropped: u64) -> Option<LogEvent> {
    let line = |t: &[u8]| {
        let mut v = t.to_vec();
        if !v.ends_with(b"\n") {
            v.push(b'\n');
        }
        if dropped > 0 {
            let note = format!("nix-relay: {dropped} more bytes of this log line dropped\n");
            v.extend_from_slice(note.as_bytes());
        }
        Some(LogEvent::Log(v.into()))
    };
    match msg {
        StderrMsg::Next(t) => line(&t),
        StderrMsg::Result { kind, fields, .. }
            if kind == RES_BUILD_LOG_LINE || kind == RES_POST_BUILD_LOG_LINE =>
        {
            match fields.first() {
                Some(Field::Str(s)) => line(s),
                _ => None,
            }
        }
        m @ (StderrMsg::StartActivity { .. }
        | StderrMsg::StopActivity { .. }
        | StderrMsg::Result { .. }) => Some(LogEvent::Activity(Arc::new(m))),
        _ => None,
    }
}

/// One build's options for a backend: the serve-protocol fields (what the
/// relay itself enforces: timeouts, max-log-size), and the settings a
/// worker client sent (SetOptions), if it is one; and whether the client
/// lets the backend substitute the build's inputs from its caches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub build: BuildOptions,
    pub worker: Option<Arc<ClientOptions>>,
    /// The client allows substitution (serve: QueryValidPaths' substitute
    /// flag, from `builders-use-substitutes`; a worker remote-store build:
    /// its `use-substitutes`). The backend then gets inputs a cache it
    /// trusts has from there, and the relay pushes only the rest.
    pub substitute: bool,
}

impl From<BuildOptions> for Options {
    fn from(build: BuildOptions) -> Self {
        Options {
            build,
            worker: None,
            substitute: false,
        }
    }
}

/// The daemon settings for one build. A worker client's own settings the
/// relay does not decide pass through (keep-failed, keep-going, fallback,
/// verbosity, cores); without them, the serve options' keep-failed and
/// daemon defaults (all cores). The relay decides the rest, whatever the
/// client sent: its timeouts and max-log-size (as overrides), the log
/// (verbose build), one job, substitutes only if the client allows them
/// ([`Options::substitute`]). Other overrides a client sent
/// are not passed: a relay client is no trusted user of the backend, and
/// settings such as `post-build-hook`, `sandbox` or `builders` would
/// reconfigure it.
pub fn client_options(o: &Options) -> ClientOptions {
    let b = &o.build;
    let mut c = match o.worker.as_deref() {
        Some(w) => ClientOptions {
            keep_failed: w.keep_failed,
            keep_going: w.keep_going,
            try_fallback: w.try_fallback,
            verbosity: w.verbosity,
            build_cores: w.build_cores,
            ..ClientOptions::default()
        },
        None => ClientOptions {
            keep_failed: b.keep_failed,
            verbosity: LVL_INFO,
            build_cores: 0,
            ..ClientOptions::default()
        },
    };
    c.max_build_jobs = 1;
    c.max_silent_time = b.max_silent_time;
    // lvlError: build output is "verbose" (sent as it comes).
    c.verbose_build = 0;
    c.use_substitutes = o.substitute;
    c.overrides = vec![
        ("timeout".into(), b.build_timeout.to_string()),
        ("max-build-log-size".into(), b.max_log_size.to_string()),
    ];
    c
}

fn daemon_error(op: &str, e: &WorkerError) -> Error {
    Error::Protocol(format!(
        "nix-daemon failed {op}: {}",
        String::from_utf8_lossy(&e.message).trim_end()
    ))
}

impl<R: AsyncBufRead + AsyncRead + Unpin, W: AsyncWrite + Unpin> WorkerClient<R, W> {
    pub fn new(r: R, w: W, version: WorkerVersion, limits: Limits) -> Self {
        WorkerClient {
            r,
            w,
            version,
            limits,
            busy: false,
        }
    }

    fn codec(&self) -> WorkerCodec {
        WorkerCodec::new(self.version, self.limits)
    }

    async fn request(&mut self, req: &Request) -> Result<()> {
        let buf = self.codec().encode_request(req);
        self.w.write_all(&buf).await.map_err(Error::Write)?;
        self.w.flush().await.map_err(Error::Write)
    }

    /// Reads an op's STDERR stream to `STDERR_LAST`; its build events go
    /// to `log` (if any) as they are read, everything else is skipped.
    async fn finish(&mut self, op: &str, log: Option<&dyn EventSink>) -> Result<()> {
        let codec = self.codec();
        loop {
            let (msg, dropped) = codec.read_stderr_log_capped(&mut self.r).await?;
            if dropped > 0 {
                tracing::debug!(op, dropped, "long log text from the daemon cut");
            }
            match msg {
                StderrMsg::Last => return Ok(()),
                StderrMsg::Error(e) => return Err(daemon_error(op, &e)),
                StderrMsg::Read(_) => {
                    return Err(Error::Protocol(format!(
                        "unexpected STDERR_READ during {op}"
                    )));
                }
                m => match (log, event_of(m, dropped)) {
                    (Some(log), Some(LogEvent::Log(t))) => {
                        log_pieces(t).for_each(|p| log.publish(LogEvent::Log(p)));
                    }
                    (Some(log), Some(event)) => log.publish(event),
                    (None, Some(event)) => {
                        if let Some(t) = event.text() {
                            tracing::debug!(op, text = %String::from_utf8_lossy(&t).trim_end(), "daemon message");
                        }
                    }
                    (_, None) => {}
                },
            }
        }
    }

    /// The paths among `paths` the daemon has; with `substitute`, after
    /// it substituted what its caches have (its own `substituters`).
    pub async fn query_valid_paths(
        &mut self,
        paths: Vec<StorePath>,
        substitute: bool,
    ) -> Result<Vec<StorePath>> {
        self.request(&Request::QueryValidPaths { paths, substitute })
            .await?;
        self.finish("QueryValidPaths", None).await?;
        self.codec().read_paths(&mut self.r).await
    }

    /// The infos of the paths that are valid (others are left out).
    pub async fn query_path_infos(&mut self, paths: Vec<StorePath>) -> Result<Vec<ValidPathInfo>> {
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            self.request(&Request::QueryPathInfo { path: path.clone() })
                .await?;
            self.finish("QueryPathInfo", None).await?;
            let codec = self.codec();
            out.extend(codec.read_path_info(&mut self.r, path).await?);
        }
        Ok(out)
    }

    /// Uploads one path; `nar` must yield exactly `info.nar_size` bytes.
    pub async fn add_to_store_nar<N: AsyncRead + Unpin>(
        &mut self,
        info: &ValidPathInfo,
        nar: &mut N,
    ) -> Result<()> {
        self.request(&Request::AddToStoreNar {
            info: info.clone(),
            repair: false,
            dont_check_sigs: true,
        })
        .await?;
        let mut limited = nar.take(info.nar_size);
        if self.codec().nar_upload() == NarUpload::Pulled {
            return self.answer_reads(&mut limited, info.nar_size).await;
        }
        let mut framed = FramedWriter::new(&mut self.w, DEFAULT_FRAME_SIZE);
        let n = tokio::io::copy(&mut limited, &mut framed)
            .await
            .map_err(|e| Error::read("NAR from relay store", e))?;
        if n != info.nar_size {
            return Err(Error::UnexpectedEof {
                field: "NAR from relay store",
            });
        }
        framed.finish().await?;
        self.finish("AddToStoreNar", None).await
    }

    /// AddToStoreNar at 1.21–1.22: the daemon pulls the NAR with
    /// `STDERR_READ max`, each answered with one chunk (empty at the end).
    async fn answer_reads<N: AsyncRead + Unpin>(&mut self, nar: &mut N, size: u64) -> Result<()> {
        let mut sent = 0u64;
        let mut chunk = Vec::new();
        let codec = self.codec();
        loop {
            match codec.read_stderr(&mut self.r).await? {
                StderrMsg::Last if sent == size => return Ok(()),
                StderrMsg::Last => {
                    return Err(Error::Protocol(format!(
                        "the daemon ended AddToStoreNar after {sent} of {size} NAR bytes"
                    )));
                }
                StderrMsg::Error(e) => return Err(daemon_error("AddToStoreNar", &e)),
                StderrMsg::Read(max) => {
                    let want = max.min(size - sent).min(DEFAULT_FRAME_SIZE as u64);
                    // Bounded by DEFAULT_FRAME_SIZE above.
                    chunk.resize(want as usize, 0);
                    nar.read_exact(&mut chunk)
                        .await
                        .map_err(|e| Error::read("NAR from relay store", e))?;
                    sent += want;
                    let mut buf = Vec::with_capacity(chunk.len() + 16);
                    write_read_reply(&mut buf, &chunk);
                    self.w.write_all(&buf).await.map_err(Error::Write)?;
                    self.w.flush().await.map_err(Error::Write)?;
                }
                _ => {}
            }
        }
    }

    /// SetOptions with the build's options ([`client_options`]): they last
    /// for the rest of the session, until the next SetOptions.
    pub async fn set_options(
        &mut self,
        options: &Options,
        log: Option<&dyn EventSink>,
    ) -> Result<()> {
        self.request(&Request::SetOptions(client_options(options)))
            .await?;
        self.finish("SetOptions", log).await
    }

    /// SetOptions with the build's options ([`client_options`]), then
    /// BuildDerivation; the daemon's events go to `log` as they come.
    pub async fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        options: &Options,
        log: &dyn EventSink,
    ) -> Result<BuildResult> {
        self.set_options(options, Some(log)).await?;
        self.request(&Request::BuildDerivation {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            mode: BUILD_MODE_NORMAL,
        })
        .await?;
        self.finish("BuildDerivation", Some(log)).await?;
        let codec = self.codec();
        Ok(codec.read_build_result(&mut self.r).await?.base)
    }

    /// Any request whose reply is a value: its STDERR stream (events to
    /// `log`), then the reply.
    pub async fn call(&mut self, req: Request, log: Option<&dyn EventSink>) -> Result<Reply> {
        self.request(&req).await?;
        let op = format!("{:?}", req.op());
        self.finish(&op, log).await?;
        self.codec().read_reply(&mut self.r, &req).await
    }

    /// Asks for a NAR; the caller then reads it from `self.r`.
    pub async fn dump_store_path(&mut self, path: &StorePath) -> Result<()> {
        self.request(&Request::NarFromPath { path: path.clone() })
            .await?;
        self.finish("NarFromPath", None).await
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
