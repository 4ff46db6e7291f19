//! `[cache] upstream = [urls]` and its `upstream_*` timeouts.

use super::Upstream;
use super::raw::RawCache;
use super::validate::parse_duration;
use crate::outbound::BaseUrl;

/// Takes the upstream keys out of `c`; every problem goes to `p`.
pub(super) fn validate(c: &mut RawCache, p: &mut Vec<String>) -> Upstream {
    let mut u = Upstream::default();
    for (i, url) in std::mem::take(&mut c.upstream).into_iter().enumerate() {
        match BaseUrl::parse(&url) {
            Ok(b) if u.urls.contains(&b) => {
                p.push(format!("cache.upstream[{i}] {url:?}: listed twice"))
            }
            Ok(b) => u.urls.push(b),
            Err(e) => p.push(format!("cache.upstream[{i}]: {e}")),
        }
    }
    let mut read = |name: &str, v: Option<String>, into: &mut std::time::Duration| match v
        .as_deref()
        .map(parse_duration)
    {
        Some(Ok(d)) if d.is_zero() => p.push(format!("cache.{name}: must not be 0")),
        Some(Ok(d)) => *into = d,
        Some(Err(e)) => p.push(format!("cache.{name}: {e}")),
        None => {}
    };
    read(
        "upstream_connect_timeout",
        c.upstream_connect_timeout.take(),
        &mut u.connect_timeout,
    );
    read(
        "upstream_timeout",
        c.upstream_timeout.take(),
        &mut u.timeout,
    );
    read(
        "upstream_stall_timeout",
        c.upstream_stall_timeout.take(),
        &mut u.stall_timeout,
    );
    read(
        "upstream_negative_ttl",
        c.upstream_negative_ttl.take(),
        &mut u.negative_ttl,
    );
    u
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[[backend]]\nname = \"a\"\nuri = \"local\"\nsystems = [\"x86_64-linux\"]\n";
    const TRUST: &str = "trusted_public_keys = [\"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\"]\n";

    fn parse(cache: &str) -> Result<Config, String> {
        let toml = format!("{BASE}[cache]\n{cache}");
        Config::parse(&toml, std::path::Path::new("t.toml")).map_err(|e| crate::error_chain(&e))
    }

    #[test]
    fn upstream_keys_are_read_and_checked() {
        let c = parse(&format!(
            "{TRUST}upstream = [\"https://cache.nixos.org\", \"http://127.0.0.1:5000/sub/\"]\nupstream_connect_timeout = \"2s\"\nupstream_negative_ttl = \"10m\"\n",
        ))
        .unwrap();
        let u = &c.cache.upstream;
        assert_eq!(u.urls.len(), 2);
        assert_eq!(u.urls[1].path, "/sub");
        assert_eq!(u.connect_timeout.as_secs(), 2);
        assert_eq!(u.negative_ttl.as_secs(), 600);
        assert!(parse("").unwrap().cache.upstream.urls.is_empty());
        let e = parse(
            "upstream = [\"s3://bucket\", \"https://c.org/?priority=1\", \"https://a\", \"https://a\"]\nupstream_timeout = \"0s\"\n",
        )
        .unwrap_err();
        for want in [
            "upstream[0]",
            "upstream[1]",
            "upstream[3]",
            "upstream_timeout: must not be 0",
            "needs cache.trusted_public_keys",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
    }
}
