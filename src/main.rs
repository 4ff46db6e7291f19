use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use nix_relay::cli::{Cli, Cmd, LogFormat, load_config, serve};
use tracing_subscriber::EnvFilter;

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Cmd::Serve { config } => load_config(config.as_deref())
            .and_then(|c| tokio::runtime::Runtime::new()?.block_on(serve(c, config))),
        Cmd::CheckConfig { file } => match nix_relay::config::Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} clients, {} backends)",
                    file.display(),
                    c.clients.len(),
                    c.backends.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        Cmd::Keygen { name, out } => keygen(name, &out),
        Cmd::Status { url, json } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(nix_relay::cli::status(&url, json))),
        Cmd::Ec2(cmd) => nix_relay::ec2::cli::run(cmd),
        Cmd::Drain { name, admin } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(nix_relay::cli::drain(&name, true, &admin))),
        Cmd::Undrain { name, admin } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(nix_relay::cli::drain(&name, false, &admin))),
        Cmd::MachinesEntry { config, protocol } => load_config(config.as_deref())
            .and_then(|c| nix_relay::machines::entry(&c, protocol).map(|s| print!("{s}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nix-relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(name: Option<String>, out: &std::path::Path) -> anyhow::Result<()> {
    let name = name.unwrap_or_else(nix_relay::config::defaults::key_name);
    let key =
        nix_relay::store::signing::SecretKey::from_seed(&name, nix_relay::keys::random_seed()?);
    nix_relay::keys::write_signing_key(&key, out)?;
    eprintln!(
        "wrote {} and {}; add the public key to trusted-public-keys:",
        out.display(),
        nix_relay::keys::pub_path(out).display()
    );
    println!("{}", key.public());
    Ok(())
}
