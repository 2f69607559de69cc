//! Signed plugins with declared capabilities.
//!
//! Long because the manifest, its signature, the key list and the grant
//! (what a signed plugin may use) are one decision, made once before
//! compiling.
//!
//! A plugin `x.wasm` ships with `x.manifest.toml` beside it (who wrote it, the
//! wasm's SHA-256, what it needs) and `x.manifest.toml.minisig`, a standard
//! minisign signature of the manifest's bytes, so the stock tool checks it
//! too: `minisign -Vm x.manifest.toml -P <key>`. The manifest is what is
//! signed, not the wasm: a shop can read what it trusts, and the SHA-256 in
//! it binds the wasm.
//!
//! [`verify`] says whether a plugin file is the one a trusted publisher
//! signed; [`grant`] decides what it may reach: the intersection of what its
//! manifest asks and what the shop's config grants. [`keygen`], [`sign`] and
//! [`inspect`] are the author's and the shop's side (`plugin sign`,
//! `plugin inspect`).

use std::fmt;
use std::io::Cursor;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use minisign::{PublicKey, SecretKey, SecretKeyBox, SignatureBox};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::allowed_host::AllowedHost;
use crate::config::trusted_key::{key_id, read_limited};

pub use crate::config::TrustedKey;

/// A 32-bit wasm cannot address more than 4 GiB.
const MAX_MEMORY_MB: u64 = 4096;

/// The first line of every manifest `sign` writes; a TOML comment, so it is
/// covered by the signature like the rest.
const WRITTEN_BY: &str = "# Written by `soundbox-gateway plugin sign`: edit it and its signature \
                          (the .minisig beside it) no longer verifies.";

/// `x.manifest.toml` for `x.wasm`.
pub fn manifest_path(wasm_path: &Path) -> PathBuf {
    wasm_path.with_extension("manifest.toml")
}

/// `x.manifest.toml.minisig` for `x.wasm`: minisign's own naming, so
/// `minisign -Vm x.manifest.toml` finds it without `-x`.
pub fn signature_path(wasm_path: &Path) -> PathBuf {
    let mut path = manifest_path(wasm_path).into_os_string();
    path.push(".minisig");
    PathBuf::from(path)
}

/// SHA-256 over the manifest and signature files beside `wasm_path`, None
/// when neither exists: a reload that sees it change loads the plugin again.
pub fn sidecar_digest(wasm_path: &Path) -> Option<[u8; 32]> {
    let files = [manifest_path(wasm_path), signature_path(wasm_path)];
    let contents: Vec<Option<Vec<u8>>> = files.iter().map(|f| read_limited(f).ok()).collect();
    if contents.iter().all(Option::is_none) {
        return None;
    }
    let mut hash = Sha256::new();
    for content in &contents {
        // Length-prefixed, so moving bytes between the files changes it.
        let content = content.as_deref().unwrap_or_default();
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(content);
    }
    Some(hash.finalize().into())
}

/// What a plugin's author declares and signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// Who signed it, as shown on the status page. Only as trustworthy as
    /// the key: the key, not this name, is what the config trusts.
    pub publisher: String,
    /// Lower-case hex SHA-256 of the `.wasm` file.
    pub wasm_sha256: String,
    pub needs: Needs,
}

/// The reach a plugin asks for. Every field is required: a signed manifest
/// says what it needs in so many words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// Hosts its `http-client` calls, in `[[connector]] allowed_hosts`
    /// syntax: `host`, `*.suffix`, either with `:port`.
    pub allowed_hosts: Vec<String>,
    /// Whether it uses its KV store.
    pub kv: bool,
    /// The most linear memory it needs.
    pub memory_mb: u64,
}

impl Needs {
    /// The memory a call gets: what the manifest asks, at most `limit`.
    pub fn memory_bytes(&self, limit: usize) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX)
            .min(limit)
    }
}

