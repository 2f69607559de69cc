//! A publisher key the shop trusts (`[plugins] trusted_keys`): a minisign
//! public key, read from its line or its `.pub` file. The config owns the
//! type so it can refuse a bad key at its line; the signed-plugin check
//! (`connectors::trust`) verifies signatures with it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use minisign::PublicKey;

/// A manifest, signature or key file larger than this is not one: refusing
/// it early keeps a stray file from being read whole.
pub const MAX_SIDECAR_BYTES: u64 = 64 << 10;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // `error`, not `source`: the message already says it, and a chain
    // printed whole would say it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("`{input}`: {reason}")]
    Key { input: String, reason: String },
}

/// A publisher key the shop trusts.
#[derive(Clone)]
pub struct TrustedKey {
    key: PublicKey,
    key_id: String,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// The same key: its bytes (algorithm, key id, Ed25519 key).
impl PartialEq for TrustedKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.to_bytes() == other.key.to_bytes()
    }
}

impl TrustedKey {
    /// A minisign public key as written in config: the base64 line
    /// (`RW…`, as `minisign -G` prints it) or the path of a `.pub` file.
    pub fn parse(text: &str) -> Result<TrustedKey, KeyError> {
        let text = text.trim();
        let path = Path::new(text);
        if path.is_file() {
            return Self::from_file(path);
        }
        // Base64 has `/` too, so a key is told from a path by its prefix.
        if text.starts_with("RW") {
            return Self::from_base64(text).map_err(|reason| KeyError::Key {
                input: text.to_string(),
                reason,
            });
        }
        Err(KeyError::Key {
            input: text.to_string(),
            reason: "neither a minisign public key (the 56-character line starting with RW \
                     from the .pub file) nor the path of an existing .pub file"
                .into(),
        })
    }

    /// The key in a minisign `.pub` file: its line after the comment.
    pub fn from_file(path: &Path) -> Result<TrustedKey, KeyError> {
        let text = read_limited(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            error: source,
        })?;
        let text = String::from_utf8(text).map_err(|_| KeyError::Key {
            input: path.display().to_string(),
            reason: "not a text file".into(),
        })?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| KeyError::Key {
                input: path.display().to_string(),
                reason: "the file holds no key line".into(),
            })?;
        Self::from_base64(line).map_err(|reason| KeyError::Key {
            input: path.display().to_string(),
            reason,
        })
    }

    fn from_base64(line: &str) -> Result<TrustedKey, String> {
        let bad = |why: &str| format!("not a minisign public key: {why}");
        if line.len() != 56 {
            return Err(bad(&format!(
                "{} characters where a key has 56",
                line.len()
            )));
        }
        let key = PublicKey::from_base64(line).map_err(|e| bad(&e.to_string()))?;
        // The crate does not check the algorithm: `Ed` is minisign's only one.
        if !key.to_bytes().starts_with(b"Ed") {
            return Err(bad("not an Ed25519 key"));
        }
        let key_id = key_id(key.keynum());
        Ok(TrustedKey { key, key_id })
    }

    /// The key's id as minisign prints it (16 upper-case hex digits).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key itself, to verify signatures with.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }
}

/// minisign's key id: the 8-byte key number read little-endian, in hex.
pub fn key_id(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Reads a manifest, signature or key file, refusing one too large to be one.
pub fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SIDECAR_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_SIDECAR_BYTES >> 10
        )));
    }
    Ok(bytes)
}

/// Key pairs for tests, without the signing side.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    /// A public key written as `dir/<name>.pub`, as `minisign -G` would.
    #[derive(Debug)]
    pub(crate) struct WrittenKey {
        pub(crate) public_key: PathBuf,
        pub(crate) public_key_line: String,
        pub(crate) key_id: String,
    }

    pub(crate) fn write_key(dir: &Path, name: &str) -> WrittenKey {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().expect("key pair");
        let public_key = dir.join(format!("{name}.pub"));
        let text = pair.pk.to_box().expect("public key box").into_string();
        std::fs::write(&public_key, text).expect("write the public key");
        WrittenKey {
            public_key,
            public_key_line: pair.pk.to_base64(),
            key_id: super::key_id(pair.pk.keynum()),
        }
    }
}
