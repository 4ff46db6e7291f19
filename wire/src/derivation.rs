//! A `.drv` file: the ATerm text Nix writes for a derivation
//! (`Derive([outputs],[inputDrvs],[inputSrcs],"system","builder",[args],[env])`),
//! parsed and printed back byte-exactly, and the hashes that name its
//! outputs ([`hash_modulo`], [`output_path`]), as Nix's
//! `src/libstore/derivations.cc` defines them.
//!
//! Remote-store builds (`nix build --store ssh-ng://relay`) name a `.drv`
//! already in the relay's store; the relay reads it with this module to
//! build its inputs first and then the derivation itself, as a
//! [`BasicDerivation`].

use std::collections::BTreeMap;

use crate::build::{BasicDerivation, DerivationOutput};
use crate::hash::Sha256Hash;
use crate::store_path::StorePath;
use crate::{Error, Result};

/// A parsed `.drv` file, in the file's (sorted) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub outputs: Vec<DerivationOutput>,
    /// Input derivations and the outputs of each that this one uses.
    pub input_drvs: Vec<(StorePath, Vec<String>)>,
    pub input_srcs: Vec<StorePath>,
    pub platform: String,
    pub builder: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

/// How a derivation's outputs are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Every output path is known before the build.
    Input,
    /// One output `out` whose content hash is declared (a fetch).
    Fixed,
    /// Content-addressed outputs whose paths are known only after the
    /// build (`__contentAddressed = true`), or impure ones.
    Floating,
}

impl Derivation {
    /// Parses the ATerm `text` of a `.drv` file.
    pub fn parse(text: &[u8]) -> Result<Self> {
        let mut p = Parser { s: text, at: 0 };
        p.lit(b"Derive(")?;
        let outputs = p.list(|p| {
            p.lit(b"(")?;
            let name = p.utf8()?;
            p.lit(b",")?;
            let path = p.utf8()?;
            p.lit(b",")?;
            let hash_algo = p.utf8()?;
            p.lit(b",")?;
            let hash = p.utf8()?;
            p.lit(b")")?;
            Ok(DerivationOutput {
                name,
                path,
                hash_algo,
                hash,
            })
        })?;
        p.lit(b",")?;
        let input_drvs = p.list(|p| {
            p.lit(b"(")?;
            let path = p.path()?;
            p.lit(b",")?;
            if p.peek() == Some(b'(') {
                return Err(p.bad("dynamic derivation inputs are not supported"));
            }
            let outs = p.list(Parser::utf8)?;
            p.lit(b")")?;
            Ok((path, outs))
        })?;
        p.lit(b",")?;
        let input_srcs = p.list(Parser::path)?;
        p.lit(b",")?;
        let platform = p.utf8()?;
        p.lit(b",")?;
        let builder = p.string()?;
        p.lit(b",")?;
        let args = p.list(Parser::string)?;
        p.lit(b",")?;
        let env = p.list(|p| {
            p.lit(b"(")?;
            let k = p.string()?;
            p.lit(b",")?;
            let v = p.string()?;
            p.lit(b")")?;
            Ok((k, v))
        })?;
        p.lit(b")")?;
        if p.at != text.len() {
            return Err(p.bad("bytes after the derivation"));
        }
        Ok(Derivation {
            outputs,
            input_drvs,
            input_srcs,
            platform,
            builder,
            args,
            env,
        })
    }

