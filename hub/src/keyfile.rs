//! Key and document files: private keys are written 0600 and refused when others can read them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use edgefleet_common::{PublicKey, SecretKey, armor};

/// Largest key or document file we read (documents carry smoke tests and reference profiles).
const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

pub fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    read_at_most(path, MAX_FILE_BYTES)
}

/// Reads a file of at most `max` bytes (checked before reading).
pub fn read_at_most(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    check_size(path, max)?;
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Refuses a file larger than `max` bytes, saying how large it is.
pub fn check_size(path: &Path, max: u64) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > max {
        bail!(
            "{} is {} bytes; the limit is {max}",
            path.display(),
            meta.len()
        );
    }
    Ok(())
}

/// Loads a PKCS#8 PEM private key, refusing one that group or others can read.
pub fn load_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read key {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "private key {} has mode {mode:o}: others can read it. Run `chmod 600 {}` (and consider the key compromised if it was shared)",
                path.display(),
                path.display()
            );
        }
    }
    let text = String::from_utf8(read_bounded(path)?)
        .with_context(|| format!("{} is not a PEM text file", path.display()))?;
    SecretKey::from_pem(&text).with_context(|| format!("cannot load key {}", path.display()))
}

pub fn load_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = String::from_utf8(read_bounded(path)?)
        .with_context(|| format!("{} is not a text file", path.display()))?;
    PublicKey::parse(&text).with_context(|| format!("cannot load public key {}", path.display()))
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename) with
/// the given mode, refusing to overwrite unless `overwrite`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> anyhow::Result<()> {
    if !overwrite && path.exists() {
        bail!(
            "{} already exists; remove it first or choose another path",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename into {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads an armoured (or raw postcard) document file.
pub fn read_document(path: &Path, label: &str) -> anyhow::Result<Vec<u8>> {
    let raw = read_bounded(path)?;
    armor::decode(label, &raw).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a document (postcard bytes) as an armoured text file, replacing any old one.
pub fn write_document(path: &Path, label: &str, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, armor::encode(label, bytes).as_bytes(), 0o644, true)
}
