use std::time::{Duration, SystemTime};

use super::{Entry, Plan, Policy, narinfo_key, plan, prov_key};
use crate::s3::list::Object;

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}

/// An object last modified `age` before [`now`].
fn obj(key: &str, size: u64, age: Duration) -> Object {
    Object {
        key: key.into(),
        size,
        modified: Some(now() - age),
        etag: String::new(),
    }
}

fn entry(hash: &str, nar: &str, age: Duration) -> Entry {
    Entry {
        narinfo: obj(&format!("{hash}.narinfo"), 300, age),
        nar: Some(nar.into()),
    }
}

fn policy(max_size: u64) -> Policy {
    Policy {
        max_size,
        guard: HOUR,
    }
}

#[test]
fn keys_of_both_scopes_are_recognised() {
    assert_eq!(narinfo_key("abc.narinfo"), Some(("", "abc")));
    assert_eq!(
        narinfo_key("private/bob/abc.narinfo"),
        Some(("private/bob/", "abc"))
    );
    for not in ["nar/abc.narinfo", "private/bob", "abc.prov", ".narinfo"] {
        assert_eq!(narinfo_key(not), None, "{not}");
    }
    assert_eq!(
        prov_key("private/bob/abc.narinfo").unwrap(),
        "private/bob/meta/abc.prov"
    );
    assert!(super::is_nar("private/bob/nar/x.nar.zst") && super::is_nar("nar/x.nar"));
    assert!(!super::is_nar("meta/x.prov") && !super::is_nar("nix-cache-info"));
}

#[test]
fn the_least_recently_used_entries_go_until_the_nars_fit() {
    let day = 24 * HOUR;
    let entries = [
        entry("new", "nar/n", 2 * HOUR),
        entry("old", "nar/o", 3 * day),
        entry("mid", "nar/m", 2 * day),
    ];
    let nars = [
        obj("nar/n", 100, 2 * HOUR),
        obj("nar/o", 100, 3 * day),
        obj("nar/m", 100, 3 * day),
    ];
    let p = plan(&entries, &nars, true, policy(150), now());
    let evicted: Vec<&str> = p.evict.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(evicted, ["old.narinfo", "mid.narinfo"]);
    assert_eq!(p.evict[0].1.as_ref().unwrap().key, "nar/o", "its NAR too");
    assert_eq!(p.total, 100);
    assert!(p.orphans.is_empty() && p.dangling.is_empty());
    // Under the cap: nothing.
    let p = plan(&entries, &nars, true, policy(300), now());
    assert_eq!(
        p,
        Plan {
            total: 300,
            ..Plan::default()
        }
    );
}

#[test]
fn a_nar_shared_by_two_narinfos_stays_while_one_is_left() {
    let day = 24 * HOUR;
    let entries = [
        entry("a", "nar/shared", 3 * day),
        entry("b", "nar/shared", 2 * day),
        entry("c", "nar/c", 2 * HOUR),
    ];
    let nars = [obj("nar/shared", 100, 3 * day), obj("nar/c", 100, 2 * HOUR)];
    let p = plan(&entries, &nars, true, policy(150), now());
    assert_eq!(p.evict.len(), 2);
    assert_eq!(p.evict[0], ("a.narinfo".into(), None), "b still uses it");
    assert_eq!(p.evict[1].1.as_ref().unwrap().key, "nar/shared");
}

#[test]
fn nothing_younger_than_the_guard_goes_even_above_the_cap() {
    let entries = [entry("a", "nar/a", HOUR / 2), entry("b", "nar/b", HOUR / 3)];
    let nars = [
        obj("nar/a", 100, HOUR / 2),
        obj("nar/b", 100, HOUR / 3),
        obj("nar/uploading", 100, HOUR / 4),
    ];
    let p = plan(&entries, &nars, true, policy(10), now());
    assert_eq!(
        p,
        Plan {
            total: 300,
            ..Plan::default()
        }
    );
}

#[test]
fn old_unreferenced_nars_go_unless_a_narinfo_could_not_be_read() {
    let entries = [entry("a", "nar/a", 2 * HOUR)];
    let nars = [obj("nar/a", 100, 2 * HOUR), obj("nar/orphan", 50, 2 * HOUR)];
    let p = plan(&entries, &nars, true, policy(1000), now());
    assert_eq!(p.orphans, [nars[1].clone()]);
    assert_eq!(p.total, 100);
    let unread = [Entry {
        narinfo: obj("x.narinfo", 300, 2 * HOUR),
        nar: None,
    }];
    let p = plan(&unread, &nars, false, policy(1000), now());
    assert!(p.orphans.is_empty(), "x may refer to it");
}

#[test]
fn a_narinfo_whose_nar_is_gone_is_dangling_however_young() {
    let entries = [
        entry("a", "nar/gone", 2 * HOUR),
        entry("b", "nar/young", HOUR / 2),
    ];
    let p = plan(&entries, &[], true, policy(1000), now());
    let want: [(String, String); 2] = [
        ("a.narinfo".into(), "nar/gone".into()),
        ("b.narinfo".into(), "nar/young".into()),
    ];
    assert_eq!(p.dangling, want);
}

#[test]
fn an_unread_narinfo_is_not_evicted_for_space() {
    let entries = [
        Entry {
            narinfo: obj("x.narinfo", 300, 3 * HOUR),
            nar: None,
        },
        entry("a", "nar/a", 2 * HOUR),
    ];
    let nars = [obj("nar/a", 2000, 2 * HOUR)];
    let p = plan(&entries, &nars, false, policy(1000), now());
    let evicted: Vec<&str> = p.evict.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(evicted, ["a.narinfo"], "x frees nothing the pass can count");
}
