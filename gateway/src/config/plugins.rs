//! `[plugins]`: whose plugins the gateway runs (docs/security.md#signed-plugins).
//!
//! ```toml
//! [plugins]
//! trusted_keys = ["/usr/share/soundbox-gateway/keys/soundbox-project.pub", "RWQ…"]
//! # unsigned = "allowed for local development"
//! ```
//!
//! Without `trusted_keys`, the keys the package installs in
//! [`PACKAGE_KEY_DIR`] are trusted (none on a machine without the package),
//! so a shop's config from before signed plugins still runs the shipped
//! connectors after an upgrade. Anything else unsigned is refused unless the
//! config says, in so many words, that this is a developer's machine.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::trusted_key::TrustedKey;

/// Where the package installs the project's public key (and where a shop
/// may drop more): trusted when the config names no keys itself.
pub const PACKAGE_KEY_DIR: &str = "/usr/share/soundbox-gateway/keys";

/// The exact words that let unsigned plugins run.
pub const ALLOW_UNSIGNED_WORDS: &str = "allowed for local development";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugins {
    trusted_keys: Option<Vec<Spanned<String>>>,
    unsigned: Option<Spanned<String>>,
}

/// Whose plugins run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PluginTrustConfig {
    /// Publisher keys whose signed plugins load.
    pub trusted_keys: Vec<TrustedKey>,
    /// Plugins with no manifest or signature load too (their reach is what
    /// the connector's config grants). A plugin signed by an unknown key, or
    /// changed since it was signed, is refused all the same.
    pub allow_unsigned: bool,
    /// Any plugin loads, whatever its signature says: `plugin test` and the
    /// tests, where an author tries their own file. Never set from a config.
    pub run_any: bool,
}

impl PluginTrustConfig {
    /// For `plugin test` and tests: every plugin loads; its signature is
    /// still checked and reported.
    pub fn run_any() -> PluginTrustConfig {
        PluginTrustConfig {
            run_any: true,
            ..PluginTrustConfig::default()
        }
    }
}

pub(super) fn parse(
    loc: &Locator<'_>,
    raw: RawPlugins,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<PluginTrustConfig, ConfigError> {
    let Some(listed) = raw.trusted_keys else {
        return Ok(PluginTrustConfig {
            trusted_keys: package_keys(Path::new(PACKAGE_KEY_DIR)),
            allow_unsigned: allow_unsigned(loc, raw.unsigned)?,
            run_any: false,
        });
    };
    let mut trusted_keys = Vec::new();
    for (i, key) in listed.iter().enumerate() {
        let text = key.get_ref().trim();
        // A key line starts with `RW`; anything else is a `.pub` file,
        // relative to the config's folder.
        let parsed = if text.starts_with("RW") && !Path::new(text).exists() {
            TrustedKey::parse(text)
        } else {
            TrustedKey::from_file(&resolve(text))
        };
        let key_name = format!("plugins.trusted_keys[{i}]");
        trusted_keys.push(parsed.map_err(|e| loc.at(key.span(), &key_name, e.to_string()))?);
    }
    Ok(PluginTrustConfig {
        trusted_keys,
        allow_unsigned: allow_unsigned(loc, raw.unsigned)?,
        run_any: false,
    })
}

/// `unsigned`: only the exact words say yes.
fn allow_unsigned(
    loc: &Locator<'_>,
    unsigned: Option<Spanned<String>>,
) -> Result<bool, ConfigError> {
    match &unsigned {
        None => Ok(false),
        Some(words) if words.get_ref() == ALLOW_UNSIGNED_WORDS => Ok(true),
        Some(words) => Err(loc.at(
                words.span(),
                "plugins.unsigned",
                format!(
                    "to run plugins nobody signed, write exactly unsigned = \"{ALLOW_UNSIGNED_WORDS}\"; \
                     otherwise remove the key"
                ),
            )),
    }
}

/// Every `.pub` key in `dir` that reads as one, in name order; a file that
/// does not is skipped with a warning (it is the package's folder, not the
/// shop's config, so it cannot be located in a config line).
fn package_keys(dir: &Path) -> Vec<TrustedKey> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| match TrustedKey::from_file(f) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!(%error, "not a usable publisher key; ignored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_folder_gives_its_keys_and_skips_what_is_not_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(package_keys(&dir.path().join("missing")).is_empty());
        let key = crate::config::trusted_key::testing::write_key(dir.path(), "project");
        std::fs::write(dir.path().join("broken.pub"), "not a key\n").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored\n").expect("write");
        let found = package_keys(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key_id(), key.key_id);
    }
}
