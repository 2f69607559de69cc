//! Where a value is in the config text: a byte span as `file:line:column`,
//! and, for the parse errors toml reports with a position only, the dotted
//! key on that line.

use std::ops::Range;
use std::path::Path;

use super::ConfigError;

/// Where each part of the document is, for error messages.
pub(super) struct Locator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    /// Where `${NAME}` comes from.
    pub(super) env: fn(&str) -> Option<String>,
}

impl Locator<'_> {
    /// An error at `span`, about `key` (dotted, e.g. `connector[0].plugin`).
    pub(super) fn at(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A toml parse error (syntax, type, unknown or missing key), located
    /// and named by the key on its line.
    pub(super) fn parse_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let key = key_at(self.text, span.start);
        self.at(span, &key, error.message().to_string())
    }
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The dotted key on the line containing `offset`, best effort, for parse
/// errors that carry only a position (e.g. `listen = 8080x`).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    for line in text[..offset].lines() {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table.is_empty(), key) {
        (_, Some(k)) if line.contains('=') => {
            if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            }
        }
        (false, _) => table,
        (true, _) => "(top level)".to_string(),
    }
}

/// The span of the first line at or after byte `from` that sets `key`
/// (`key = …`), the key itself; `0..0` if none does. For keys inside a
/// table toml gives no span for (a connector's free-form `config`).
pub(super) fn key_line_after(text: &str, from: usize, key: &str) -> Range<usize> {
    text[from..]
        .split_inclusive('\n')
        .scan(from, |offset, line| {
            let start = *offset;
            *offset += line.len();
            Some((start, line))
        })
        .find(|(_, line)| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0..0, |(start, line)| {
            let indent = line.len() - line.trim_start().len();
            start + indent..start + indent + key.len()
        })
}
