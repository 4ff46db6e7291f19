//! Decoding EC2 Query API replies (XML) into the `api` types. Lists are
//! `<xSet><item>…</item></xSet>`; only direct children are read (an
//! instance's `networkInterfaceSet` has its own `privateIpAddress`).

use crate::aws::xml::Element;

use super::TAG_TEMPLATE;
use super::api::{Instance, InstanceState, TypeInfo};

/// One `instancesSet` item; None without an `instanceId`.
pub fn instance(item: &Element) -> Option<Instance> {
    let template = item.items(&["tagSet"]).find_map(|t| {
        (t.text_at(&["key"]) == Some(TAG_TEMPLATE))
            .then(|| t.text_at(&["value"]).unwrap_or_default().to_owned())
    });
    Some(Instance {
        id: item.text_at(&["instanceId"])?.to_owned(),
        state: InstanceState::parse(item.text_at(&["instanceState", "name"]).unwrap_or("")),
        template,
        private_ip: item.text_at(&["privateIpAddress"]).map(str::to_owned),
        launched_at: (item.text_at(&["launchTime"])).and_then(crate::aws::time::parse_iso8601),
    })
}

/// RunInstances: the first instance launched.
pub fn run_instances(root: &Element) -> Option<Instance> {
    root.items(&["instancesSet"]).find_map(instance)
}

/// DescribeInstances: every instance of the page, and the next page's token.
pub fn describe_instances(root: &Element) -> (Vec<Instance>, Option<String>) {
    let instances = (root.items(&["reservationSet"]))
        .flat_map(|r| r.items(&["instancesSet"]))
        .filter_map(instance)
        .collect();
    (instances, root.text_at(&["nextToken"]).map(str::to_owned))
}

/// DescribeInstanceTypes (one type asked): its default vCPU count and
/// supported architectures; None without an `instanceTypeSet` item.
pub fn instance_type(root: &Element) -> Option<TypeInfo> {
    let t = root.items(&["instanceTypeSet"]).next()?;
    Some(TypeInfo {
        vcpus: (t.text_at(&["vCpuInfo", "defaultVCpus"])).and_then(|v| v.parse().ok()),
        architectures: (t.items(&["processorInfo", "supportedArchitectures"]))
            .filter_map(|a| a.text_at(&[]).map(str::to_owned))
            .collect(),
    })
}

/// An error reply's (code, message): `<Response><Errors><Error>` (EC2),
/// also `<ErrorResponse><Error>` and a bare `<Error>`.
pub fn error(root: &Element) -> Option<(String, String)> {
    let e = match root.name.as_str() {
        "Response" => root.at(&["Errors", "Error"])?,
        "ErrorResponse" => root.child("Error")?,
        "Error" => root,
        _ => return None,
    };
    let code = e.text_at(&["Code"])?.to_owned();
    Some((code, e.text_at(&["Message"]).unwrap_or("").to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::xml::parse;
    use std::time::{Duration, UNIX_EPOCH};

    fn fixture(name: &str) -> Element {
        let path = format!("{}/tests/ec2-replies/{name}", env!("CARGO_MANIFEST_DIR"));
        parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn aws_describe_instances_every_reservation_the_instances_own_ip_and_the_token() {
        let (list, token) = describe_instances(&fixture("aws-describe-instances.xml"));
        assert_eq!(list.len(), 2);
        let a = &list[0];
        assert_eq!(a.id, "i-1234567890abcdef0");
        assert_eq!(a.state, InstanceState::Running);
        assert_eq!(a.template.as_deref(), Some("graviton"));
        assert_eq!(
            a.private_ip.as_deref(),
            Some("192.168.1.88"),
            "not the ENI's .89"
        );
        assert_eq!(
            a.launched_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_525_797_979))
        );
        let b = &list[1];
        assert_eq!(
            (b.id.as_str(), b.state),
            ("i-0598c7d356eba48d7", InstanceState::Terminated)
        );
        assert_eq!(
            (b.template.as_deref(), b.private_ip.as_deref()),
            (None, None)
        );
        assert_eq!(token.as_deref(), Some("eyJ2IjoiMiIsImMiOiJleGFtcGxlIn0="));
    }

    #[test]
    fn moto_describe_instances_page() {
        let (list, token) = describe_instances(&fixture("moto-describe-instances.xml"));
        assert_eq!(list.len(), 5, "a page of MaxResults=5");
        assert!(
            list.iter()
                .all(|i| i.id.starts_with("i-") && i.launched_at.is_some())
        );
        assert!(list.iter().all(|i| {
            i.private_ip
                .as_deref()
                .is_some_and(|ip| ip.starts_with("10."))
        }));
        assert_eq!(token.as_deref(), Some("r-57f4e4b71dc387d19"));
    }

    #[test]
    fn moto_run_instances() {
        let i = run_instances(&fixture("moto-run-instances.xml")).unwrap();
        assert_eq!(i.id, "i-b33ecad1b9d72dc01");
        assert_eq!(i.state, InstanceState::Pending);
        assert_eq!(i.template.as_deref(), Some("arm"));
        assert_eq!(i.private_ip.as_deref(), Some("10.184.107.218"));
    }

    #[test]
    fn vcpus_and_architectures_of_the_type() {
        let moto = instance_type(&fixture("moto-describe-instance-types.xml")).unwrap();
        assert_eq!(
            (moto.vcpus, moto.architectures),
            (Some(8), vec!["arm64".into()])
        );
        let aws = instance_type(&fixture("aws-describe-instance-types.xml")).unwrap();
        assert_eq!(aws.vcpus, Some(16));
        assert_eq!(aws.architectures, ["arm64"]);
        assert_eq!(
            instance_type(&parse("<R><instanceTypeSet/></R>").unwrap()),
            None
        );
    }

    #[test]
    fn error_documents() {
        let (code, msg) = error(&fixture("aws-error-throttled.xml")).unwrap();
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("RequestLimitExceeded", "Request limit exceeded.")
        );
        let (code, _) = error(&fixture("moto-error.xml")).unwrap();
        assert_eq!(code, "InvalidInstanceType");
        let sts = parse("<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>");
        assert_eq!(
            error(&sts.unwrap()),
            Some(("Throttling".into(), String::new()))
        );
        assert_eq!(error(&fixture("moto-terminate-instances.xml")), None);
    }
}
