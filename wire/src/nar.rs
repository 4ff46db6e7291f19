//! Streaming NAR tokenizer: passes bytes through, finds the end of a NAR,
//! enforces the format's rules and computes sha256 + size on the fly.
//!
//! Every token is a wire byte string (u64 LE length, bytes, zero padding to
//! a multiple of 8). Grammar:
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" body ")"
//! body  = "regular" [ "executable" "" ] "contents" <bytes>
//!       | "symlink" "target" <target>
//!       | "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! Rules enforced: padding is zero; tags are at most [`MAX_TAG_LEN`] bytes;
//! entry names are non-empty, not `.` or `..`, free of `/` and NUL, at most
//! `max_name_len` bytes and strictly increasing bytewise within a directory;
//! symlink targets are 1..=`max_target_len` bytes without NUL; nodes nest at
//! most `max_depth` directories deep; a NAR holds at most `max_entries`
//! directory entries in all; the whole NAR is at most `max_nar_bytes`. Only canonical NARs are accepted (`type` first,
//! `executable` before `contents`), as current Nix does.
//!
//! `contents` is never buffered: it is only counted (and hashed with every
//! other byte), so memory is O(max_depth * max_name_len) whatever the file
//! sizes. The parser never consumes a byte after the root node's closing
//! `)`: a NAR is usually embedded in a protocol stream and what follows it
//! belongs to the next message.

use sha2::Digest as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::Error;
use super::hash::Sha256Hash;
use super::primitives::{padding_len, put_bytes};

/// Longest tag (`nix-archive-1`, `directory`, ...) accepted; current Nix's limit.
pub const MAX_TAG_LEN: usize = 32;
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Bounds on one NAR. Memory used by the parser is O(max_depth * max_name_len).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarLimits {
    /// Directories nested in directories (the root is depth 0).
    pub max_depth: usize,
    /// Longest entry name, in bytes (Linux's NAME_MAX is 255).
    pub max_name_len: usize,
    /// Longest symlink target, in bytes (Linux's PATH_MAX is 4096 with the NUL).
    pub max_target_len: usize,
    /// Directory entries in the whole NAR: bounds the inodes a consumer
    /// that unpacks it creates, whatever the NAR's size.
    pub max_entries: u64,
    pub max_nar_bytes: u64,
}

impl Default for NarLimits {
    fn default() -> Self {
        NarLimits {
            max_depth: 256,
            max_name_len: 255,
            max_target_len: 4095,
            max_entries: 1 << 24,
            max_nar_bytes: 1 << 40,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    pub size: u64,
    pub sha256: Sha256Hash,
}

/// The grammar position: which token comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    NodeOpen,
    TypeTag,
    TypeValue,
    ExecutableOrContents,
    ExecutableValue,
    ContentsTag,
    Contents,
    TargetTag,
    Target,
    NodeClose,
    EntryOrClose,
    EntryOpen,
    NameTag,
    Name,
    NodeTag,
    EntryClose,
    Done,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Magic => "\"nix-archive-1\"",
            Expect::NodeOpen | Expect::EntryOpen => "\"(\"",
            Expect::TypeTag => "\"type\"",
            Expect::TypeValue => "\"regular\", \"symlink\" or \"directory\"",
            Expect::ExecutableOrContents => "\"executable\" or \"contents\"",
            Expect::ExecutableValue => "\"\"",
            Expect::ContentsTag => "\"contents\"",
            Expect::Contents => "file contents",
            Expect::TargetTag => "\"target\"",
            Expect::Target => "symlink target",
            Expect::NodeClose | Expect::EntryClose => "\")\"",
            Expect::EntryOrClose => "\"entry\" or \")\"",
            Expect::NameTag => "\"name\"",
            Expect::Name => "entry name",
            Expect::NodeTag => "\"node\"",
            Expect::Done => "end of NAR",
        }
    }
}

/// Position inside the current token's bytes.
#[derive(Debug)]
enum Lex {
    /// Reading the 8-byte length.
    Len { buf: [u8; 8], have: usize },
    /// Buffering a short string (tag, name, target) into `NarParser::tok`.
    Str { len: usize },
    /// Counting `contents` bytes without keeping them.
    Contents { remaining: u64 },
    /// Checking the zero padding after the payload.
    Pad { remaining: usize },
}

/// A parse failure: absolute offset and reason. Kept so errors are sticky.
#[derive(Debug)]
struct Fail {
    offset: u64,
    reason: String,
}

impl Fail {
    fn to_error(&self) -> Error {
        Error::BadNar {
            offset: self.offset,
            reason: self.reason.clone(),
        }
    }
}

