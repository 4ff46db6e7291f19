//! Content-addressed store paths, computed as Nix computes them.
//!
//! ```text
//! camStr (AddToStore ≥ 1.25)   text:sha256 | fixed:sha256 | fixed:r:sha256
//! payload                      text, fixed: the file's bytes; fixed:r: a NAR
//! hash                         sha256 of that payload
//! store path                   /nix/store/<nix32(compress20(sha256(fp)))>-<name>
//!   fp  text:        "text[:<ref>…]:sha256:<hex>:/nix/store:<name>"
//!       fixed:r:     "source[:<ref>…]:sha256:<hex>:/nix/store:<name>"
//!       fixed:       "output:out:sha256:<hex of sha256("fixed:out:sha256:<hex>:")>:/nix/store:<name>"
//! narinfo CA                   text:sha256:<nix32> | fixed:[r:]sha256:<nix32>
//! ```
//! References are full paths in sorted order (Nix's `StorePathSet`); a flat
//! fixed-output path has none. Only sha256 is implemented: other algorithms
//! are refused by name.

use super::Error;
use super::hash::{Sha256Hash, compress_hash, nix32_encode};
use super::store_path::{STORE_DIR, StorePath};

/// How a content-addressed path's payload is ingested and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaMethod {
    /// `text:sha256`: a flat file with references (`.drv` files, `toFile`).
    Text,
    /// `fixed:sha256`: a flat file, no references.
    Flat,
    /// `fixed:r:sha256`: a NAR (file system object), references allowed.
    Recursive,
}

fn bad(cam: &str, reason: impl Into<String>) -> Error {
    Error::BadContentAddress {
        value: cam.chars().take(100).collect(),
        reason: reason.into(),
    }
}

impl CaMethod {
    /// Parses the `camStr` of AddToStore (method and hash algorithm).
    pub fn parse(cam: &str) -> Result<CaMethod, Error> {
        let (method, algo) = if let Some(a) = cam.strip_prefix("text:") {
            (CaMethod::Text, a)
        } else if let Some(a) = cam.strip_prefix("fixed:r:") {
            (CaMethod::Recursive, a)
        } else if let Some(a) = cam.strip_prefix("fixed:git:") {
            return Err(bad(cam, format!("git hashing ({a}) is not supported")));
        } else if let Some(a) = cam.strip_prefix("fixed:") {
            (CaMethod::Flat, a)
        } else {
            return Err(bad(cam, "unknown method (text:, fixed: or fixed:r:)"));
        };
        match algo {
            "sha256" => Ok(method),
            "md5" | "sha1" | "sha512" | "blake3" => Err(bad(
                cam,
                format!("hash algorithm {algo} is not supported (only sha256)"),
            )),
            _ => Err(bad(cam, format!("unknown hash algorithm {algo:?}"))),
        }
    }

    /// Whether the payload is a NAR (else the bytes of one regular file).
    pub fn takes_nar(self) -> bool {
        self == CaMethod::Recursive
    }

    /// The store path of a payload hashing to `hash` (sha256 of the file
    /// bytes, or of the NAR for [`CaMethod::Recursive`]).
    pub fn store_path(
        self,
        name: &str,
        hash: &Sha256Hash,
        refs: &[StorePath],
    ) -> Result<StorePath, Error> {
        let mut refs: Vec<&str> = refs.iter().map(StorePath::as_str).collect();
        refs.sort_unstable();
        refs.dedup();
        let with_refs = |ty: &str| {
            let mut t = ty.to_owned();
            for r in &refs {
                t.push(':');
                t.push_str(r);
            }
            t
        };
        match self {
            CaMethod::Text => make_store_path(&with_refs("text"), hash, name),
            CaMethod::Recursive => make_store_path(&with_refs("source"), hash, name),
            CaMethod::Flat if !refs.is_empty() => Err(bad(
                "fixed:sha256",
                "a flat fixed-output path cannot have references",
            )),
            CaMethod::Flat => {
                let inner = format!("fixed:out:sha256:{}:", hash.to_hex());
                make_store_path("output:out", &Sha256Hash::digest(inner.as_bytes()), name)
            }
        }
    }

    /// The narinfo `CA` field for a payload hashing to `hash`.
    pub fn render(self, hash: &Sha256Hash) -> String {
        let prefix = match self {
            CaMethod::Text => "text:",
            CaMethod::Flat => "fixed:",
            CaMethod::Recursive => "fixed:r:",
        };
        format!("{prefix}{}", hash.to_nix32_prefixed())
    }
}

