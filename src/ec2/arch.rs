//! Which instance types can build which Nix systems: DescribeInstanceTypes'
//! `ProcessorInfo.SupportedArchitectures` against a template's `systems`.
//! Checked at start for every template; a mismatch (an x86 type in an
//! aarch64 template) refuses the relay's start, since every job it would
//! launch for fails on an instance that cannot run its builder.

use super::Error;
use super::api::TypeInfo;
use crate::config::ec2::Template;

/// The EC2 architectures (`SupportedArchitectures` values) whose instances
/// run a Nix system's code natively. Empty: no EC2 instance type does (the
/// user data is for Linux AMIs; Mac instances are not launched).
pub fn architectures_for(system: &str) -> &'static [&'static str] {
    match system {
        "x86_64-linux" => &["x86_64"],
        "aarch64-linux" => &["arm64"],
        // 32-bit x86 code runs on every x86_64 CPU.
        "i686-linux" => &["i386", "x86_64"],
        _ => &[],
    }
}

/// A template whose instance type cannot build one of its systems.
#[derive(Debug, thiserror::Error)]
#[error(
    "EC2 template {template}: instance type {instance_type} supports {supported} \
     (DescribeInstanceTypes), which cannot build {system} (needs {wants}); \
     the template's systems: {systems}"
)]
pub struct Mismatch {
    pub template: String,
    pub instance_type: String,
    pub supported: String,
    pub system: String,
    pub wants: String,
    pub systems: String,
}

/// Ok when `info`'s architectures can build every one of `tpl`'s systems.
pub fn check(tpl: &Template, info: &TypeInfo) -> Result<(), Error> {
    for system in &tpl.systems {
        let wants = architectures_for(system);
        if !wants
            .iter()
            .any(|a| info.architectures.iter().any(|b| b == a))
        {
            return Err(Error::Architecture(Box::new(Mismatch {
                template: tpl.name.clone(),
                instance_type: tpl.instance_type.clone(),
                supported: list(&info.architectures),
                system: system.clone(),
                wants: if wants.is_empty() {
                    "an architecture EC2 does not offer".into()
                } else {
                    list(wants)
                },
                systems: tpl.systems.join(", "),
            })));
        }
    }
    Ok(())
}

fn list<S: AsRef<str>>(v: &[S]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(systems: &[&str], instance_type: &str) -> Template {
        Template {
            name: "t".into(),
            systems: systems.iter().map(|s| s.to_string()).collect(),
            supported_features: vec![],
            instance_type: instance_type.into(),
            ami: "ami-1".into(),
            subnet: None,
            security_group: None,
            spot: false,
            price_per_hour: 1.0,
            on_demand_price_per_hour: None,
            boot_estimate: std::time::Duration::from_secs(60),
            idle_grace: std::time::Duration::from_secs(60),
            max_lifetime: std::time::Duration::from_secs(3600),
            max_instances: 1,
            speed_factor: 1.0,
            max_jobs: None,
        }
    }

    fn info(archs: &[&str]) -> TypeInfo {
        TypeInfo {
            vcpus: Some(2),
            architectures: archs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn matching_architectures_pass() {
        assert!(check(&tpl(&["aarch64-linux"], "c7g.large"), &info(&["arm64"])).is_ok());
        let x86 = tpl(&["x86_64-linux", "i686-linux"], "c7i.large");
        assert!(check(&x86, &info(&["x86_64"])).is_ok());
        assert!(
            check(
                &tpl(&["i686-linux"], "t1.micro"),
                &info(&["i386", "x86_64"])
            )
            .is_ok()
        );
    }

    #[test]
    fn an_x86_type_in_an_aarch64_template_is_refused_naming_everything() {
        let e = check(&tpl(&["aarch64-linux"], "c7i.large"), &info(&["x86_64"])).unwrap_err();
        let msg = e.to_string();
        for part in [
            "template t",
            "c7i.large",
            "x86_64",
            "aarch64-linux",
            "arm64",
        ] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
    }

    #[test]
    fn every_system_of_the_template_must_fit() {
        let both = tpl(&["x86_64-linux", "aarch64-linux"], "c7g.large");
        let msg = check(&both, &info(&["arm64"])).unwrap_err().to_string();
        assert!(msg.contains("cannot build x86_64-linux"), "{msg}");
    }

    #[test]
    fn a_system_no_ec2_type_runs_and_a_type_without_architectures_are_refused() {
        let e = check(&tpl(&["riscv64-linux"], "c7g.large"), &info(&["arm64"])).unwrap_err();
        assert!(e.to_string().contains("does not offer"), "{e}");
        assert!(check(&tpl(&["aarch64-linux"], "c7g.large"), &info(&[])).is_err());
    }
}
