//! `.drv` files written by real Nix 2.8 (`nix-instantiate`, in
//! `wire/tests/drv/`): a DAG with a multi-output derivation, a flat and a
//! recursive fixed-output one, and strings with every escape.

use std::collections::HashMap;

use super::*;

fn golden() -> HashMap<StorePath, (Vec<u8>, Derivation)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drv");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let text = std::fs::read(e.path()).unwrap();
            let drv = Derivation::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (StorePath::from_base_name(&name).unwrap(), (text, drv))
        })
        .collect()
}

fn modulo(
    all: &HashMap<StorePath, (Vec<u8>, Derivation)>,
    p: &StorePath,
    mask: bool,
) -> Sha256Hash {
    let drv = &all[p].1;
    hash_modulo(drv, mask, |input| Ok(modulo(all, input, false))).unwrap()
}

#[test]
fn real_drv_files_parse_and_print_back_byte_exactly() {
    let all = golden();
    assert_eq!(all.len(), 5);
    for (path, (text, drv)) in &all {
        assert_eq!(&drv.unparse(false, None), text, "{path}");
    }
}

#[test]
fn output_paths_follow_from_the_hash_modulo_as_nix_computes_them() {
    let all = golden();
    let mut checked = 0;
    for (path, (_, drv)) in &all {
        let h = modulo(&all, path, true);
        if drv.addressing() != Addressing::Input {
            continue;
        }
        for o in &drv.outputs {
            assert_eq!(
                output_path(path, &o.name, &h).unwrap().as_str(),
                o.path,
                "{path}!{}",
                o.name
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5, "top, leaf and the three outputs of multi");
}

#[test]
fn the_dag_and_its_kinds_are_read_from_the_file() {
    let all = golden();
    let (_, multi) = all
        .iter()
        .find(|(p, _)| p.name() == "multi.drv")
        .unwrap()
        .1
        .clone();
    let names: Vec<&str> = multi.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["dev", "lib", "out"]);
    assert_eq!(multi.input_drvs.len(), 2);
    assert_eq!(
        multi.args[1],
        b"echo \"quoted\\\\ \t tab\n\" > $out".to_vec()
    );
    let kind = |n: &str| {
        all.iter()
            .find(|(p, _)| p.name() == n)
            .unwrap()
            .1
            .1
            .addressing()
    };
    assert_eq!(kind("fetched.drv"), Addressing::Fixed);
    assert_eq!(kind("fetched-r.drv"), Addressing::Fixed);
    assert_eq!(kind("top.drv"), Addressing::Input);
    let basic = multi.to_basic([multi.output("dev").unwrap()]);
    assert_eq!(basic.input_srcs, [multi.output("dev").unwrap()]);
}

#[test]
fn floating_content_addressed_outputs_are_told_apart() {
    let text = br#"Derive([("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
    let drv = Derivation::parse(text).unwrap();
    assert_eq!(drv.addressing(), Addressing::Floating);
    assert_eq!(drv.output("out"), None);
}

#[test]
fn malformed_drv_files_are_refused_with_the_offset() {
    let all = golden();
    let (_, (text, _)) = all.iter().next().unwrap();
    for cut in [0, 7, text.len() / 2, text.len() - 1] {
        let e = Derivation::parse(&text[..cut]).unwrap_err();
        assert!(
            matches!(e, Error::BadDerivation { .. }),
            "cut at {cut}: {e}"
        );
    }
    let mut extra = text.clone();
    extra.push(b' ');
    assert!(Derivation::parse(&extra).is_err());
    let dynamic = br#"Derive([],[("/nix/store/32108pqazikx0al2l2rr1j53ds4iipdx-leaf.drv",(["out"],[]))],[],"x","y",[],[])"#;
    let e = Derivation::parse(dynamic).unwrap_err().to_string();
    assert!(e.contains("dynamic derivation"), "{e}");
    let not_path = br#"Derive([],[],["relative"],"x","y",[],[])"#;
    assert!(Derivation::parse(not_path).is_err());
}

#[test]
fn derived_paths_in_every_spelling() {
    let drv = "/nix/store/32108pqazikx0al2l2rr1j53ds4iipdx-leaf.drv";
    let sp = StorePath::parse(drv).unwrap();
    assert_eq!(
        DerivedPath::parse(drv).unwrap(),
        DerivedPath::Opaque(sp.clone())
    );
    let all = DerivedPath::parse(&format!("{drv}!*")).unwrap();
    assert_eq!(
        all,
        DerivedPath::Built {
            drv: sp.clone(),
            outputs: None
        }
    );
    let two = DerivedPath::parse(&format!("{drv}!out,dev")).unwrap();
    let names = Some(vec!["out".to_owned(), "dev".to_owned()]);
    assert_eq!(
        two,
        DerivedPath::Built {
            drv: sp,
            outputs: names
        }
    );
    for bad in [
        format!("{drv}!"),
        format!("{drv}!x!out"),
        "/nix/store/32108pqazikx0al2l2rr1j53ds4iipdx-leaf!out".into(),
        "relative!out".into(),
    ] {
        assert!(DerivedPath::parse(&bad).is_err(), "{bad}");
    }
}

#[test]
fn realisations_are_spelled_as_nix_2_8_sends_them() {
    // From tests/golden/serve/legacy-multi.s2c (a real Nix 2.8 backend).
    let h =
        Sha256Hash::parse_any("1498075be1b68a3191d38415bb39f98014a2fcd915235e13740ee5ae7192bc84")
            .unwrap();
    let p = StorePath::parse("/nix/store/82ayf5r3ih13mx8c4xjgg7w51psxrrly-lab-multi-dev").unwrap();
    let (id, json) = realisation(&h, "dev", &p);
    assert_eq!(
        id,
        "sha256:1498075be1b68a3191d38415bb39f98014a2fcd915235e13740ee5ae7192bc84!dev"
    );
    assert_eq!(
        json,
        format!(
            r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"82ayf5r3ih13mx8c4xjgg7w51psxrrly-lab-multi-dev","signatures":[]}}"#
        )
    );
}
