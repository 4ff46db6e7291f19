//! Real `.drv` files for remote-store build tests: ATerm derivations whose
//! output paths are computed as Nix computes them (hash modulo with the
//! outputs blanked), stored under their text-hashed path, with the NAR
//! and path info a client's `nix copy` sends.

use crate::wire::build::DerivationOutput;
use crate::wire::derivation::{Derivation, hash_modulo, make_store_path, output_path};
use crate::wire::hash::Sha256Hash;
use crate::wire::nar::{NarNode, encode_nar};
use crate::wire::path_info::ValidPathInfo;
use crate::wire::store_path::StorePath;

/// A `.drv` in the making: everything but its output paths.
pub struct DrvFile {
    pub path: StorePath,
    pub drv: Derivation,
    pub info: ValidPathInfo,
    pub nar: Vec<u8>,
    /// Its unmasked hash modulo (what a derivation using it hashes in).
    pub hash: Sha256Hash,
}

impl DrvFile {
    /// The path of output `name`.
    pub fn out(&self, name: &str) -> StorePath {
        self.drv
            .output(name)
            .unwrap_or_else(|| panic!("no output {name}"))
    }
}

/// An input-addressed derivation `name` for `system` with `outputs`,
/// using output `out` of each of `inputs` (their hashes come from
/// `inputs` themselves, as Nix's `hashDerivationModulo` recurses).
pub fn drv_file(name: &str, system: &str, outputs: &[&str], inputs: &[&DrvFile]) -> DrvFile {
    let mut drv = Derivation {
        outputs: (outputs.iter())
            .map(|o| DerivationOutput {
                name: (*o).into(),
                path: String::new(),
                hash_algo: String::new(),
                hash: String::new(),
            })
            .collect(),
        input_drvs: inputs
            .iter()
            .map(|i| (i.path.clone(), vec!["out".into()]))
            .collect(),
        input_srcs: Vec::new(),
        platform: system.into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), format!("echo {name} > $out").into_bytes()],
        env: Vec::new(),
    };
    drv.outputs.sort_by(|a, b| a.name.cmp(&b.name));
    drv.input_drvs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"name".to_vec(), name.as_bytes().to_vec())];
    env.extend(outputs.iter().map(|o| (o.as_bytes().to_vec(), Vec::new())));
    env.sort();
    drv.env = env;
    finish(name, drv, inputs)
}

fn finish(name: &str, mut drv: Derivation, inputs: &[&DrvFile]) -> DrvFile {
    let of_input = |p: &StorePath| -> crate::wire::Result<Sha256Hash> {
        let i = inputs.iter().find(|i| &i.path == p).expect("an input");
        Ok(i.hash)
    };
    let masked = hash_modulo(&drv, true, of_input).expect("hash modulo");
    let drv_name = format!("{name}.drv");
    // The output paths depend on the .drv's name only, not its path.
    let probe = StorePath::parse(&format!("/nix/store/{}-{drv_name}", "0".repeat(32))).unwrap();
    for o in &mut drv.outputs {
        o.path = output_path(&probe, &o.name, &masked)
            .unwrap()
            .as_str()
            .into();
    }
    for (k, v) in &mut drv.env {
        if let Some(o) = drv
            .outputs
            .iter()
            .find(|o| o.name.as_bytes() == k.as_slice())
        {
            *v = o.path.clone().into_bytes();
        }
    }
    let hash = hash_modulo(&drv, false, of_input).expect("hash modulo");
    let mut f = store_as_is(name, drv);
    f.hash = hash;
    f
}

/// `drv` as it is (output paths and all), stored under its text hash.
pub fn store_as_is(name: &str, drv: Derivation) -> DrvFile {
    let drv_name = format!("{name}.drv");
    let text = drv.unparse(false, None);
    let mut refs: Vec<String> = drv
        .input_drvs
        .iter()
        .map(|(p, _)| p.as_str().to_owned())
        .collect();
    refs.sort();
    let kind = std::iter::once("text".to_owned())
        .chain(refs)
        .collect::<Vec<_>>()
        .join(":");
    let text_hash = Sha256Hash::digest(&text);
    let path = make_store_path(&kind, &text_hash, &drv_name).unwrap();
    let nar = encode_nar(&NarNode::Regular {
        executable: false,
        contents: text,
    });
    let info = ValidPathInfo {
        path: path.clone(),
        deriver: None,
        nar_hash: Sha256Hash::digest(&nar),
        references: drv.input_drvs.iter().map(|(p, _)| p.clone()).collect(),
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: Vec::new(),
        ca: Some(format!("text:sha256:{}", text_hash.to_nix32())),
    };
    let hash = Sha256Hash::digest(b"");
    DrvFile {
        path,
        drv,
        info,
        nar,
        hash,
    }
}
