use std::path::Path;

use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsl9bcFHoLUq3ANWXnbW6LpSeLX/vfMeDfPmkl2aNB1 lab";

fn example() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:2300"
host_key = "/tmp/x/ssh_host_ed25519_key"
state_dir = "/tmp/x/state"

[[client]]
name = "lab"
key = "{KEY}"
trusted = true

[[backend]]
name = "h1"
uri = "ssh://root@127.0.0.1:2301"
ssh_key = "/tmp/x/id_ed25519"
host_key = "{KEY}"
systems = ["x86_64-linux"]
max_jobs = 2
speed_factor = 1.0
supported_features = ["big-parallel"]
mandatory_features = []
"#
    )
}

#[test]
fn the_documented_example_parses() {
    let c = Config::parse(&example(), Path::new("t.toml")).unwrap();
    assert_eq!(c.server.listen.port(), 2300);
    assert_eq!(c.clients.len(), 1);
    let b = &c.backends[0];
    assert_eq!(
        b.uri,
        BackendUri::Ssh {
            user: "root".into(),
            host: "127.0.0.1".into(),
            port: 2301,
            protocol: super::Protocol::Serve,
        }
    );
    assert_eq!(b.max_jobs, 2);
    assert_eq!(b.supported_features, ["big-parallel"]);
}

#[test]
fn untrusted_clients_marks_a_backend_and_defaults_to_false() {
    let c = Config::parse(&example(), Path::new("t.toml")).unwrap();
    assert!(!c.backends[0].untrusted_clients);
    let text = example().replace("max_jobs = 2", "max_jobs = 2\nuntrusted_clients = true");
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    assert!(c.backends[0].untrusted_clients);
}

#[test]
fn unknown_keys_are_refused() {
    let text = example().replace("max_jobs = 2", "max_jobs = 2\nmax_jbos = 3");
    let err = Config::parse(&text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_jbos"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = example()
        .replace("127.0.0.1:2300", "nonsense")
        .replace("max_jobs = 2", "max_jobs = 0")
        .replace(&format!("host_key = \"{KEY}\""), "host_key = \"garbage\"");
    let err = Config::parse(&text, Path::new("t.toml")).unwrap_err();
    let Error::Invalid { problems, .. } = err else {
        panic!("expected Invalid")
    };
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn max_log_size_has_a_bounded_default_and_must_be_positive() {
    let c = Config::parse(&example(), Path::new("t.toml")).unwrap();
    assert_eq!(c.limits.max_log_size, 64 << 20);
    let text = format!("{}\n[limits]\nmax_log_size = \"1GiB\"\n", example());
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    assert_eq!(c.limits.max_log_size, 1 << 30);
    let text = format!("{}\n[limits]\nmax_log_size = 0\n", example());
    let err = Config::parse(&text, Path::new("t.toml")).unwrap_err();
    let Error::Invalid { problems, .. } = err else {
        panic!("expected Invalid")
    };
    assert_eq!(problems, ["limits.max_log_size must be positive"]);
}

#[test]
fn sizes_and_durations_parse() {
    assert_eq!(parse_size("200GiB").unwrap(), 200 << 30);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("12 parsecs").is_err());
    assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
    assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
    assert!(parse_duration("soon").is_err());
}

#[test]
fn a_huge_duration_is_a_config_error_not_a_panic() {
    // 2^64 / 86400 < this many days: the multiplication overflows u64
    for huge in [
        "300000000000000000d",
        "99999999999999999999999",
        "18446744073709551615h",
        "3651d",
    ] {
        let e = parse_duration(huge).unwrap_err();
        assert!(e.contains("too long"), "{huge}: {e}");
    }
    assert_eq!(parse_duration("3650d").unwrap(), validate::MAX_DURATION);
    let text = example() + "\n[limits]\nhandshake_timeout = \"300000000000000000d\"\n";
    let Error::Invalid { problems, .. } = Config::parse(&text, Path::new("t.toml")).unwrap_err()
    else {
        panic!("expected Invalid")
    };
    assert!(
        problems[0].starts_with("limits.handshake_timeout: duration"),
        "{problems:?}"
    );
}

#[test]
fn duplicate_clients_are_refused_with_every_problem_at_once() {
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINkrbYYY+Ogo0PC3BP9fiAEu44+iJ4eZ+WW3/LroPi3N other";
    let client = |name: &str, key: &str, trusted: bool| {
        format!("\n[[client]]\nname = \"{name}\"\nkey = \"{key}\"\ntrusted = {trusted}\n")
    };
    // distinct names and keys: fine
    let ok = example() + &client("eve", OTHER, false);
    assert_eq!(
        Config::parse(&ok, Path::new("t.toml"))
            .unwrap()
            .clients
            .len(),
        2
    );
    // "lab" twice (another key), the first key again (another name), and an
    // unrelated problem: all three reported
    let text = example().replace("max_jobs = 2", "max_jobs = 0")
        + &client("lab", OTHER, false)
        + &client("mallory", KEY, false);
    let Error::Invalid { problems, .. } = Config::parse(&text, Path::new("t.toml")).unwrap_err()
    else {
        panic!("expected Invalid")
    };
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("client[1]: duplicate client name \"lab\" (also client[0])")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("client[2] (mallory): the same key as client[0] (lab)")),
        "{problems:#?}"
    );
}

