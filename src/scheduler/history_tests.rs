use super::*;

fn job(name: &str, system: &str, features: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        system: system.into(),
        required_features: features.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

const X: &str = "x86_64-linux";

#[test]
fn the_name_ends_at_the_first_dash_followed_by_a_digit() {
    assert_eq!(pname("hello-2.12.1"), "hello");
    assert_eq!(pname("hello-2.12.1.drv"), "hello");
    assert_eq!(pname("python3.11-requests-2.31.0"), "python3.11-requests");
    assert_eq!(pname("linux-6.1.55-modules"), "linux");
    assert_eq!(pname("nixos-system-nixos-24.05"), "nixos-system-nixos");
    assert_eq!(pname("no-version"), "no-version");
    assert_eq!(pname("trailing-"), "trailing-");
}

#[test]
fn an_unknown_job_gets_the_default_and_big_parallel_ranks_above_it() {
    let h = History::in_memory();
    assert_eq!(h.expected_secs(&job("foo-1.0", X, &[])), DEFAULT_SECS);
    assert_eq!(
        h.expected_secs(&job("llvm-16.0.6", X, &["big-parallel", "kvm"])),
        DEFAULT_BIG_PARALLEL_SECS
    );
    const { assert!(DEFAULT_BIG_PARALLEL_SECS > DEFAULT_SECS) };
}

#[test]
fn a_build_is_learned_per_name_without_version_and_per_system() {
    let h = History::in_memory();
    h.record("llvm-16.0.6.drv", X, Duration::from_secs(3000), 2.0);
    assert_eq!(
        h.expected_secs(&job("llvm-17.0.1", X, &[])),
        6000.0,
        "speed-normalised, the version ignored"
    );
    assert_eq!(
        h.expected_secs(&job("llvm-16.0.6", "aarch64-linux", &[])),
        DEFAULT_SECS,
        "another system is another key"
    );
}

#[test]
fn later_builds_move_the_average_halfway() {
    let h = History::in_memory();
    h.record("foo-1", X, Duration::from_secs(100), 1.0);
    h.record("foo-2", X, Duration::from_secs(200), 1.0);
    assert_eq!(h.expected_secs(&job("foo-3", X, &[])), 150.0);
}

#[test]
fn beyond_the_limit_the_least_recently_updated_key_is_forgotten() {
    let h = History::in_memory();
    for i in 0..MAX_KEYS {
        h.record(&format!("p{i}-1.0"), X, Duration::from_secs(500), 1.0);
    }
    h.record("p0-1.1", X, Duration::from_secs(500), 1.0); // p0 refreshed
    h.record("new-1.0", X, Duration::from_secs(500), 1.0);
    assert_eq!(h.len(), MAX_KEYS);
    assert_eq!(h.expected_secs(&job("p1-1.0", X, &[])), DEFAULT_SECS);
    assert_eq!(h.expected_secs(&job("p0-1.0", X, &[])), 500.0);
    assert_eq!(h.expected_secs(&job("new-2", X, &[])), 500.0);
}

#[test]
fn a_saved_history_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::load(dir.path());
    assert!(h.is_empty(), "no file yet: empty");
    h.record("gcc-13.2.0", X, Duration::from_secs(1200), 1.0);
    h.save_if_changed().unwrap();
    assert!(!dir.path().join("history.json.tmp").exists());
    let again = History::load(dir.path());
    assert_eq!(again.expected_secs(&job("gcc-14.1.0", X, &[])), 1200.0);
    again.record("gcc-14.1.0", X, Duration::from_secs(600), 1.0);
    again.save_if_changed().unwrap();
    assert_eq!(
        History::load(dir.path()).expected_secs(&job("gcc-1", X, &[])),
        900.0,
        "the newer save replaced the old file"
    );
}

#[test]
fn a_corrupt_file_means_an_empty_history_that_saves_over_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":1,\"entr").unwrap();
    let h = History::load(dir.path());
    assert!(h.is_empty());
    h.record("foo-1", X, Duration::from_secs(7), 1.0);
    h.save_if_changed().unwrap();
    assert_eq!(History::load(dir.path()).len(), 1);
}

#[test]
fn an_unwritable_dir_is_an_error_naming_the_file_and_the_change_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::load(&dir.path().join("missing-subdir"));
    h.record("foo-1", X, Duration::from_secs(7), 1.0);
    let e = h.save_if_changed().unwrap_err();
    assert!(e.to_string().contains("history.json"), "{e}");
    std::fs::create_dir(dir.path().join("missing-subdir")).unwrap();
    h.save_if_changed().unwrap();
    assert_eq!(History::load(&dir.path().join("missing-subdir")).len(), 1);
}

#[test]
fn an_unchanged_history_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::load(dir.path());
    h.save_if_changed().unwrap();
    assert!(
        !dir.path().join(FILE_NAME).exists(),
        "nothing learned: no file"
    );
}
