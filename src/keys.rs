//! Key files: the relay's SSH host key (ed25519, created on first start).

use std::io::Read;
use std::path::Path;

use crate::store::signing::SecretKey;
use anyhow::{Context, Result};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::{LineEnding, private::Ed25519Keypair};

pub fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    Ok(seed)
}

/// Loads the host key, or creates an ed25519 one (mode 0600) if missing.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    if path.exists() {
        return russh::keys::load_secret_key(path, None)
            .with_context(|| format!("loading host key {}", path.display()));
    }
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&random_seed()?));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    key.write_openssh_file(path, LineEnding::LF)
        .with_context(|| format!("writing host key {}", path.display()))?;
    let pub_path = path.with_extension("pub");
    key.public_key()
        .write_openssh_file(&pub_path)
        .with_context(|| format!("writing {}", pub_path.display()))?;
    tracing::info!(path = %path.display(), "created SSH host key");
    Ok(key)
}

/// The host key's public half as a config/known_hosts line: `type base64`.
pub fn public_line(path: &Path) -> Result<String> {
    let key = russh::keys::load_secret_key(path, None).with_context(|| {
        format!(
            "loading host key {} (start the relay once to create it)",
            path.display()
        )
    })?;
    Ok(openssh_line(key.public_key()))
}

pub fn openssh_line(key: &russh::keys::PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh().unwrap_or_default().trim().to_owned()
}

/// Loads the cache signing key, or creates one named `name` (mode 0600)
/// with its `.pub` beside it.
pub fn load_or_create_signing_key(path: &Path, name: &str) -> Result<SecretKey> {
    if path.exists() {
        return SecretKey::load(path)
            .with_context(|| format!("loading signing key {}", path.display()));
    }
    let key = SecretKey::from_seed(name, random_seed()?);
    write_signing_key(&key, path)?;
    tracing::info!(path = %path.display(), public = %key.public(), "created cache signing key");
    Ok(key)
}

/// Writes a secret key file (0600) and `<file>.pub`.
pub fn write_signing_key(key: &SecretKey, path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, key.to_file_text().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let pub_path = pub_path(path);
    std::fs::write(&pub_path, key.public().to_string())
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(())
}

pub fn pub_path(secret: &Path) -> std::path::PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}
