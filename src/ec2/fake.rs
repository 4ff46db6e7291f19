//! An in-memory EC2 for unit tests in paused time: RunInstances answers
//! `pending`, the next describe says `running` (like moto), scripted errors are returned
//! first, and every call is recorded. DescribeInstanceTypes answers `vcpus`
//! and the architecture the type's name implies (c7g: arm64, c7i: x86_64).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::api::{ApiError, Ec2Api, Instance, InstanceState, LaunchSpec, TypeInfo};

type Fut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ApiError>> + Send + 'a>>;

#[derive(Debug, Clone)]
pub struct FakeInstance {
    pub inst: Instance,
    pub spec: LaunchSpec,
    pub owner: String,
}

#[derive(Default)]
pub struct Fake {
    pub instances: Mutex<Vec<FakeInstance>>,
    /// Errors the next calls return, in order, whatever the operation.
    pub errors: Mutex<VecDeque<ApiError>>,
    pub calls: Mutex<Vec<&'static str>>,
    /// Spot launches fail with InsufficientInstanceCapacity.
    pub no_spot: Mutex<bool>,
    pub vcpus: u32,
}

impl Fake {
    pub fn new(vcpus: u32) -> Fake {
        Fake {
            vcpus,
            ..Default::default()
        }
    }

    fn enter(&self, op: &'static str) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push(op);
        match self.errors.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn live(&self) -> Vec<FakeInstance> {
        (self.instances.lock().unwrap().iter())
            .filter(|i| !i.inst.state.is_gone())
            .cloned()
            .collect()
    }

    /// A spot interruption: the instance is gone without the relay asking.
    pub fn interrupt(&self, id: &str) {
        for i in self.instances.lock().unwrap().iter_mut() {
            if i.inst.id == id {
                i.inst.state = InstanceState::Terminated;
            }
        }
    }
}

/// The architecture AWS's naming gives a type: a `g` among the family's
/// attributes (c7g, m6gd, c7gn, t4g) is Graviton, arm64; the rest x86_64.
fn architecture_by_name(instance_type: &str) -> &'static str {
    let family = instance_type.split('.').next().unwrap_or("");
    let attributes = family.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    let attributes = attributes.trim_start_matches(|c: char| c.is_ascii_digit());
    if attributes.contains('g') {
        "arm64"
    } else {
        "x86_64"
    }
}

impl Ec2Api for Fake {
    fn run_instance<'a>(&'a self, spec: &'a LaunchSpec) -> Fut<'a, Instance> {
        Box::pin(async move {
            self.enter("RunInstances")?;
            if spec.market == super::Market::Spot && *self.no_spot.lock().unwrap() {
                return Err(ApiError::from_code(
                    "InsufficientInstanceCapacity",
                    "no spot",
                ));
            }
            let mut all = self.instances.lock().unwrap();
            let inst = Instance {
                id: format!("i-{:08x}", all.len() + 1),
                state: InstanceState::Pending,
                template: Some(spec.template.clone()),
                private_ip: Some(format!("127.0.2.{}", all.len() + 1)),
                launched_at: None,
            };
            all.push(FakeInstance {
                inst: inst.clone(),
                spec: spec.clone(),
                owner: spec.relay_id.clone(),
            });
            Ok(inst)
        })
    }

    fn describe_owned<'a>(&'a self, relay_id: &'a str) -> Fut<'a, Vec<Instance>> {
        Box::pin(async move {
            self.enter("DescribeInstances")?;
            let mut all = self.instances.lock().unwrap();
            let mut out = Vec::new();
            for i in all.iter_mut().filter(|i| i.owner == relay_id) {
                if i.inst.state == InstanceState::Pending {
                    i.inst.state = InstanceState::Running;
                }
                out.push(i.inst.clone());
            }
            Ok(out)
        })
    }

    fn terminate<'a>(&'a self, ids: &'a [String]) -> Fut<'a, ()> {
        Box::pin(async move {
            self.enter("TerminateInstances")?;
            for i in self.instances.lock().unwrap().iter_mut() {
                if ids.contains(&i.inst.id) {
                    i.inst.state = InstanceState::Terminated;
                }
            }
            Ok(())
        })
    }

    fn instance_type<'a>(&'a self, instance_type: &'a str) -> Fut<'a, Option<TypeInfo>> {
        Box::pin(async move {
            self.enter("DescribeInstanceTypes")?;
            Ok(Some(TypeInfo {
                vcpus: Some(self.vcpus),
                architectures: vec![architecture_by_name(instance_type).into()],
            }))
        })
    }
}
