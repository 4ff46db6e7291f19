//! What a client's exec string asks for: `nix-store --serve [--write]`,
//! `nix-daemon --stdio`, or something refused with a reason.
//!
//! The exec string is split into shell words (quotes only: no expansion,
//! no operators) and only the program's basename is matched; it is never
//! given to a shell.

/// What a client's exec string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve { write: bool },
    Worker,
    Refused(String),
}

/// Parses an exec string as shell words and matches the program's basename.
pub fn parse_command(cmd: &[u8]) -> Command {
    let Ok(text) = std::str::from_utf8(cmd) else {
        return Command::Refused("command is not UTF-8".into());
    };
    let Some(words) = shell_words(text) else {
        return Command::Refused("unbalanced quotes in command".into());
    };
    let program = words.first().map(|w| w.rsplit('/').next().unwrap_or(w));
    match program {
        Some("nix-store") => serve_args(&words[1..]),
        Some("nix-daemon") => daemon_args(&words[1..]),
        _ => Command::Refused(format!(
            "only `nix-store --serve [--write]` and `nix-daemon --stdio` are served here, not {text:?}"
        )),
    }
}

fn daemon_args(args: &[String]) -> Command {
    let mut stdio = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--stdio" => stdio = true,
            "--store" if i + 1 < args.len() => i += 1,
            other => return Command::Refused(format!("unsupported nix-daemon argument {other:?}")),
        }
        i += 1;
    }
    if stdio {
        Command::Worker
    } else {
        Command::Refused("only `nix-daemon --stdio` is served here".into())
    }
}

fn serve_args(args: &[String]) -> Command {
    let (mut serve, mut write) = (false, false);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--serve" => serve = true,
            "--write" => write = true,
            "--store" if i + 1 < args.len() => i += 1,
            other => return Command::Refused(format!("unsupported nix-store argument {other:?}")),
        }
        i += 1;
    }
    if serve {
        Command::Serve { write }
    } else {
        Command::Refused("only `nix-store --serve [--write]` is served here".into())
    }
}

/// Minimal POSIX-shell word splitting: quotes and backslashes, no expansion.
fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(cur.take()),
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => w.push(chars.next()?),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).push(chars.next()?),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_store_serve_variants_are_accepted() {
        assert_eq!(
            parse_command(b"nix-store --serve --write"),
            Command::Serve { write: true }
        );
        assert_eq!(
            parse_command(b"nix-store --serve"),
            Command::Serve { write: false }
        );
        assert_eq!(
            parse_command(
                b"/nix/var/nix/profiles/default/bin/nix-store --serve --write --store '/tmp/x y'"
            ),
            Command::Serve { write: true }
        );
    }

    #[test]
    fn nix_daemon_stdio_starts_a_worker_session() {
        assert_eq!(parse_command(b"nix-daemon --stdio"), Command::Worker);
        assert_eq!(
            parse_command(b"nix-daemon --stdio --store 'ssh-ng://x'"),
            Command::Worker
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for cmd in [
            &b"bash"[..],
            b"nix-store --serve; rm -rf /",
            b"nix-store --serve --write && sh",
            b"nix-store --export /nix/store/x",
            b"echo hi",
            b"nix-store '--serve",
            b"nix-daemon",
            b"nix-daemon --stdio; sh",
            b"",
        ] {
            assert!(
                matches!(parse_command(cmd), Command::Refused(_)),
                "{:?}",
                String::from_utf8_lossy(cmd)
            );
        }
    }
}