/// Per open directory: the previous entry name, for the sort check.
#[derive(Debug, Default)]
struct DirFrame {
    last_name: Option<Vec<u8>>,
}

/// Push parser. Feed it bytes; it consumes a prefix of each slice and never
/// consumes a byte past the end of the NAR.
pub struct NarParser {
    limits: NarLimits,
    expect: Expect,
    lex: Lex,
    /// Payload of the current short token.
    tok: Vec<u8>,
    tok_start: u64,
    tok_len: u64,
    dirs: Vec<DirFrame>,
    /// Directory entries seen so far, in the whole NAR.
    entries: u64,
    consumed: u64,
    /// `None`: [`NarParser::unhashed`], the caller hashes the bytes.
    hasher: Option<sha2::Sha256>,
    failed: Option<Fail>,
}

impl NarParser {
    /// A parser that also hashes every byte it consumes ([`NarParser::finish`]).
    pub fn new(limits: NarLimits) -> Self {
        NarParser {
            hasher: Some(sha2::Sha256::new()),
            ..NarParser::unhashed(limits)
        }
    }

    /// A parser that only tokenizes and counts: framing and the format's
    /// rules, for a caller that hashes the same bytes elsewhere (the
    /// store's writer hashes off the tee's path). [`NarParser::end`] gives
    /// the size; [`NarParser::finish`] refuses.
    pub fn unhashed(limits: NarLimits) -> Self {
        NarParser {
            limits,
            expect: Expect::Magic,
            lex: Lex::Len {
                buf: [0; 8],
                have: 0,
            },
            tok: Vec::new(),
            tok_start: 0,
            tok_len: 0,
            dirs: Vec::new(),
            entries: 0,
            consumed: 0,
            hasher: None,
            failed: None,
        }
    }

