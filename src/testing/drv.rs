//! Store paths, sources and derivations for tests: deterministic paths
//! from names, NARs from the canonical encoder.

use crate::wire::build::{BasicDerivation, DerivationOutput};
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::{NarNode, encode_nar};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// `/nix/store/<hash of seed>-<name>`.
pub fn store_path(seed: &str, name: &str) -> StorePath {
    let hash = Sha256Hash::digest(seed.as_bytes()).to_nix32();
    StorePath::parse(&format!("/nix/store/{}-{name}", &hash[..32]))
        .unwrap_or_else(|e| panic!("test store path {name}: {e}"))
}

/// A source path (a regular file holding `contents`): its info and NAR,
/// as a client uploads it.
pub fn source(name: &str, contents: &[u8], references: &[StorePath]) -> (ValidPathInfo, Vec<u8>) {
    let nar = encode_nar(&NarNode::Regular {
        executable: false,
        contents: contents.to_vec(),
    });
    let info = ValidPathInfo {
        path: store_path(&format!("source {name}"), name),
        deriver: None,
        nar_hash: Sha256Hash::digest(&nar),
        references: references.iter().cloned().collect(),
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: Vec::new(),
        ca: None,
    };
    (info, nar)
}

/// A derivation `name` for `system` with the given inputs and one output
/// `out`: its `.drv` path and the BasicDerivation a client sends.
pub fn derivation(name: &str, system: &str, inputs: &[StorePath]) -> (StorePath, BasicDerivation) {
    let drv_path = store_path(&format!("drv {name}"), &format!("{name}.drv"));
    let out = store_path(&format!("out {name}"), name);
    let drv = BasicDerivation {
        outputs: vec![DerivationOutput {
            name: "out".into(),
            path: out.as_str().into(),
            hash_algo: String::new(),
            hash: String::new(),
        }],
        input_srcs: inputs.to_vec(),
        platform: system.into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), b"echo fake".to_vec()],
        env: vec![(b"out".to_vec(), out.as_str().as_bytes().to_vec())],
    };
    (drv_path, drv)
}

/// The path of output `out` of a derivation made by [`derivation`].
pub fn out_path(drv: &BasicDerivation) -> StorePath {
    drv.output_paths()
        .ok()
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| panic!("derivation without an output path"))
}

/// [`derivation`] with the outputs `names` (`out` first, say): every
/// output's path derived from the derivation's name and the output's.
pub fn multi_output(name: &str, system: &str, names: &[&str]) -> (StorePath, BasicDerivation) {
    let (drv_path, mut drv) = derivation(name, system, &[]);
    drv.outputs = names
        .iter()
        .map(|o| DerivationOutput {
            name: (*o).into(),
            path: store_path(&format!("out {name} {o}"), &format!("{name}-{o}"))
                .as_str()
                .into(),
            hash_algo: String::new(),
            hash: String::new(),
        })
        .collect();
    drv.env = drv
        .outputs
        .iter()
        .map(|o| (o.name.as_bytes().to_vec(), o.path.as_bytes().to_vec()))
        .collect();
    (drv_path, drv)
}