/// Nix's `makeStorePath`: the path whose hash part is the first 20 bytes
/// (XOR-folded) of sha256("<type>:sha256:<hex>:/nix/store:<name>").
pub fn make_store_path(ty: &str, hash: &Sha256Hash, name: &str) -> Result<StorePath, Error> {
    let fp = format!("{ty}:sha256:{}:{STORE_DIR}:{name}", hash.to_hex());
    let digest = Sha256Hash::digest(fp.as_bytes());
    let part = nix32_encode(&compress_hash(&digest.0, 20));
    StorePath::from_base_name(&format!("{part}-{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::{NarNode, encode_nar};

    const HELLO: &[u8] = b"hello relay\n";

    // Expected paths from Nix 2.8 here: `nix-store --add`, `--add-fixed`,
    // `nix-instantiate` (/tmp files: see the test comments).
    #[test]
    fn flat_fixed_matches_nix_store_add_fixed() {
        // nix-store --add-fixed sha256 hello.txt
        let h = Sha256Hash::digest(HELLO);
        let p = CaMethod::Flat.store_path("hello.txt", &h, &[]).unwrap();
        assert_eq!(
            p.as_str(),
            "/nix/store/9snxcn6mvl8ynjsxpy4rn31wd655hyws-hello.txt"
        );
        assert!(CaMethod::Flat.store_path("x", &h, &[p]).is_err());
    }

    #[test]
    fn recursive_matches_nix_store_add() {
        // nix-store --add hello.txt (= --add-fixed --recursive sha256)
        let nar = encode_nar(&NarNode::Regular {
            executable: false,
            contents: HELLO.to_vec(),
        });
        let h = Sha256Hash::digest(&nar);
        let p = CaMethod::Recursive
            .store_path("hello.txt", &h, &[])
            .unwrap();
        assert_eq!(
            p.as_str(),
            "/nix/store/58s8h4wmfxv0kaaz00kg56xz2d45nhxd-hello.txt"
        );
        assert_eq!(
            CaMethod::Recursive.render(&h),
            format!("fixed:r:{}", h.to_nix32_prefixed())
        );
    }

    #[test]
    fn text_matches_nix_instantiate() {
        // builtins.toFile "dep.txt" "dep"
        let dep = CaMethod::Text
            .store_path("dep.txt", &Sha256Hash::digest(b"dep"), &[])
            .unwrap();
        assert_eq!(
            dep.as_str(),
            "/nix/store/fars50mlfk67nyzn0mc86b8gwbai49jr-dep.txt"
        );
        // nix-instantiate of a derivation referring to it
        let drv = concat!(
            r#"Derive([("out","/nix/store/0v60zj9lswr8q3ycml9196f7ymwqqzi2-golden","","")],"#,
            r#"[],["/nix/store/fars50mlfk67nyzn0mc86b8gwbai49jr-dep.txt"],"x86_64-linux","/bin/sh","#,
            r#"["-c","echo /nix/store/fars50mlfk67nyzn0mc86b8gwbai49jr-dep.txt > $out"],"#,
            r#"[("builder","/bin/sh"),("name","golden"),"#,
            r#"("out","/nix/store/0v60zj9lswr8q3ycml9196f7ymwqqzi2-golden"),("system","x86_64-linux")])"#
        );
        let h = Sha256Hash::digest(drv.as_bytes());
        let p = CaMethod::Text
            .store_path("golden.drv", &h, std::slice::from_ref(&dep))
            .unwrap();
        assert_eq!(
            p.as_str(),
            "/nix/store/jvc4is914shvirib0a9wzn7zfs1kgqx4-golden.drv"
        );
        // Without the reference the path differs: references are hashed.
        assert_ne!(CaMethod::Text.store_path("golden.drv", &h, &[]).unwrap(), p);
    }

    #[test]
    fn cam_strings() {
        assert_eq!(CaMethod::parse("text:sha256").unwrap(), CaMethod::Text);
        assert_eq!(CaMethod::parse("fixed:sha256").unwrap(), CaMethod::Flat);
        assert_eq!(
            CaMethod::parse("fixed:r:sha256").unwrap(),
            CaMethod::Recursive
        );
        for bad in [
            "fixed:sha1",
            "fixed:r:sha512",
            "fixed:git:sha1",
            "nar:sha256",
            "text:foo",
            "",
        ] {
            let e = CaMethod::parse(bad).unwrap_err().to_string();
            assert!(e.contains("content address"), "{bad}: {e}");
        }
        assert!(
            CaMethod::Text
                .store_path("a/b", &Sha256Hash::digest(b""), &[])
                .is_err()
        );
    }
}