    /// The ATerm text; with `mask_outputs`, output paths and the
    /// environment variables named after outputs are blank; with
    /// `inputs`, those replace the input derivations (keyed by the hex
    /// hash of each, as [`hash_modulo`] needs).
    pub fn unparse(
        &self,
        mask_outputs: bool,
        inputs: Option<&BTreeMap<String, Vec<String>>>,
    ) -> Vec<u8> {
        let mut s = b"Derive([".to_vec();
        for (i, o) in self.outputs.iter().enumerate() {
            sep(&mut s, i);
            s.push(b'(');
            let path = if mask_outputs { "" } else { o.path.as_str() };
            let fields = [o.name.as_str(), path, o.hash_algo.as_str(), o.hash.as_str()];
            strings(&mut s, fields.iter().map(|f| f.as_bytes()));
            s.push(b')');
        }
        s.extend_from_slice(b"],[");
        let own: Vec<(&str, &Vec<String>)> = match inputs {
            Some(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            None => self
                .input_drvs
                .iter()
                .map(|(p, v)| (p.as_str(), v))
                .collect(),
        };
        for (i, (drv, outs)) in own.iter().enumerate() {
            sep(&mut s, i);
            s.push(b'(');
            quote(&mut s, drv.as_bytes());
            s.extend_from_slice(b",[");
            strings(&mut s, outs.iter().map(|o| o.as_bytes()));
            s.extend_from_slice(b"])");
        }
        s.extend_from_slice(b"],[");
        strings(
            &mut s,
            self.input_srcs.iter().map(|p| p.as_str().as_bytes()),
        );
        s.extend_from_slice(b"],");
        quote(&mut s, self.platform.as_bytes());
        s.push(b',');
        quote(&mut s, &self.builder);
        s.extend_from_slice(b",[");
        strings(&mut s, self.args.iter().map(Vec::as_slice));
        s.extend_from_slice(b"],[");
        for (i, (k, v)) in self.env.iter().enumerate() {
            sep(&mut s, i);
            s.push(b'(');
            quote(&mut s, k);
            s.push(b',');
            let masked = mask_outputs && self.outputs.iter().any(|o| o.name.as_bytes() == k);
            quote(&mut s, if masked { b"" } else { v });
            s.push(b')');
        }
        s.extend_from_slice(b"])");
        s
    }

    pub fn addressing(&self) -> Addressing {
        match self.outputs.as_slice() {
            [o] if o.name == "out" && !o.hash.is_empty() && !o.path.is_empty() => Addressing::Fixed,
            outs if outs.iter().all(|o| !o.path.is_empty() && o.hash.is_empty()) => {
                Addressing::Input
            }
            _ => Addressing::Floating,
        }
    }

    /// The path of output `name`, when it is known before the build.
    pub fn output(&self, name: &str) -> Option<StorePath> {
        let o = self.outputs.iter().find(|o| o.name == name)?;
        StorePath::parse(&o.path).ok()
    }

    /// What BuildDerivation sends for this derivation: its sources plus
    /// `inputs`, the outputs of its input derivations that it uses.
    pub fn to_basic(&self, inputs: impl IntoIterator<Item = StorePath>) -> BasicDerivation {
        let mut srcs: Vec<StorePath> = self.input_srcs.clone();
        srcs.extend(inputs);
        srcs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        srcs.dedup();
        BasicDerivation {
            outputs: self.outputs.clone(),
            input_srcs: srcs,
            platform: self.platform.clone(),
            builder: self.builder.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
        }
    }
}

/// Nix's `hashDerivationModulo`: a fixed-output derivation hashes to its
/// declared content; any other to its ATerm with each input derivation
/// replaced by that input's own hash (`input_hash`, computed the same way
/// with `mask_outputs = false`). With `mask_outputs` this is the hash that
/// names the outputs ([`output_path`]) and realisations.
pub fn hash_modulo(
    drv: &Derivation,
    mask_outputs: bool,
    mut input_hash: impl FnMut(&StorePath) -> Result<Sha256Hash>,
) -> Result<Sha256Hash> {
    if drv.addressing() == Addressing::Fixed {
        let o = &drv.outputs[0];
        let text = format!("fixed:out:{}:{}:{}", o.hash_algo, o.hash, o.path);
        return Ok(Sha256Hash::digest(text.as_bytes()));
    }
    let mut inputs = BTreeMap::new();
    for (path, outs) in &drv.input_drvs {
        inputs.insert(input_hash(path)?.to_hex(), outs.clone());
    }
    Ok(Sha256Hash::digest(
        &drv.unparse(mask_outputs, Some(&inputs)),
    ))
}

/// Nix's `makeOutputPath`: the path of output `output` of the derivation
/// `drv_path` whose (masked) [`hash_modulo`] is `hash`.
pub fn output_path(drv_path: &StorePath, output: &str, hash: &Sha256Hash) -> Result<StorePath> {
    let drv_name = drv_path
        .name()
        .strip_suffix(".drv")
        .unwrap_or(drv_path.name());
    let name = if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    };
    make_store_path(&format!("output:{output}"), hash, &name)
}

