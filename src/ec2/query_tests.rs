//! The Query API client's request parameters and error classification.

use super::api::{ErrorKind, LaunchSpec, Market};
use super::query::{run_params, status_err};

fn spec(market: Market) -> LaunchSpec {
    LaunchSpec {
        name: "nix-relay ser5 arm".into(),
        template: "arm".into(),
        relay_id: "ser5".into(),
        instance_type: "c7g.4xlarge".into(),
        ami: "ami-0123".into(),
        subnet: Some("subnet-1".into()),
        security_group: None,
        market,
        user_data: "#!/bin/sh\necho hi\n".into(),
    }
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn run_instances_carries_tags_shutdown_terminate_and_base64_user_data() {
    let p = run_params(&spec(Market::OnDemand));
    for (k, v) in [
        ("ImageId", "ami-0123"),
        ("InstanceType", "c7g.4xlarge"),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("InstanceInitiatedShutdownBehavior", "terminate"),
        ("TagSpecification.1.ResourceType", "instance"),
        ("TagSpecification.1.Tag.1.Key", "owner"),
        ("TagSpecification.1.Tag.1.Value", "ser5"),
        ("TagSpecification.1.Tag.2.Key", "nix-relay-template"),
        ("TagSpecification.1.Tag.2.Value", "arm"),
        ("TagSpecification.1.Tag.3.Key", "Name"),
        ("TagSpecification.1.Tag.3.Value", "nix-relay ser5 arm"),
        ("SubnetId", "subnet-1"),
        ("UserData", "IyEvYmluL3NoCmVjaG8gaGkK"),
    ] {
        assert_eq!(get(&p, k), Some(v), "{k}");
    }
    assert_eq!(get(&p, "SecurityGroupId.1"), None);
    assert!(
        !p.iter()
            .any(|(k, _)| k.starts_with("InstanceMarketOptions"))
    );
}

#[test]
fn spot_asks_for_a_one_time_spot_instance_that_terminates() {
    let p = run_params(&spec(Market::Spot));
    assert_eq!(get(&p, "InstanceMarketOptions.MarketType"), Some("spot"));
    assert_eq!(
        get(&p, "InstanceMarketOptions.SpotOptions.SpotInstanceType"),
        Some("one-time")
    );
    assert_eq!(
        get(
            &p,
            "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"
        ),
        Some("terminate")
    );
}

fn err_doc(code: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><Response><Errors><Error><Code>{code}</Code><Message>m</Message></Error></Errors><RequestID>r</RequestID></Response>"
    )
}

#[test]
fn error_replies_are_classified_by_their_code_then_their_status() {
    let cases = [
        (
            503,
            err_doc("RequestLimitExceeded"),
            ErrorKind::Throttled,
            "RequestLimitExceeded",
        ),
        (
            500,
            err_doc("InternalError"),
            ErrorKind::Transient,
            "InternalError",
        ),
        (
            500,
            err_doc("InsufficientInstanceCapacity"),
            ErrorKind::NoSpot,
            "InsufficientInstanceCapacity",
        ),
        (
            400,
            err_doc("UnfulfillableCapacity"),
            ErrorKind::NoSpot,
            "UnfulfillableCapacity",
        ),
        (401, err_doc("AuthFailure"), ErrorKind::Fatal, "AuthFailure"),
        (
            400,
            err_doc("InvalidAMIID.NotFound"),
            ErrorKind::Fatal,
            "InvalidAMIID.NotFound",
        ),
        (
            502,
            "<html>bad gateway</html>".into(),
            ErrorKind::Transient,
            "HTTP502",
        ),
        (503, String::new(), ErrorKind::Transient, "HTTP503"),
        (429, String::new(), ErrorKind::Throttled, "HTTP429"),
        (403, "not xml".into(), ErrorKind::Fatal, "HTTP403"),
    ];
    for (status, body, kind, code) in cases {
        let e = status_err(status, body.as_bytes());
        assert_eq!((e.kind, e.code.as_str()), (kind, code), "{status} {body}");
    }
}
