//! The relay store: NARs + metadata on disk in Nix's binary-cache layout.

pub mod narinfo;
