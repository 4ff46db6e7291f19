//! The STDERR stream the server sends before every result.
//!
//! ```text
//! msg    = NEXT str text | READ u64 maxLen | WRITE str data | LAST
//!        | ERROR error | START_ACTIVITY u64 id · u64 level · u64 type · str text · fields · u64 parent
//!        | STOP_ACTIVITY u64 id | RESULT u64 id · u64 type · fields            (activities: V ≥ 1.20)
//! error  = [V ≥ 1.26] str "Error" · u64 level · str name · str message · u64 havePos=0
//!                      · u64 n · n × (u64 havePos=0 · str hint)
//!          [V < 1.26] str message · u64 exitStatus
//! fields = u64 n · n × (u64 0 · u64 int | u64 1 · str s)
//! ```
//! After `READ` the client answers with one `str` of at most maxLen bytes.

use tokio::io::AsyncRead;

use super::super::primitives::*;
use super::super::{Error, Limits, Result};
use super::WorkerVersion;

pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub const STDERR_READ: u64 = 0x6461_7461;
pub const STDERR_WRITE: u64 = 0x6461_7416;
pub const STDERR_LAST: u64 = 0x616c_7473;
pub const STDERR_ERROR: u64 = 0x6378_7470;
pub const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
pub const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
pub const STDERR_RESULT: u64 = 0x5253_4c54;

/// Verbosity levels.
pub const LVL_ERROR: u64 = 0;
pub const LVL_WARN: u64 = 1;
pub const LVL_NOTICE: u64 = 2;
pub const LVL_INFO: u64 = 3;
pub const LVL_TALKATIVE: u64 = 4;
pub const LVL_CHATTY: u64 = 5;
pub const LVL_DEBUG: u64 = 6;
pub const LVL_VOMIT: u64 = 7;

/// Activity types.
pub const ACT_UNKNOWN: u64 = 0;
pub const ACT_COPY_PATH: u64 = 100;
pub const ACT_FILE_TRANSFER: u64 = 101;
pub const ACT_REALISE: u64 = 102;
pub const ACT_COPY_PATHS: u64 = 103;
pub const ACT_BUILDS: u64 = 104;
/// Fields `[drvPath, machine, round, nrRounds]`.
pub const ACT_BUILD: u64 = 105;
pub const ACT_OPTIMISE_STORE: u64 = 106;
pub const ACT_VERIFY_PATHS: u64 = 107;
pub const ACT_SUBSTITUTE: u64 = 108;
pub const ACT_QUERY_PATH_INFO: u64 = 109;
pub const ACT_POST_BUILD_HOOK: u64 = 110;
pub const ACT_BUILD_WAITING: u64 = 111;

/// Result types.
pub const RES_FILE_LINKED: u64 = 100;
/// Fields `[line]`.
pub const RES_BUILD_LOG_LINE: u64 = 101;
pub const RES_UNTRUSTED_PATH: u64 = 102;
pub const RES_CORRUPTED_PATH: u64 = 103;
/// Fields `[phase]`.
pub const RES_SET_PHASE: u64 = 104;
/// Fields `[done, expected, running, failed]`.
pub const RES_PROGRESS: u64 = 105;
pub const RES_SET_EXPECTED: u64 = 106;
pub const RES_POST_BUILD_LOG_LINE: u64 = 107;

/// Activities and results appear on the wire from this version on.
const ACTIVITIES_MINOR: u8 = 20;
const STRUCTURED_ERROR_MINOR: u8 = 26;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Int(u64),
    Str(Vec<u8>),
}

/// An error as STDERR_ERROR carries it. Versions < 1.26 carry only
/// `message` and `exit_status`; ≥ 1.26 carry everything but `exit_status`
/// (read back as 1, Nix's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerError {
    pub level: u64,
    /// Always `"Error"` from Nix (the field is obsolete).
    pub name: Vec<u8>,
    pub message: Vec<u8>,
    pub traces: Vec<Vec<u8>>,
    pub exit_status: u64,
}

