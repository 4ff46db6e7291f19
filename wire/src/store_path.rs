//! Store paths: `/nix/store/<32 nix32 chars>-<name>`.
//!
//! On the wire store paths are full absolute paths; narinfo files use base
//! names. Parsing checks the store dir, the hash alphabet and the name's
//! character set, so a path that reaches the relay store can be used as a
//! file name component safely.

use std::fmt;

use super::Error;

pub const STORE_DIR: &str = "/nix/store";
pub const HASH_LEN: usize = 32;
const MAX_NAME_LEN: usize = 211;
const NIX32_ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

impl StorePath {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadStorePath {
            path: s.chars().take(300).collect(),
            reason,
        };
        let Some(base) = s.strip_prefix(STORE_DIR).and_then(|r| r.strip_prefix('/')) else {
            return Err(Self::foreign_dir(s).unwrap_or_else(|| bad("not under /nix/store")));
        };
        Self::check_base(base).map_err(bad)?;
        Ok(StorePath(s.to_owned()))
    }

    /// A well-formed store path in another store directory (a client whose
    /// Nix has another `store`/`NIX_STORE_DIR`): said as such.
    fn foreign_dir(s: &str) -> Option<Error> {
        let (dir, base) = s.rsplit_once('/')?;
        (dir.starts_with('/') && dir.len() > 1 && Self::check_base(base).is_ok()).then(|| {
            Error::ForeignStoreDir {
                path: s.chars().take(300).collect(),
                dir: dir.chars().take(200).collect(),
            }
        })
    }

    /// Parses a base name (`<hash>-<name>`) as found in narinfo files.
    pub fn from_base_name(base: &str) -> Result<Self, Error> {
        Self::check_base(base).map_err(|reason| Error::BadStorePath {
            path: base.chars().take(300).collect(),
            reason,
        })?;
        Ok(StorePath(format!("{STORE_DIR}/{base}")))
    }

    fn check_base(base: &str) -> Result<(), &'static str> {
        let b = base.as_bytes();
        if b.len() < HASH_LEN + 2 || b[HASH_LEN] != b'-' {
            return Err("too short or no dash after the hash");
        }
        if !b[..HASH_LEN].iter().all(|c| NIX32_ALPHABET.contains(c)) {
            return Err("hash part is not nix32");
        }
        let name = &b[HASH_LEN + 1..];
        if name.len() > MAX_NAME_LEN {
            return Err("name longer than 211 bytes");
        }
        let ok = |c: &u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(c);
        if !name.iter().all(ok) {
            return Err("name contains a forbidden character");
        }
        // As current Nix: the first dash-separated component may not be `.` or `..`.
        let first = name.split(|&c| c == b'-').next().unwrap_or(name);
        if first == b"." || first == b".." {
            return Err("name (or its first dash-separated part) is . or ..");
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<hash>-<name>`
    pub fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }

    pub fn hash_part(&self) -> &str {
        &self.base_name()[..HASH_LEN]
    }

    pub fn name(&self) -> &str {
        &self.base_name()[HASH_LEN + 1..]
    }

    pub fn is_derivation(&self) -> bool {
        self.0.ends_with(".drv")
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-busybox-static";

    #[test]
    fn splits_a_valid_path() {
        let p = StorePath::parse(P).unwrap();
        assert_eq!(p.hash_part(), "jsm9cyjvamk013ndqlj8ckgaqp3yrw28");
        assert_eq!(p.name(), "busybox-static");
        assert_eq!(p.base_name(), &P[11..]);
        assert_eq!(StorePath::from_base_name(p.base_name()).unwrap(), p);
    }

    #[test]
    fn rejects_paths_that_could_escape_a_directory() {
        for bad in [
            "/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-a/../b",
            "/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-..",
            "/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-.-foo",
            "/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-.",
            "/tmp/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-x",
            "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",
            "/nix/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-",
            "/nix/store/short-x",
        ] {
            assert!(StorePath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn another_store_directory_is_named_as_such() {
        let e = StorePath::parse("/gnu/store/jsm9cyjvamk013ndqlj8ckgaqp3yrw28-x").unwrap_err();
        assert!(
            matches!(&e, Error::ForeignStoreDir { dir, .. } if dir == "/gnu/store"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("store directory \"/gnu/store\""), "{msg}");
        assert!(msg.contains("only /nix/store"), "{msg}");
        // not a store path at all: the plain reason
        let e = StorePath::parse("/etc/passwd").unwrap_err();
        assert!(matches!(e, Error::BadStorePath { .. }), "{e:?}");
    }
}