impl Manifest {
    /// Parses a manifest's text and checks its fields; the message says
    /// what is wrong, not where the file is (the caller names it).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        for (field, value) in [
            ("name", &self.name),
            ("version", &self.version),
            ("publisher", &self.publisher),
        ] {
            if value.trim().is_empty() {
                return Err(format!("`{field}` is empty"));
            }
            // It is shown in logs and on the status page.
            if value.chars().any(char::is_control) {
                return Err(format!("`{field}` holds control characters"));
            }
        }
        if self.wasm_sha256.len() != 64
            || !self
                .wasm_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "`wasm_sha256` must be 64 lower-case hex digits, not `{}`",
                self.wasm_sha256
            ));
        }
        for host in &self.needs.allowed_hosts {
            AllowedHost::parse(host).map_err(|e| format!("needs.allowed_hosts: `{host}`: {e}"))?;
        }
        if self.needs.memory_mb == 0 || self.needs.memory_mb > MAX_MEMORY_MB {
            return Err(format!(
                "needs.memory_mb must be 1-{MAX_MEMORY_MB}, not {}",
                self.needs.memory_mb
            ));
        }
        Ok(())
    }
}

/// Whether a plugin file is the one a trusted publisher signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The manifest is signed by a trusted key and the wasm is the one it names.
    Signed { manifest: Manifest, key_id: String },
    /// No manifest, or no signature beside it.
    Unsigned { reason: String },
    /// A well-formed signature by a key the config does not trust.
    UnknownKey { key_id: String, reason: String },
    /// The signature does not verify for the key it names, or the wasm is
    /// not the one the manifest names: something changed after signing.
    Modified { reason: String },
    /// The manifest or signature cannot be read or is not well-formed.
    Invalid { reason: String },
}

impl Verdict {
    pub fn is_signed(&self) -> bool {
        matches!(self, Verdict::Signed { .. })
    }

    /// What the status page shows.
    pub fn signature(&self) -> Signature {
        match self {
            Verdict::Signed { manifest, key_id } => Signature::Signed {
                publisher: manifest.publisher.clone(),
                key_id: key_id.clone(),
            },
            Verdict::Unsigned { .. } => Signature::Unsigned,
            Verdict::UnknownKey { key_id, .. } => Signature::UnknownKey {
                key_id: key_id.clone(),
            },
            Verdict::Modified { .. } => Signature::Modified,
            Verdict::Invalid { .. } => Signature::Invalid,
        }
    }
}

/// For a refusal, the reason, naming the file.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Signed { manifest, key_id } => write!(
                f,
                "{} {} signed by {} (key {key_id})",
                manifest.name, manifest.version, manifest.publisher
            ),
            Verdict::Unsigned { reason }
            | Verdict::UnknownKey { reason, .. }
            | Verdict::Modified { reason }
            | Verdict::Invalid { reason } => f.write_str(reason),
        }
    }
}

/// A plugin's signature state, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Signature {
    Signed {
        publisher: String,
        key_id: String,
    },
    Unsigned,
    UnknownKey {
        key_id: String,
    },
    Modified,
    /// A manifest or signature that cannot be read: neither unsigned (there
    /// is something) nor modified (nothing shows it was ever valid).
    Invalid,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Signed { publisher, key_id } => {
                write!(f, "signed by {publisher} (key {key_id})")
            }
            Signature::Unsigned => f.write_str("unsigned"),
            Signature::UnknownKey { key_id } => {
                write!(f, "signed by an unknown key ({key_id})")
            }
            Signature::Modified => f.write_str("modified"),
            Signature::Invalid => f.write_str("invalid manifest or signature"),
        }
    }
}