pub use crate::content_address::make_store_path;

/// What a client asks to build or to have (BuildPaths, QueryMissing):
/// worker ≥ 1.30 spells it `/nix/store/…` (opaque), `…drv!out1,out2` or
/// `…drv!*`; older ones `path!out1,out2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivedPath {
    Opaque(StorePath),
    /// Outputs of a derivation; `None` for all of them (`!*`).
    Built {
        drv: StorePath,
        outputs: Option<Vec<String>>,
    },
}

impl DerivedPath {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| Error::BadDerivation { at: 0, reason };
        let Some((drv, outs)) = s.split_once('!') else {
            return Ok(DerivedPath::Opaque(StorePath::parse(s)?));
        };
        let drv = StorePath::parse(drv)?;
        if !drv.is_derivation() {
            return Err(bad("outputs asked of a path that is not a .drv"));
        }
        if outs.contains('!') {
            return Err(bad("dynamic derivations (drv!x!out) are not supported"));
        }
        let outputs = match outs {
            "*" => None,
            "" => return Err(bad("no output names after '!'")),
            names => Some(names.split(',').map(str::to_owned).collect()),
        };
        Ok(DerivedPath::Built { drv, outputs })
    }
}

/// A built output as BuildResult's builtOutputs carry it before worker
/// feature `realisation-with-path-not-hash`: (`sha256:<hex>!<output>`,
/// the Realisation JSON Nix writes, `outPath` a base name).
pub fn realisation(drv_hash: &Sha256Hash, output: &str, path: &StorePath) -> (String, String) {
    let id = format!("sha256:{}!{output}", drv_hash.to_hex());
    let json = serde_json::json!({
        "dependentRealisations": {},
        "id": id,
        "outPath": path.base_name(),
        "signatures": [],
    });
    (id, json.to_string())
}

fn sep(s: &mut Vec<u8>, i: usize) {
    if i > 0 {
        s.push(b',');
    }
}

fn strings<'a>(s: &mut Vec<u8>, items: impl Iterator<Item = &'a [u8]>) {
    for (i, item) in items.enumerate() {
        sep(s, i);
        quote(s, item);
    }
}

/// Nix's `printString`: `"`, `\`, newline, CR and tab escaped.
fn quote(s: &mut Vec<u8>, text: &[u8]) {
    s.push(b'"');
    for &c in text {
        match c {
            b'"' => s.extend_from_slice(b"\\\""),
            b'\\' => s.extend_from_slice(b"\\\\"),
            b'\n' => s.extend_from_slice(b"\\n"),
            b'\r' => s.extend_from_slice(b"\\r"),
            b'\t' => s.extend_from_slice(b"\\t"),
            c => s.push(c),
        }
    }
    s.push(b'"');
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn bad(&self, reason: &'static str) -> Error {
        Error::BadDerivation {
            at: self.at,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn lit(&mut self, want: &[u8]) -> Result<()> {
        if !self.s[self.at..].starts_with(want) {
            return Err(self.bad("unexpected character"));
        }
        self.at += want.len();
        Ok(())
    }

    /// `[item,item,...]`
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        self.lit(b"[")?;
        let mut v = Vec::new();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(v);
        }
        loop {
            v.push(item(self)?);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(v);
                }
                _ => return Err(self.bad("expected ',' or ']'")),
            }
        }
    }

    /// A quoted string with Nix's escapes (`\x` is `x` for any other x).
    fn string(&mut self) -> Result<Vec<u8>> {
        self.lit(b"\"")?;
        let mut v = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.bad("unterminated string"));
            };
            self.at += 1;
            match c {
                b'"' => return Ok(v),
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.bad("unterminated string"));
                    };
                    self.at += 1;
                    v.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        e => e,
                    });
                }
                c => v.push(c),
            }
        }
    }

    fn utf8(&mut self) -> Result<String> {
        String::from_utf8(self.string()?).map_err(|_| self.bad("not UTF-8"))
    }

    fn path(&mut self) -> Result<StorePath> {
        let s = self.utf8()?;
        StorePath::parse(&s).map_err(|_| self.bad("not a store path"))
    }
}

#[cfg(test)]
mod tests;
