use std::time::Duration;

use super::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

struct T {
    name: &'static str,
    systems: Vec<String>,
    features: Vec<String>,
    price: f64,
    worst: f64,
    max_instances: u32,
    slots: u32,
}

fn t(name: &'static str, system: &str, price: f64) -> T {
    T {
        name,
        systems: s(&[system]),
        features: vec![],
        price,
        worst: price,
        max_instances: 2,
        slots: 4,
    }
}

fn names(p: &Plan) -> Vec<&str> {
    p.launch.iter().map(|l| l.template.as_str()).collect()
}

fn views(ts: &[T]) -> Vec<TemplateView<'_>> {
    ts.iter()
        .map(|t| TemplateView {
            name: t.name,
            systems: &t.systems,
            supported_features: &t.features,
            price_per_hour: t.price,
            worst_price_per_hour: t.worst,
            boot_estimate: Duration::from_secs(180),
            max_lifetime: Duration::from_secs(3600),
            max_instances: t.max_instances,
            slots: t.slots,
        })
        .collect()
}

fn group(system: &str, count: u32, waited_s: u64, static_can_serve: bool) -> WaitingGroup {
    WaitingGroup {
        system: system.into(),
        required_features: vec![],
        count,
        oldest_wait: Duration::from_secs(waited_s),
        static_can_serve,
    }
}

const RICH: Budget = Budget {
    per_day: 100.0,
    spent: 0.0,
    committed: 0.0,
};

#[test]
fn an_aarch64_job_nobody_can_serve_launches_the_arm_template() {
    let ts = [
        t("x86", "x86_64-linux", 0.1),
        t("arm", "aarch64-linux", 0.3),
    ];
    let plan = decide(
        &[group("aarch64-linux", 1, 0, false)],
        &views(&ts),
        &[],
        RICH,
    );
    assert_eq!(names(&plan), ["arm"]);
    let l = &plan.launch[0];
    assert_eq!(
        (l.system.as_str(), l.reason),
        ("aarch64-linux", Reason::NoStaticBackend)
    );
}

#[test]
fn servable_jobs_launch_only_after_waiting_longer_than_the_boot_estimate() {
    let ts = [t("x86", "x86_64-linux", 0.1)];
    let short = decide(
        &[group("x86_64-linux", 3, 60, true)],
        &views(&ts),
        &[],
        RICH,
    );
    assert!(short.launch.is_empty());
    let long = decide(
        &[group("x86_64-linux", 3, 181, true)],
        &views(&ts),
        &[],
        RICH,
    );
    assert_eq!(names(&long), ["x86"]);
    let waited = Duration::from_secs(181);
    assert_eq!(long.launch[0].reason, Reason::WaitedLonger { waited });
}

#[test]
fn the_cheapest_fitting_template_wins() {
    let mut big = t("big", "x86_64-linux", 0.2);
    big.features = s(&["kvm"]);
    let ts = [
        t("pricey", "x86_64-linux", 0.5),
        big,
        t("cheap", "x86_64-linux", 0.1),
    ];
    let plain = decide(
        &[group("x86_64-linux", 1, 0, false)],
        &views(&ts),
        &[],
        RICH,
    );
    assert_eq!(names(&plain), ["cheap"]);
    let mut kvm = group("x86_64-linux", 1, 0, false);
    kvm.required_features = s(&["kvm"]);
    let plan = decide(&[kvm], &views(&ts), &[], RICH);
    assert_eq!(names(&plan), ["big"], "only big supports kvm");
}

#[test]
fn one_instance_serves_as_many_jobs_as_it_has_slots() {
    let ts = [t("arm", "aarch64-linux", 0.3)];
    let plan = decide(
        &[group("aarch64-linux", 4, 0, false)],
        &views(&ts),
        &[],
        RICH,
    );
    assert_eq!(names(&plan), ["arm"]);
    let plan = decide(
        &[group("aarch64-linux", 5, 0, false)],
        &views(&ts),
        &[],
        RICH,
    );
    assert_eq!(names(&plan), ["arm", "arm"]);
}

#[test]
fn booting_instances_with_free_slots_are_used_before_launching() {
    let ts = [t("arm", "aarch64-linux", 0.3)];
    let booting = [InstanceView {
        template: "arm",
        free_slots: 4,
    }];
    let plan = decide(
        &[group("aarch64-linux", 3, 0, false)],
        &views(&ts),
        &booting,
        RICH,
    );
    assert!(plan.launch.is_empty(), "{plan:?}");
}

#[test]
fn never_more_than_max_instances() {
    let ts = [t("arm", "aarch64-linux", 0.3)];
    let up = [InstanceView {
        template: "arm",
        free_slots: 0,
    }];
    let plan = decide(
        &[group("aarch64-linux", 40, 0, false)],
        &views(&ts),
        &up,
        RICH,
    );
    assert_eq!(names(&plan), ["arm"], "max_instances is 2, one is up");
}

#[test]
fn the_budget_refuses_a_launch_whose_worst_case_does_not_fit() {
    let ts = [t("arm", "aarch64-linux", 0.3)];
    let tight = Budget {
        per_day: 1.0,
        spent: 0.5,
        committed: 0.25,
    };
    let plan = decide(
        &[group("aarch64-linux", 1, 0, false)],
        &views(&ts),
        &[],
        tight,
    );
    assert!(plan.launch.is_empty());
    assert_eq!(plan.refused_for_budget, ["arm"]);
    let enough = Budget {
        per_day: 1.1,
        ..tight
    };
    let plan = decide(
        &[group("aarch64-linux", 1, 0, false)],
        &views(&ts),
        &[],
        enough,
    );
    assert_eq!(names(&plan), ["arm"]);
}

#[test]
fn the_budget_counts_launches_planned_in_the_same_decision() {
    let ts = [t("arm", "aarch64-linux", 0.3)];
    let budget = Budget {
        per_day: 0.5,
        spent: 0.0,
        committed: 0.0,
    };
    let plan = decide(
        &[group("aarch64-linux", 8, 0, false)],
        &views(&ts),
        &[],
        budget,
    );
    assert_eq!(names(&plan), ["arm"]);
    assert_eq!(plan.refused_for_budget, ["arm"]);
}

#[test]
fn a_spot_templates_budget_reserves_its_on_demand_fallback_but_its_spot_price_orders_it() {
    let mut spot = t("spot", "aarch64-linux", 0.2);
    spot.worst = 0.6;
    let ts = [spot, t("steady", "aarch64-linux", 0.4)];
    let g = [group("aarch64-linux", 1, 0, false)];
    let plan = decide(&g, &views(&ts), &[], RICH);
    assert_eq!(names(&plan), ["spot"], "cheapest as first asked for");
    let budget = Budget {
        per_day: 0.5,
        spent: 0.0,
        committed: 0.0,
    };
    let plan = decide(&g, &views(&ts[..1]), &[], budget);
    assert!(
        plan.launch.is_empty(),
        "0.2 $ fits, a 0.6 $ fallback would not"
    );
    assert_eq!(plan.refused_for_budget, ["spot"]);
}

#[test]
fn jobs_no_template_fits_launch_nothing() {
    let ts = [t("x86", "x86_64-linux", 0.1)];
    let plan = decide(
        &[group("riscv64-linux", 1, 999, false)],
        &views(&ts),
        &[],
        RICH,
    );
    assert_eq!(plan, Plan::default());
}