/// Checks `wasm_bytes` (read from `wasm_path`) against the manifest and
/// signature beside it. The signature is checked before the manifest is
/// parsed: a changed byte is `Modified`, whatever it did to the TOML.
pub fn verify(wasm_path: &Path, wasm_bytes: &[u8], trusted: &[TrustedKey]) -> Verdict {
    let manifest_path = manifest_path(wasm_path);
    let sig_path = signature_path(wasm_path);
    let (wasm, man, sig) = (
        wasm_path.display(),
        manifest_path.display(),
        sig_path.display(),
    );

    let manifest_bytes = match read_limited(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Verdict::Unsigned {
                reason: format!("{wasm} is unsigned: there is no manifest {man} beside it"),
            };
        }
        Err(e) => {
            return Verdict::Invalid {
                reason: format!("cannot read the manifest {man} of {wasm}: {e}"),
            };
        }
    };
    let sig_bytes = match read_limited(&sig_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Verdict::Unsigned {
                reason: format!("{wasm} is unsigned: its manifest {man} has no signature {sig}"),
            };
        }
        Err(e) => {
            return Verdict::Invalid {
                reason: format!("cannot read the signature {sig} of {wasm}: {e}"),
            };
        }
    };
    let signature = match std::str::from_utf8(&sig_bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| SignatureBox::from_string(text).map_err(|e| e.to_string()))
    {
        Ok(signature) => signature,
        Err(e) => {
            return Verdict::Invalid {
                reason: format!("{sig} is not a minisign signature: {e}"),
            };
        }
    };
    let key_id = key_id(signature.keynum());
    let candidates: Vec<&TrustedKey> = trusted
        .iter()
        .filter(|k| k.public_key().keynum() == signature.keynum())
        .collect();
    if candidates.is_empty() {
        return Verdict::UnknownKey {
            reason: format!(
                "{man} is signed by key {key_id}, which is not one of the trusted publisher keys"
            ),
            key_id,
        };
    }
    let verified = candidates.iter().any(|k| {
        minisign::verify(
            k.public_key(),
            &signature,
            Cursor::new(&manifest_bytes),
            true,
            false,
            false,
        )
        .is_ok()
    });
    if !verified {
        return Verdict::Modified {
            reason: format!(
                "{man} was changed after it was signed: the signature in {sig} by key {key_id} \
                 does not verify"
            ),
        };
    }
    let manifest = match std::str::from_utf8(&manifest_bytes)
        .map_err(|e| e.to_string())
        .and_then(Manifest::parse)
    {
        Ok(manifest) => manifest,
        Err(e) => {
            return Verdict::Invalid {
                reason: format!("{man} is signed but not a valid plugin manifest: {e}"),
            };
        }
    };
    let actual = sha256_hex(wasm_bytes);
    if actual != manifest.wasm_sha256 {
        return Verdict::Modified {
            reason: format!(
                "{wasm} is not the file its manifest {man} names: its SHA-256 is {actual}, the \
                 manifest says {}",
                manifest.wasm_sha256
            ),
        };
    }
    Verdict::Signed { manifest, key_id }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a plugin gets: what its manifest asks, within what the config grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The manifest's hosts, normalised as the config stores them: config
    /// entries the manifest does not ask for are not passed on.
    pub allowed_hosts: Vec<String>,
    /// The smaller of the manifest's `memory_mb` and the config's limit.
    pub memory_bytes: usize,
    /// KV only for a plugin that declares it.
    pub kv: bool,
}

/// A manifest asking for more than the config grants: the gateway keeps the
/// version it runs until the config grants it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the plugin's manifest asks to reach {} which the connector's allowed_hosts do not grant",
    .hosts.join(", ")
)]
pub struct NotGranted {
    /// The hosts asked for and not granted, as the manifest writes them.
    pub hosts: Vec<String>,
}