#[test]
fn authorized_keys_may_not_repeat_a_client_key_or_name() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("authorized_keys");
    std::fs::write(&keys, KEY.replace(" lab", " other-name\n")).unwrap();
    let text = example().replace(
        "state_dir = \"/tmp/x/state\"",
        &format!(
            "state_dir = \"/tmp/x/state\"\nauthorized_keys = \"{}\"",
            keys.display()
        ),
    );
    // the same key under [[client]] and in authorized_keys: refused
    let Error::Invalid { problems, .. } = Config::parse(&text, Path::new("t.toml")).unwrap_err()
    else {
        panic!("expected Invalid")
    };
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("the same key as client[0]"),
        "{problems:#?}"
    );
    // the name of an authorized_keys entry (its comment) taken by a [[client]]
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINkrbYYY+Ogo0PC3BP9fiAEu44+iJ4eZ+WW3/LroPi3N";
    std::fs::write(&keys, format!("{other} lab\n")).unwrap();
    let Error::Invalid { problems, .. } = Config::parse(&text, Path::new("t.toml")).unwrap_err()
    else {
        panic!("expected Invalid")
    };
    assert!(
        problems[0].contains("duplicate client name \"lab\""),
        "{problems:#?}"
    );
}

#[test]
fn backend_uris() {
    use validate::parse_backend_uri as p;
    assert_eq!(p("local").unwrap(), BackendUri::Local);
    assert!(matches!(
        p("ssh://u@h").unwrap(),
        BackendUri::Ssh { port: 22, .. }
    ));
    assert!(p("ssh://h").is_err());
    assert!(p("http://u@h").is_err());
    assert_eq!(
        p("ssh-ng://root@10.0.0.2:2222").unwrap(),
        BackendUri::Ssh {
            user: "root".into(),
            host: "10.0.0.2".into(),
            port: 2222,
            protocol: super::Protocol::Worker,
        }
    );
    assert!(matches!(
        p("ssh-ng://u@builder.lan").unwrap(),
        BackendUri::Ssh {
            port: 22,
            protocol: super::Protocol::Worker,
            ..
        }
    ));
    assert!(matches!(
        p("ssh://u@h").unwrap(),
        BackendUri::Ssh {
            protocol: super::Protocol::Serve,
            ..
        }
    ));
    assert!(p("ssh-ng://h").is_err());
    assert!(p("ssh-ng:/u@h").is_err());
}

#[test]
fn cache_and_http_sections_parse_and_are_checked() {
    let text = example()
        + r#"
[cache]
signing_key = "/tmp/x/cache.sec"
key_name = "lab-1"
compression = "xz"
trusted_public_keys = ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
keep_going = true
max_size = "200GiB"

[http]
listen = "127.0.0.1:5000"
"#;
    let c = Config::parse(&text, Path::new("t.toml")).unwrap();
    assert_eq!(c.cache.compression, crate::store::Compression::Xz);
    assert_eq!(c.cache.max_size, Some(200 << 30));
    assert!(c.cache.keep_going);
    assert_eq!(c.cache.trusted_public_keys.len(), 1);
    assert_eq!(c.http_listen.unwrap().port(), 5000);
    let bad = text.replace("\"xz\"", "\"lz5\"").replace("6NCHdD59", "");
    let Error::Invalid { problems, .. } = Config::parse(&bad, Path::new("t.toml")).unwrap_err()
    else {
        panic!("expected Invalid")
    };
    assert_eq!(problems.len(), 2, "{problems:#?}");
}

