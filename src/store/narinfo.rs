//! `.narinfo` rendering and strict parsing (Nix's binary-cache format).
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>      required, full path
//! URL: nar/<nix32 filehash>.nar.zst         required
//! Compression: zstd                         default bzip2 when absent
//! FileHash: sha256:<nix32>                  optional
//! FileSize: <decimal>                       optional
//! NarHash: sha256:<nix32>                   required
//! NarSize: <decimal>                        required, non-zero
//! References: <base name> <base name> ...   always rendered, may be empty
//! Deriver: <base name of the .drv>          optional; `unknown-deriver` = none
//! System: <system>                          optional, legacy
//! Sig: <key name>:<base64 signature>        repeatable
//! CA: <content address>                     optional
//! ```
//!
//! Every line is `Key: value\n` (the value starts exactly two bytes after the
//! colon, the last line ends with `\n` too). Unknown keys are ignored.

use crate::wire::hash::Sha256Hash;
use crate::wire::store_path::StorePath;

/// What Nix assumes when a narinfo has no `Compression` line.
pub const DEFAULT_COMPRESSION: &str = "bzip2";
/// The `Deriver` value older Nix wrote for "no deriver".
const UNKNOWN_DERIVER: &str = "unknown-deriver";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Relative URL of the NAR file, e.g. `nar/<nix32 filehash>.nar.zst`.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, ...
    pub compression: String,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

/// A parse failure. `line` is 1-based; 0 means the file as a whole (a
/// required key is missing).
#[derive(Debug, thiserror::Error)]
#[error("narinfo line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl NarInfo {
    /// Renders in the order `nix copy` writes: StorePath, URL, Compression,
    /// FileHash, FileSize, NarHash, NarSize, References, Deriver, System, Sig*, CA.
    /// String fields must not contain newlines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        line("StorePath", self.store_path.as_str());
        line("URL", &self.url);
        line("Compression", &self.compression);
        if let Some(h) = &self.file_hash {
            line("FileHash", &h.to_nix32_prefixed());
        }
        if let Some(size) = self.file_size {
            line("FileSize", &size.to_string());
        }
        line("NarHash", &self.nar_hash.to_nix32_prefixed());
        line("NarSize", &self.nar_size.to_string());
        let refs: Vec<&str> = self.references.iter().map(StorePath::base_name).collect();
        line("References", &refs.join(" "));
        if let Some(d) = &self.deriver {
            line("Deriver", d.base_name());
        }
        if let Some(s) = &self.system {
            line("System", s);
        }
        for sig in &self.sigs {
            line("Sig", sig);
        }
        if let Some(ca) = &self.ca {
            line("CA", ca);
        }
        out
    }

    /// Strict parse (": " separator, trailing newline, required keys).
    pub fn parse(text: &str) -> Result<NarInfo, ParseError> {
        let mut fields = Fields::default();
        let body = text.strip_suffix('\n').ok_or_else(|| ParseError {
            line: text.lines().count().max(1),
            reason: "missing final newline".into(),
        })?;
        for (i, raw) in body.split('\n').enumerate() {
            let err = |reason: String| ParseError {
                line: i + 1,
                reason,
            };
            let (key, value) = raw
                .split_once(": ")
                .ok_or_else(|| err(format!("no \": \" in {raw:?}")))?;
            fields.set(key, value).map_err(err)?;
        }
        fields.finish()
    }

    /// `1;<path>;<narhash sha256:nix32>;<narsize>;<comma-joined sorted refs>`
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<&str> = self.references.iter().map(StorePath::as_str).collect();
        refs.sort_unstable();
        format!(
            "1;{};{};{};{}",
            self.store_path.as_str(),
            self.nar_hash.to_nix32_prefixed(),
            self.nar_size,
            refs.join(",")
        )
    }
}

/// Values seen so far while parsing.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Sha256Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256Hash>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Option<StorePath>>,
    system: Option<String>,
    sigs: Vec<String>,
    ca: Option<String>,
}

impl Fields {
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "StorePath" => once(&mut self.store_path, key, parse_path(value)?),
            "URL" => once(&mut self.url, key, non_empty(value)?),
            "Compression" => once(&mut self.compression, key, non_empty(value)?),
            "FileHash" => once(&mut self.file_hash, key, parse_hash(value)?),
            "FileSize" => once(&mut self.file_size, key, parse_u64(value)?),
            "NarHash" => once(&mut self.nar_hash, key, parse_hash(value)?),
            "NarSize" => once(&mut self.nar_size, key, parse_nar_size(value)?),
            "References" => once(&mut self.references, key, parse_refs(value)?),
            "Deriver" => once(&mut self.deriver, key, parse_deriver(value)?),
            "System" => once(&mut self.system, key, value.to_owned()),
            "Sig" => {
                self.sigs.push(non_empty(value)?);
                Ok(())
            }
            "CA" => once(&mut self.ca, key, non_empty(value)?),
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<NarInfo, ParseError> {
        let missing = |key: &str| ParseError {
            line: 0,
            reason: format!("missing required key {key}"),
        };
        Ok(NarInfo {
            store_path: self.store_path.ok_or_else(|| missing("StorePath"))?,
            url: self.url.ok_or_else(|| missing("URL"))?,
            compression: self
                .compression
                .unwrap_or_else(|| DEFAULT_COMPRESSION.to_owned()),
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash: self.nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size: self.nar_size.ok_or_else(|| missing("NarSize"))?,
            references: self.references.unwrap_or_default(),
            deriver: self.deriver.flatten(),
            system: self.system,
            sigs: self.sigs,
            ca: self.ca,
        })
    }
}

fn once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("duplicate key {key}"));
    }
    *slot = Some(value);
    Ok(())
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("empty value".into());
    }
    Ok(value.to_owned())
}

fn parse_path(value: &str) -> Result<StorePath, String> {
    StorePath::parse(value).map_err(|e| e.to_string())
}

fn parse_hash(value: &str) -> Result<Sha256Hash, String> {
    Sha256Hash::parse_prefixed(value).map_err(|e| e.to_string())
}

fn parse_u64(value: &str) -> Result<u64, String> {
    // u64::from_str accepts a leading '+'; Nix writes plain digits only.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a decimal number: {value:?}"));
    }
    value
        .parse()
        .map_err(|_| format!("number out of range: {value:?}"))
}

fn parse_nar_size(value: &str) -> Result<u64, String> {
    match parse_u64(value)? {
        0 => Err("NarSize must not be 0".into()),
        n => Ok(n),
    }
}

fn parse_refs(value: &str) -> Result<Vec<StorePath>, String> {
    value
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|base| StorePath::from_base_name(base).map_err(|e| e.to_string()))
        .collect()
}

fn parse_deriver(value: &str) -> Result<Option<StorePath>, String> {
    if value == UNKNOWN_DERIVER {
        return Ok(None);
    }
    StorePath::from_base_name(value)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