/// The intersection of `needs` and the connector's config: its
/// `allowed_hosts` (normalised, as `ConnectorConfig` holds them) and the
/// memory limit (`PluginLimits::memory_bytes`). A config entry grants a
/// host it equals after normalisation, and a config `*.suffix` also grants
/// any host or narrower wildcard under it, on the same port.
pub fn grant(
    needs: &Needs,
    config_allowed_hosts: &[String],
    config_memory_bytes: usize,
) -> Result<Granted, NotGranted> {
    // Normalised again: callers other than the config (tests, `plugin
    // inspect`) may pass what a user typed. Entries that do not parse grant
    // nothing, as in the http-client.
    let granted: Vec<String> = config_allowed_hosts
        .iter()
        .filter_map(|h| AllowedHost::parse(h).ok())
        .map(|h| h.to_string())
        .collect();
    let mut allowed_hosts = Vec::new();
    let mut missing = Vec::new();
    for asked in &needs.allowed_hosts {
        match AllowedHost::parse(asked) {
            Ok(host) => {
                let host = host.to_string();
                let asked_pattern = Pattern::of(&host);
                if granted
                    .iter()
                    .any(|g| Pattern::of(g).covers(&asked_pattern))
                {
                    if !allowed_hosts.contains(&host) {
                        allowed_hosts.push(host);
                    }
                } else {
                    missing.push(asked.clone());
                }
            }
            Err(_) => missing.push(asked.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(NotGranted { hosts: missing });
    }
    Ok(Granted {
        allowed_hosts,
        memory_bytes: needs.memory_bytes(config_memory_bytes),
        kv: needs.kv,
    })
}

/// An `allowed_hosts` entry in its canonical text (`AllowedHost`'s
/// Display), split for comparing two entries.
#[derive(Debug, PartialEq, Eq)]
struct Pattern<'a> {
    wildcard: bool,
    host: &'a str,
    port: Option<&'a str>,
}

impl<'a> Pattern<'a> {
    fn of(canonical: &'a str) -> Pattern<'a> {
        let (wildcard, rest) = match canonical.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, canonical),
        };
        // IPv6 is bracketed; names and IPv4 have no `:` of their own.
        let (host, port) = if rest.ends_with(']') {
            (rest, None)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        Pattern {
            wildcard,
            host,
            port,
        }
    }

    /// Whether every request `asked` allows, this allows too.
    fn covers(&self, asked: &Pattern<'_>) -> bool {
        if self.port != asked.port {
            return false;
        }
        if !self.wildcard {
            return !asked.wildcard && self.host == asked.host;
        }
        let is_ip = asked.host.starts_with('[') || asked.host.parse::<Ipv4Addr>().is_ok();
        let under = asked
            .host
            .strip_suffix(self.host)
            .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'));
        (asked.wildcard && asked.host == self.host) || (!is_ip && under)
    }
}

/// Errors of the signing side and of reading keys.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    // `error`, not `source`: the message already says it, and a chain
    // printed whole would say it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} already exists: not overwriting a key")]
    Exists { path: PathBuf },
    #[error("`{input}`: {reason}")]
    Key { input: String, reason: String },
    #[error("{path} is not a usable secret key: {reason}")]
    SecretKey { path: PathBuf, reason: String },
    #[error("cannot write a manifest for {wasm}: {reason}")]
    Manifest { wasm: PathBuf, reason: String },
    #[error("{0}")]
    Minisign(String),
}

/// A key pair written by [`keygen`].
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    pub key_id: String,
    /// The `RW…` line, to paste into a shop's config.
    pub public_key_line: String,
}

/// Writes a new key pair: `dir/name.key` (unencrypted, mode 0600, so `sign`
/// runs unattended in a build) and `dir/name.pub`. Never overwrites: a lost
/// key means every shop has to trust a new one.
pub fn keygen(dir: &Path, name: &str) -> Result<KeyFiles, TrustError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(TrustError::Key {
            input: name.to_string(),
            reason: "a key name is a plain file name, like `acme`".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|error| TrustError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(TrustError::Exists { path: path.clone() });
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| TrustError::Minisign(format!("cannot generate a key: {e}")))?;
    let key_id = key_id(pair.pk.keynum());
    let secret = pair
        .sk
        .to_box(Some(&format!(
            "minisign secret key {key_id} (unencrypted), for soundbox-gateway plugin sign"
        )))
        .map_err(|e| TrustError::Minisign(e.to_string()))?
        .into_string();
    let public = pair
        .pk
        .to_box()
        .map_err(|e| TrustError::Minisign(e.to_string()))?
        .into_string();
    write_new(&secret_path, secret.as_bytes(), 0o600)?;
    write_new(&public_path, public.as_bytes(), 0o644)?;
    Ok(KeyFiles {
        secret_key: secret_path,
        public_key: public_path,
        key_id,
        public_key_line: pair.pk.to_base64(),
    })
}