    /// Consumes a prefix of `buf` and returns its length. Once the NAR is
    /// complete it consumes nothing more (returns 0). Errors are sticky.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if let Some(f) = &self.failed {
            return Err(f.to_error());
        }
        let mut pos = 0;
        while pos < buf.len() && !self.is_done() {
            let room = self.limits.max_nar_bytes - self.consumed;
            if room == 0 {
                return Err(self.fail(self.consumed, "NAR exceeds max_nar_bytes".into()));
            }
            let end = buf
                .len()
                .min(pos.saturating_add(usize::try_from(room).unwrap_or(usize::MAX)));
            let chunk = &buf[pos..end];
            match self.step(chunk) {
                Ok(n) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(&chunk[..n]);
                    }
                    self.consumed += n as u64;
                    pos += n;
                }
                Err(f) => return Err(self.fail(f.offset, f.reason)),
            }
        }
        Ok(pos)
    }

    pub fn is_done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Size and sha256 of the complete NAR; an error if it is not complete
    /// (or the parser is [`NarParser::unhashed`]).
    pub fn finish(self) -> Result<NarSummary, Error> {
        let size = self.end()?;
        let Some(hasher) = self.hasher else {
            return Err(Error::Protocol(
                "NAR parser: finish() on an unhashed parser".into(),
            ));
        };
        Ok(NarSummary {
            size,
            sha256: Sha256Hash(hasher.finalize().into()),
        })
    }

    /// Size of the complete NAR; an error if it is not complete.
    pub fn end(&self) -> Result<u64, Error> {
        if let Some(f) = &self.failed {
            return Err(f.to_error());
        }
        if !self.is_done() {
            return Err(Error::BadNar {
                offset: self.consumed,
                reason: format!("truncated NAR: expected {}", self.expect.describe()),
            });
        }
        Ok(self.consumed)
    }

    fn fail(&mut self, offset: u64, reason: String) -> Error {
        let f = Fail { offset, reason };
        let e = f.to_error();
        self.failed = Some(f);
        e
    }

    /// Consumes at least one byte of the non-empty `input` (unless it fails).
    fn step(&mut self, input: &[u8]) -> Result<usize, Fail> {
        match &mut self.lex {
            Lex::Len { buf, have } => {
                let n = (8 - *have).min(input.len());
                buf[*have..*have + n].copy_from_slice(&input[..n]);
                *have += n;
                if *have == 8 {
                    let len = u64::from_le_bytes(*buf);
                    self.begin_payload(len)?;
                }
                Ok(n)
            }
            Lex::Str { len } => {
                let n = (*len - self.tok.len()).min(input.len());
                self.tok.extend_from_slice(&input[..n]);
                if self.tok.len() == *len {
                    self.end_payload()?;
                }
                Ok(n)
            }
            Lex::Contents { remaining } => {
                let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.end_payload()?;
                }
                Ok(n)
            }
            Lex::Pad { remaining } => {
                let n = (*remaining).min(input.len());
                if let Some(i) = input[..n].iter().position(|&b| b != 0) {
                    return Err(Fail {
                        offset: self.consumed + i as u64,
                        reason: "non-zero padding".into(),
                    });
                }
                *remaining -= n;
                if *remaining == 0 {
                    self.end_token()?;
                }
                Ok(n)
            }
        }
    }

    /// An error about the current token, reported at its first byte.
    fn err_tok(&self, reason: String) -> Fail {
        Fail {
            offset: self.tok_start,
            reason,
        }
    }

    /// The current token's length field is complete.
    fn begin_payload(&mut self, len: u64) -> Result<(), Fail> {
        self.tok_len = len;
        if self.expect == Expect::Contents {
            return self.begin_contents(len);
        }
        let max = match self.expect {
            Expect::Name => self.limits.max_name_len,
            Expect::Target => self.limits.max_target_len,
            Expect::Done => return Err(self.err_tok("token after the end of the NAR".into())),
            _ => MAX_TAG_LEN,
        };
        if len > max as u64 {
            let what = self.expect.describe();
            return Err(self.err_tok(format!("length {len} of {what} exceeds {max}")));
        }
        self.tok.clear();
        // len <= max, a usize.
        self.lex = Lex::Str { len: len as usize };
        if len == 0 {
            self.end_payload()?;
        }
        Ok(())
    }

    fn begin_contents(&mut self, len: u64) -> Result<(), Fail> {
        let end = (self.tok_start + 8)
            .checked_add(len)
            .and_then(|e| e.checked_add(padding_len(len) as u64));
        if end.is_none_or(|e| e > self.limits.max_nar_bytes) {
            return Err(self.err_tok(format!("contents of {len} bytes exceed max_nar_bytes")));
        }
        self.lex = Lex::Contents { remaining: len };
        if len == 0 {
            self.end_payload()?;
        }
        Ok(())
    }

    fn end_payload(&mut self) -> Result<(), Fail> {
        let pad = padding_len(self.tok_len);
        self.lex = Lex::Pad { remaining: pad };
        if pad == 0 {
            self.end_token()?;
        }
        Ok(())
    }

    /// A whole token (length, payload, padding) has been read.
    fn end_token(&mut self) -> Result<(), Fail> {
        let tok = std::mem::take(&mut self.tok);
        let next = self.advance(&tok);
        self.tok = tok;
        self.expect = next?;
        self.tok_start = self.consumed_after_step();
        self.lex = Lex::Len {
            buf: [0; 8],
            have: 0,
        };
        Ok(())
    }

    /// Offset where the next token starts: the current token's start plus
    /// its full encoded length.
    fn consumed_after_step(&self) -> u64 {
        self.tok_start + 8 + self.tok_len + padding_len(self.tok_len) as u64
    }

    /// The grammar: given the completed token, what comes next.
    fn advance(&mut self, tok: &[u8]) -> Result<Expect, Fail> {
        use Expect as E;
        let next = match (self.expect, tok) {
            (E::Magic, NAR_MAGIC) => E::NodeOpen,
            (E::NodeOpen, b"(") => E::TypeTag,
            (E::TypeTag, b"type") => E::TypeValue,
            (E::TypeValue, b"regular") => E::ExecutableOrContents,
            (E::TypeValue, b"symlink") => E::TargetTag,
            (E::TypeValue, b"directory") => {
                self.dirs.push(DirFrame::default());
                E::EntryOrClose
            }
            (E::ExecutableOrContents, b"executable") => E::ExecutableValue,
            (E::ExecutableValue, b"") => E::ContentsTag,
            (E::ExecutableOrContents | E::ContentsTag, b"contents") => E::Contents,
            (E::Contents, _) => E::NodeClose,
            (E::TargetTag, b"target") => E::Target,
            (E::Target, t) => self.check_target(t)?,
            (E::NodeClose, b")") => self.close_node(),
            (E::EntryOrClose, b"entry") => self.count_entry()?,
            (E::EntryOrClose, b")") => {
                self.dirs.pop();
                self.close_node()
            }
            (E::EntryOpen, b"(") => E::NameTag,
            (E::NameTag, b"name") => E::Name,
            (E::Name, n) => self.check_name(n)?,
            (E::NodeTag, b"node") => self.enter_child()?,
            (E::EntryClose, b")") => E::EntryOrClose,
            (e, t) => {
                let got = String::from_utf8_lossy(t);
                return Err(self.err_tok(format!("expected {}, got {got:?}", e.describe())));
            }
        };
        Ok(next)
    }

    fn close_node(&self) -> Expect {
        if self.dirs.is_empty() {
            Expect::Done
        } else {
            Expect::EntryClose
        }
    }

    fn count_entry(&mut self) -> Result<Expect, Fail> {
        if self.entries >= self.limits.max_entries {
            let max = self.limits.max_entries;
            return Err(self.err_tok(format!("more than {max} directory entries (max_entries)")));
        }
        self.entries += 1;
        Ok(Expect::EntryOpen)
    }

    fn enter_child(&self) -> Result<Expect, Fail> {
        if self.dirs.len() > self.limits.max_depth {
            let max = self.limits.max_depth;
            return Err(self.err_tok(format!("directories nested deeper than {max}")));
        }
        Ok(Expect::NodeOpen)
    }

    fn check_target(&self, t: &[u8]) -> Result<Expect, Fail> {
        if t.is_empty() {
            return Err(self.err_tok("empty symlink target".into()));
        }
        if t.contains(&0) {
            return Err(self.err_tok("symlink target contains NUL".into()));
        }
        Ok(Expect::NodeClose)
    }

    fn check_name(&mut self, name: &[u8]) -> Result<Expect, Fail> {
        let bad = match name {
            b"" => Some("empty entry name"),
            b"." | b".." => Some("entry name is . or .."),
            _ if name.contains(&b'/') => Some("entry name contains /"),
            _ if name.contains(&0) => Some("entry name contains NUL"),
            _ => None,
        };
        if let Some(reason) = bad {
            return Err(self.err_tok(format!("{reason}: {:?}", String::from_utf8_lossy(name))));
        }
        let Some(frame) = self.dirs.last_mut() else {
            return Err(self.err_tok("entry name outside a directory".into()));
        };
        if frame.last_name.as_deref().is_some_and(|last| last >= name) {
            let shown = String::from_utf8_lossy(name).into_owned();
            return Err(self.err_tok(format!("entry {shown:?} is not sorted or is a duplicate")));
        }
        let last = frame.last_name.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(name);
        Ok(Expect::NodeTag)
    }
}

