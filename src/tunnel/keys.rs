//! A host's static X25519 key pair: generated on first start, kept in a 0600 file, published
//! (the public half) through the lighthouse.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::handshake::noise_params;
use crate::error::{Error, IoContext, Result};
use crate::state::{create_private_dir, write_atomic};

pub const KEY_LEN: usize = 32;
pub type PublicKey = [u8; KEY_LEN];

pub struct StaticKeys {
    pub(crate) private: [u8; KEY_LEN],
    pub public: PublicKey,
}

impl StaticKeys {
    pub fn generate() -> Result<Self> {
        let pair = snow::Builder::new(noise_params())
            .generate_keypair()
            .map_err(|e| Error::crypto("generating key pair", e))?;
        let mut keys = StaticKeys {
            private: [0; KEY_LEN],
            public: [0; KEY_LEN],
        };
        keys.private.copy_from_slice(&pair.private);
        keys.public.copy_from_slice(&pair.public);
        Ok(keys)
    }

    /// Loads the key file (private key, then public key, base64, one per line), creating it
    /// on first use.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        if let Some(keys) = Self::load(path)? {
            return Ok(keys);
        }
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let keys = Self::generate()?;
        let text = format!(
            "{}\n{}\n",
            BASE64.encode(keys.private),
            encode_key(&keys.public)
        );
        write_atomic(path, text.as_bytes())?;
        Ok(keys)
    }

    /// Loads the key file if there is one. The file is opened without following symlinks and
    /// checked through that descriptor (a regular file of ours, mode 0600 or stricter) before
    /// it is read from the same descriptor: a key file others could read or swap is refused,
    /// not silently fixed.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening key file {}", path.display()), e)),
        };
        let meta = file
            .metadata()
            .context(|| format!("inspecting {}", path.display()))?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.file_type().is_file() || meta.uid() != uid {
            return Err(Error::InvalidConfig(format!(
                "key file {} must be a regular file owned by uid {uid}",
                path.display()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::InvalidConfig(format!(
                "key file {} is readable by others (mode {:o}); it must be 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let mut text = String::new();
        (&file)
            .take(4096)
            .read_to_string(&mut text)
            .context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).map(Some).ok_or_else(|| {
            Error::InvalidConfig(format!("key file {} is not a Flatnet key", path.display()))
        })
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let private = decode_key(lines.next()?)?;
        let public = decode_key(lines.next()?)?;
        Some(StaticKeys { private, public })
    }
}

pub fn encode_key(key: &PublicKey) -> String {
    BASE64.encode(key)
}

pub fn decode_key(text: &str) -> Option<PublicKey> {
    BASE64.decode(text.trim()).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host.key");
        let first = StaticKeys::load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = StaticKeys::load_or_generate(&path).unwrap();
        assert_eq!(first.public, again.public);
        assert_eq!(decode_key(&encode_key(&first.public)), Some(first.public));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(StaticKeys::load_or_generate(&path).is_err());
    }

    #[test]
    fn a_key_file_that_is_a_symlink_or_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        let first = StaticKeys::load_or_generate(&real).unwrap();
        let link = dir.path().join("host.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = StaticKeys::load(&link)
            .err()
            .expect("a symlinked key is refused");
        assert!(err.to_string().contains("host.key"), "{err}");
        // Nothing was generated over it either, and the real key is unchanged.
        assert!(StaticKeys::load_or_generate(&link).is_err());
        assert_eq!(
            StaticKeys::load(&real).unwrap().unwrap().public,
            first.public
        );

        let not_a_file = dir.path().join("dir.key");
        fs::create_dir(&not_a_file).unwrap();
        fs::set_permissions(&not_a_file, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(StaticKeys::load(&not_a_file).is_err());
    }
}