impl WorkerError {
    pub fn new(message: impl Into<Vec<u8>>) -> Self {
        WorkerError {
            level: LVL_ERROR,
            name: b"Error".to_vec(),
            message: message.into(),
            traces: Vec::new(),
            exit_status: 1,
        }
    }

    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Self> {
        let max = limits.max_string_bytes;
        if version.minor() < STRUCTURED_ERROR_MINOR {
            let message = read_bytes(r, "error message", max).await?;
            let mut e = WorkerError::new(message);
            e.exit_status = read_u64(r, "error exitStatus").await?;
            return Ok(e);
        }
        if read_bytes(r, "error type", 16).await? != b"Error" {
            return Err(Error::Protocol(
                "STDERR_ERROR: type is not \"Error\"".into(),
            ));
        }
        let level = read_u64(r, "error level").await?;
        let name = read_bytes(r, "error name", 1024).await?;
        let message = read_bytes(r, "error message", max).await?;
        no_pos(r).await?;
        let n = read_len(r, "error traces", limits.max_collection_len).await?;
        let mut traces = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            no_pos(r).await?;
            traces.push(read_bytes(r, "error trace", max).await?);
        }
        Ok(WorkerError {
            level,
            name,
            message,
            traces,
            exit_status: 1,
        })
    }

    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        if version.minor() < STRUCTURED_ERROR_MINOR {
            put_bytes(buf, &self.message);
            put_u64(buf, self.exit_status);
            return;
        }
        put_str(buf, "Error");
        put_u64(buf, self.level);
        put_bytes(buf, &self.name);
        put_bytes(buf, &self.message);
        put_u64(buf, 0);
        put_u64(buf, self.traces.len() as u64);
        for t in &self.traces {
            put_u64(buf, 0);
            put_bytes(buf, t);
        }
    }
}