#[test]
fn the_admin_endpoint_listens_on_loopback_only() {
    let with = |listen: &str| format!("{}\n[admin]\nlisten = \"{listen}\"\n", example());
    let c = Config::parse(&with("127.0.0.1:5001"), Path::new("t.toml")).unwrap();
    assert_eq!(c.admin_listen.unwrap().port(), 5001);
    let c = Config::parse(&with("[::1]:5001"), Path::new("t.toml")).unwrap();
    assert!(c.admin_listen.unwrap().ip().is_loopback());
    assert!(
        Config::parse(&example(), Path::new("t.toml"))
            .unwrap()
            .admin_listen
            .is_none(),
        "off unless configured"
    );
    for open in ["0.0.0.0:5001", "192.168.1.2:5001", "[::]:5001"] {
        let Error::Invalid { problems, .. } =
            Config::parse(&with(open), Path::new("t.toml")).unwrap_err()
        else {
            panic!("expected Invalid")
        };
        assert!(problems[0].contains("loopback"), "{problems:?}");
    }
}

fn with_limits(limits: &str) -> Result<Config, Vec<String>> {
    let text = format!("{}\n[limits]\n{limits}\n", example());
    match Config::parse(&text, Path::new("t.toml")) {
        Ok(c) => Ok(c),
        Err(Error::Invalid { problems, .. }) => Err(problems),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_stall_timeout_and_keepalive_interval_are_read_and_checked() {
    let d = with_limits("").unwrap().limits;
    assert_eq!(d.backend_stall_timeout, Duration::from_secs(300));
    assert_eq!(d.backend_keepalive_interval, Duration::from_secs(30));
    let short = with_limits("backend_stall_timeout = \"10s\"")
        .unwrap()
        .limits;
    assert_eq!(short.backend_stall_timeout, Duration::from_secs(10));
    assert_eq!(
        short.backend_keepalive_interval,
        Duration::from_millis(2500),
        "unset, the interval fits 4 keepalives into a short stall timeout"
    );
    let both = "backend_stall_timeout = \"60s\"\nbackend_keepalive_interval = \"20s\"";
    let both = with_limits(both).unwrap().limits;
    assert_eq!(both.backend_keepalive_interval, Duration::from_secs(20));
    let zero = with_limits("backend_stall_timeout = \"0s\"").unwrap_err();
    assert!(
        zero[0].contains("backend_stall_timeout must be positive"),
        "{zero:?}"
    );
    let slow = with_limits("backend_keepalive_interval = \"200s\"").unwrap_err();
    assert!(slow[0].contains("at most half"), "{slow:?}");
    let bad = with_limits("backend_stall_timeout = \"soon\"").unwrap_err();
    assert!(bad[0].contains("limits.backend_stall_timeout"), "{bad:?}");
}

#[test]
fn the_bucket_cap_is_a_size_and_needs_a_bucket() {
    let with =
        |cache: &str| Config::parse(&(example() + "\n[cache]\n" + cache), Path::new("t.toml"));
    let store = "store = \"s3://nix-cache?endpoint=http://127.0.0.1:9000\"\n";
    let c = with(&format!("{store}store_max_size = \"2TiB\"")).unwrap();
    assert_eq!(c.cache.store_max_size, Some(2 << 40));
    assert_eq!(with(store).unwrap().cache.store_max_size, None, "no cap");
    for (bad, says) in [
        ("store_max_size = \"1GiB\"", "needs cache.store"),
        (
            &format!("{store}store_max_size = \"lots\"") as &str,
            "store_max_size",
        ),
    ] {
        let Error::Invalid { problems, .. } = with(bad).unwrap_err() else {
            panic!("expected Invalid")
        };
        assert!(problems.iter().any(|p| p.contains(says)), "{problems:?}");
    }
}