/// Creates `path` (failing if it exists) with `mode` from the start, so a
/// secret key is never readable by others, not even briefly.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let write_err = |source| TrustError::Write {
        path: path.to_path_buf(),
        error: source,
    };
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TrustError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            write_err(e)
        }
    })?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

/// What the author declares in a manifest; `sign` adds the SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFields {
    pub name: String,
    pub version: String,
    pub publisher: String,
    pub allowed_hosts: Vec<String>,
    pub kv: bool,
    pub memory_mb: u64,
}

/// The files [`sign`] wrote.
#[derive(Debug, Clone)]
pub struct SignedFiles {
    pub manifest: PathBuf,
    pub signature: PathBuf,
    pub key_id: String,
    pub wasm_sha256: String,
}

/// Writes `wasm_path`'s manifest (its SHA-256 and `fields`, hosts
/// normalised) and the manifest's minisign signature by the unencrypted
/// secret key at `secret_key_path`, replacing any earlier pair.
pub fn sign(
    wasm_path: &Path,
    secret_key_path: &Path,
    fields: &ManifestFields,
) -> Result<SignedFiles, TrustError> {
    let wasm = std::fs::read(wasm_path).map_err(|source| TrustError::Read {
        path: wasm_path.to_path_buf(),
        error: source,
    })?;
    let bad_manifest = |reason: String| TrustError::Manifest {
        wasm: wasm_path.to_path_buf(),
        reason,
    };
    let mut allowed_hosts = Vec::new();
    for host in &fields.allowed_hosts {
        let host = AllowedHost::parse(host)
            .map_err(|e| bad_manifest(format!("host `{host}`: {e}")))?
            .to_string();
        if !allowed_hosts.contains(&host) {
            allowed_hosts.push(host);
        }
    }
    let manifest = Manifest {
        name: fields.name.clone(),
        version: fields.version.clone(),
        publisher: fields.publisher.clone(),
        wasm_sha256: sha256_hex(&wasm),
        needs: Needs {
            allowed_hosts,
            kv: fields.kv,
            memory_mb: fields.memory_mb,
        },
    };
    manifest.check().map_err(bad_manifest)?;
    let body = toml::to_string(&manifest).map_err(|e| bad_manifest(e.to_string()))?;
    let text = format!("{WRITTEN_BY}\n{body}");

    let secret = secret_key(secret_key_path)?;
    let public = PublicKey::from_secret_key(&secret).map_err(|e| TrustError::SecretKey {
        path: secret_key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let key_id = key_id(public.keynum());
    let manifest_path = manifest_path(wasm_path);
    let sig_path = signature_path(wasm_path);
    let file_name = manifest_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Passing the public key makes minisign check the new signature with it.
    let signature = minisign::sign(
        Some(&public),
        &secret,
        Cursor::new(text.as_bytes()),
        Some(&format!(
            "timestamp:{timestamp}\tfile:{file_name}\tplugin:{} {}",
            manifest.name, manifest.version
        )),
        Some(&format!(
            "signature from soundbox-gateway plugin sign, key {key_id}"
        )),
    )
    // It fails mostly for a damaged key, whose two halves disagree.
    .map_err(|e| TrustError::SecretKey {
        path: secret_key_path.to_path_buf(),
        reason: format!("cannot sign {} with it: {e}", manifest_path.display()),
    })?;

    write_replacing(&manifest_path, text.as_bytes())?;
    write_replacing(&sig_path, signature.into_string().as_bytes())?;
    Ok(SignedFiles {
        manifest: manifest_path,
        signature: sig_path,
        key_id,
        wasm_sha256: manifest.wasm_sha256,
    })
}

/// An unencrypted minisign secret key; an encrypted one is refused rather
/// than prompted for, since signing runs in builds.
fn secret_key(path: &Path) -> Result<SecretKey, TrustError> {
    let bytes = read_limited(path).map_err(|source| TrustError::Read {
        path: path.to_path_buf(),
        error: source,
    })?;
    let bad = |reason: String| TrustError::SecretKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("not a text file".into()))?;
    let boxed = SecretKeyBox::from_string(&text).map_err(|e| bad(e.to_string()))?;
    let parsed = SecretKey::from_unencrypted_box(boxed);
    if parsed.is_err()
        && let Some(key) = stock_unencrypted_key(&text)
    {
        return Ok(key);
    }
    parsed.map_err(|e| {
        let e = e.to_string();
        if e.contains("encrypted") {
            bad(
                "it is password-protected; plugin sign needs an unencrypted key (`plugin keygen`, \
                 or `minisign -G -W`)"
                    .into(),
            )
        } else {
            bad(e)
        }
    })
}

/// An unencrypted key as stock `minisign -G -W` (0.11) writes it: with an
/// all-zero checksum, which the crate takes for a corrupted key. A key that
/// is really damaged still fails: `sign` checks the new signature with the
/// public half.
fn stock_unencrypted_key(text: &str) -> Option<SecretKey> {
    use base64::Engine;
    let line = text.lines().nth(1)?.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    // sig_alg, kdf_alg, chk_alg (2 each), salt 32, opslimit 8, memlimit 8,
    // keynum 8, secret key 64, checksum 32.
    let unencrypted = bytes.len() == 158 && bytes.starts_with(b"Ed") && bytes[2..4] == [0, 0];
    if !unencrypted || bytes[126..].iter().any(|&b| b != 0) {
        return None;
    }
    SecretKey::from_bytes(&bytes).ok()
}

/// Replaces `path` whole through a temporary file beside it: a gateway
/// watching the folder never reads half a manifest.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    use std::io::Write;
    let write_err = |source| TrustError::Write {
        path: path.to_path_buf(),
        error: source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.as_file().sync_all().map_err(write_err)?;
    file.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// A human account of a plugin file: what its manifest says, whether the
/// wasm matches it, and the verdict against `trusted`.
pub fn inspect(wasm_path: &Path, trusted: &[TrustedKey]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "plugin      {}", wasm_path.display());
    let wasm = match std::fs::read(wasm_path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = writeln!(out, "error       cannot read it: {e}");
            return out;
        }
    };
    let actual = sha256_hex(&wasm);
    let _ = writeln!(out, "sha256      {actual}");
    let verdict = verify(wasm_path, &wasm, trusted);
    let man_path = manifest_path(wasm_path);
    // Shown even when not verified, marked so: a shop deciding whether to
    // trust a key wants to see what it would be trusting.
    let manifest = match &verdict {
        Verdict::Signed { manifest, .. } => Some(manifest.clone()),
        _ => read_limited(&man_path)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| Manifest::parse(&t).ok()),
    };
    match &manifest {
        None => {
            let _ = writeln!(out, "manifest    none readable at {}", man_path.display());
        }
        Some(m) => {
            let state = if verdict.is_signed() {
                "verified"
            } else {
                "NOT verified"
            };
            let _ = writeln!(out, "manifest    {} ({state})", man_path.display());
            let _ = writeln!(out, "name        {}", m.name);
            let _ = writeln!(out, "version     {}", m.version);
            let _ = writeln!(out, "publisher   {}", m.publisher);
            let matches = if m.wasm_sha256 == actual {
                "matches the wasm".to_string()
            } else {
                format!("DIFFERS from the wasm: manifest says {}", m.wasm_sha256)
            };
            let _ = writeln!(out, "wasm sha256 {matches}");
            let hosts = if m.needs.allowed_hosts.is_empty() {
                "none".to_string()
            } else {
                m.needs.allowed_hosts.join(", ")
            };
            let _ = writeln!(out, "hosts       {hosts}");
            let _ = writeln!(out, "kv          {}", if m.needs.kv { "yes" } else { "no" });
            let _ = writeln!(out, "memory      {} MB", m.needs.memory_mb);
        }
    }
    let _ = writeln!(out, "signature   {}", verdict.signature());
    if !verdict.is_signed() {
        let _ = writeln!(out, "refused     {verdict}");
    }
    out
}

#[cfg(test)]
mod tests;