/// Nix never sends error positions; a set `havePos` is refused.
async fn no_pos<R: AsyncRead + Unpin>(r: &mut R) -> Result<()> {
    match read_u64(r, "error havePos").await? {
        0 => Ok(()),
        value => Err(Error::BadValue {
            field: "error havePos",
            value,
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrMsg {
    Next(Vec<u8>),
    Read(u64),
    Write(Vec<u8>),
    Last,
    Error(WorkerError),
    StartActivity {
        id: u64,
        level: u64,
        kind: u64,
        text: Vec<u8>,
        fields: Vec<Field>,
        parent: u64,
    },
    StopActivity {
        id: u64,
    },
    Result {
        id: u64,
        kind: u64,
        fields: Vec<Field>,
    },
}

impl StderrMsg {
    pub fn is_end(&self) -> bool {
        matches!(self, StderrMsg::Last | StderrMsg::Error(_))
    }

    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<Self> {
        Self::read_with(r, version, limits, &mut Text::Whole).await
    }

    /// As [`StderrMsg::read`], for a backend's stream: log text (`NEXT`,
    /// activity text, result fields) is kept up to [`MAX_LOG_MESSAGE`]
    /// bytes per string, the rest read and dropped. Also returns the bytes
    /// dropped.
    pub async fn read_log_capped<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
    ) -> Result<(Self, u64)> {
        let mut text = Text::Capped { dropped: 0 };
        let msg = Self::read_with(r, version, limits, &mut text).await?;
        Ok((msg, text.dropped()))
    }

    async fn read_with<R: AsyncRead + Unpin>(
        r: &mut R,
        version: WorkerVersion,
        limits: &Limits,
        text: &mut Text,
    ) -> Result<Self> {
        let max = limits.max_string_bytes;
        let code = read_u64(r, "stderr message code").await?;
        let activities = version.minor() >= ACTIVITIES_MINOR;
        Ok(match code {
            STDERR_NEXT => StderrMsg::Next(text.read(r, "STDERR_NEXT", max).await?),
            STDERR_READ => StderrMsg::Read(read_u64(r, "STDERR_READ").await?),
            STDERR_WRITE => StderrMsg::Write(read_bytes(r, "STDERR_WRITE", max).await?),
            STDERR_LAST => StderrMsg::Last,
            STDERR_ERROR => StderrMsg::Error(WorkerError::read(r, version, limits).await?),
            STDERR_START_ACTIVITY if activities => StderrMsg::StartActivity {
                id: read_u64(r, "activity id").await?,
                level: read_u64(r, "activity level").await?,
                kind: read_u64(r, "activity type").await?,
                text: text.read(r, "activity text", max).await?,
                fields: read_fields_with(r, limits, text).await?,
                parent: read_u64(r, "activity parent").await?,
            },
            STDERR_STOP_ACTIVITY if activities => StderrMsg::StopActivity {
                id: read_u64(r, "activity id").await?,
            },
            STDERR_RESULT if activities => StderrMsg::Result {
                id: read_u64(r, "result activity id").await?,
                kind: read_u64(r, "result type").await?,
                fields: read_fields_with(r, limits, text).await?,
            },
            value => {
                return Err(Error::BadValue {
                    field: "stderr message code",
                    value,
                });
            }
        })
    }

    /// A `STDERR_NEXT` of `len` bytes in three parts, for a sender that
    /// streams the text rather than holding it: the head (tag and length)
    /// to send before the text and the padding to send after it.
    pub fn next_streamed(len: u64) -> (Vec<u8>, &'static [u8]) {
        let mut head = Vec::with_capacity(16);
        put_u64(&mut head, STDERR_NEXT);
        put_u64(&mut head, len);
        (head, &[0u8; 8][..padding_len(len)])
    }

    /// Writes the message; below 1.20 activities are flattened
    /// ([`StderrMsg::flatten`]) or dropped.
    pub fn write(&self, buf: &mut Vec<u8>, version: WorkerVersion) {
        match self {
            StderrMsg::Next(t) => put_tagged(buf, STDERR_NEXT, t),
            StderrMsg::Read(n) => {
                put_u64(buf, STDERR_READ);
                put_u64(buf, *n);
            }
            StderrMsg::Write(d) => put_tagged(buf, STDERR_WRITE, d),
            StderrMsg::Last => put_u64(buf, STDERR_LAST),
            StderrMsg::Error(e) => {
                put_u64(buf, STDERR_ERROR);
                e.write(buf, version);
            }
            _ if version.minor() < ACTIVITIES_MINOR => {
                if let Some(flat) = self.flatten() {
                    flat.write(buf, version);
                }
            }
            StderrMsg::StartActivity {
                id,
                level,
                kind,
                text,
                fields,
                parent,
            } => {
                put_u64(buf, STDERR_START_ACTIVITY);
                put_u64(buf, *id);
                put_u64(buf, *level);
                put_u64(buf, *kind);
                put_bytes(buf, text);
                put_fields(buf, fields);
                put_u64(buf, *parent);
            }
            StderrMsg::StopActivity { id } => {
                put_u64(buf, STDERR_STOP_ACTIVITY);
                put_u64(buf, *id);
            }
            StderrMsg::Result { id, kind, fields } => {
                put_u64(buf, STDERR_RESULT);
                put_u64(buf, *id);
                put_u64(buf, *kind);
                put_fields(buf, fields);
            }
        }
    }

    /// The plain-text form for clients without activities (< 1.20) and
    /// for serve clients' stderr: a started activity with text becomes
    /// `text...\n` (as Nix's daemon does), a build log line (RESULT 101 or
    /// 107) becomes `line\n`; everything else has no text form.
    pub fn flatten(&self) -> Option<StderrMsg> {
        let line = |mut t: Vec<u8>, suffix: &[u8]| {
            t.extend_from_slice(suffix);
            Some(StderrMsg::Next(t))
        };
        match self {
            StderrMsg::StartActivity { text, .. } if !text.is_empty() => {
                line(text.clone(), b"...\n")
            }
            StderrMsg::Result { kind, fields, .. }
                if *kind == RES_BUILD_LOG_LINE || *kind == RES_POST_BUILD_LOG_LINE =>
            {
                match fields.first() {
                    Some(Field::Str(s)) => line(s.clone(), b"\n"),
                    _ => None,
                }
            }
            StderrMsg::StartActivity { .. }
            | StderrMsg::StopActivity { .. }
            | StderrMsg::Result { .. } => None,
            other => Some(other.clone()),
        }
    }
}

fn put_tagged(buf: &mut Vec<u8>, code: u64, data: &[u8]) {
    put_u64(buf, code);
    put_bytes(buf, data);
}

pub fn put_fields(buf: &mut Vec<u8>, fields: &[Field]) {
    put_u64(buf, fields.len() as u64);
    for f in fields {
        match f {
            Field::Int(i) => {
                put_u64(buf, 0);
                put_u64(buf, *i);
            }
            Field::Str(s) => {
                put_u64(buf, 1);
                put_bytes(buf, s);
            }
        }
    }
}

pub async fn read_fields<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Vec<Field>> {
    read_fields_with(r, limits, &mut Text::Whole).await
}

async fn read_fields_with<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
    text: &mut Text,
) -> Result<Vec<Field>> {
    let n = read_len(r, "fields", limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        v.push(match read_u64(r, "field type").await? {
            0 => Field::Int(read_u64(r, "int field").await?),
            1 => Field::Str(
                text.read(r, "string field", limits.max_string_bytes)
                    .await?,
            ),
            value => {
                return Err(Error::BadValue {
                    field: "field type",
                    value,
                });
            }
        });
    }
    Ok(v)
}

/// Most bytes of one log text kept from a backend's STDERR message
/// ([`StderrMsg::read_log_capped`]); Nix sends a build log line whole, so a
/// line without a newline can be anything long.
pub const MAX_LOG_MESSAGE: usize = 1 << 20;

/// How the text strings of a message are read.
enum Text {
    /// Whole, up to the string limit (longer is refused).
    Whole,
    /// Up to [`MAX_LOG_MESSAGE`], whatever the length; the rest dropped.
    Capped { dropped: u64 },
}

impl Text {
    async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<u8>> {
        match self {
            Text::Whole => read_bytes(r, field, max).await,
            Text::Capped { dropped } => {
                let (v, n) = read_bytes_capped(r, field, MAX_LOG_MESSAGE).await?;
                *dropped += n;
                Ok(v)
            }
        }
    }

    fn dropped(&self) -> u64 {
        match self {
            Text::Whole => 0,
            Text::Capped { dropped } => *dropped,
        }
    }
}

/// How an op's STDERR stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrEnd {
    /// `STDERR_LAST`: the op's result follows.
    Last,
    /// `STDERR_ERROR`: the op failed, no result follows.
    Error(WorkerError),
}

/// Client side: reads messages up to `LAST` or `ERROR`, handing every other
/// message to `on_msg`. `STDERR_READ` is refused: only the ops that pull
/// data (AddToStoreNar at 1.21–1.22) expect it, and they must answer it, so
/// they loop over [`StderrMsg::read`] themselves.
pub async fn read_stderr_stream<R, F>(
    r: &mut R,
    version: WorkerVersion,
    limits: &Limits,
    mut on_msg: F,
) -> Result<StderrEnd>
where
    R: AsyncRead + Unpin,
    F: FnMut(StderrMsg) -> Result<()>,
{
    loop {
        match StderrMsg::read(r, version, limits).await? {
            StderrMsg::Last => return Ok(StderrEnd::Last),
            StderrMsg::Error(e) => return Ok(StderrEnd::Error(e)),
            StderrMsg::Read(_) => {
                return Err(Error::Protocol(
                    "unexpected STDERR_READ: this op sends no data on request".into(),
                ));
            }
            m => on_msg(m)?,
        }
    }
}

/// Client side of `STDERR_READ max` (AddToStoreNar at 1.21–1.22, where the
/// server pulls the NAR): one `str` of at most `max` bytes; empty = no more.
pub fn write_read_reply(buf: &mut Vec<u8>, data: &[u8]) {
    put_bytes(buf, data);
}

/// Server side: the client's answer to `STDERR_READ max`; longer than
/// `max` (or the string limit) is refused before allocating.
pub async fn read_read_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
    limits: &Limits,
) -> Result<Vec<u8>> {
    let max = usize::try_from(max)
        .unwrap_or(usize::MAX)
        .min(limits.max_string_bytes);
    read_bytes(r, "STDERR_READ reply", max).await
}