/// Copies one NAR from `r` to `w`, validating it on the way. Reads exactly
/// the NAR's bytes from `r` (what follows stays buffered in `r`) and writes
/// exactly those bytes to `w`. Does not flush `w`.
pub async fn copy_nar<R, W>(r: &mut R, w: &mut W, limits: NarLimits) -> Result<NarSummary, Error>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut parser = NarParser::new(limits);
    while !parser.is_done() {
        let buf = r.fill_buf().await.map_err(|e| Error::read("NAR", e))?;
        if buf.is_empty() {
            return Err(Error::UnexpectedEof { field: "NAR" });
        }
        let n = parser.feed(buf)?;
        w.write_all(&buf[..n]).await.map_err(Error::Write)?;
        r.consume(n);
    }
    parser.finish()
}

/// A file system object, for building NARs in tests, fuzzing and benches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    Regular {
        executable: bool,
        contents: Vec<u8>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Entries in any order; [`encode_nar`] sorts them.
    Directory(Vec<(Vec<u8>, NarNode)>),
}

/// Encodes a canonical NAR (entries sorted by name). Duplicate or invalid
/// names are encoded as given, which makes invalid NARs easy to build.
pub fn encode_nar(node: &NarNode) -> Vec<u8> {
    let mut buf = Vec::new();
    put_bytes(&mut buf, NAR_MAGIC);
    encode_node(&mut buf, node);
    buf
}

fn encode_node(buf: &mut Vec<u8>, node: &NarNode) {
    put_bytes(buf, b"(");
    put_bytes(buf, b"type");
    match node {
        NarNode::Regular {
            executable,
            contents,
        } => {
            put_bytes(buf, b"regular");
            if *executable {
                put_bytes(buf, b"executable");
                put_bytes(buf, b"");
            }
            put_bytes(buf, b"contents");
            put_bytes(buf, contents);
        }
        NarNode::Symlink { target } => {
            put_bytes(buf, b"symlink");
            put_bytes(buf, b"target");
            put_bytes(buf, target);
        }
        NarNode::Directory(entries) => encode_dir(buf, entries),
    }
    put_bytes(buf, b")");
}

fn encode_dir(buf: &mut Vec<u8>, entries: &[(Vec<u8>, NarNode)]) {
    put_bytes(buf, b"directory");
    let mut sorted: Vec<&(Vec<u8>, NarNode)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, child) in sorted {
        put_bytes(buf, b"entry");
        put_bytes(buf, b"(");
        put_bytes(buf, b"name");
        put_bytes(buf, name);
        put_bytes(buf, b"node");
        encode_node(buf, child);
        put_bytes(buf, b")");
    }
}

mod flat;
pub use flat::file_contents;

#[cfg(test)]
mod tests;
