//! `${NAME}` in config strings is replaced by the environment variable NAME,
//! so secrets stay out of the file. `$${` writes a literal `${`.

/// A variable from the environment; unset is `None` (an error).
pub fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A variable from the environment; unset stays the literal `${NAME}`. For
/// commands that read the config but never use these values (`queue`).
pub fn from_env_or_kept(name: &str) -> Option<String> {
    Some(std::env::var(name).unwrap_or_else(|_| format!("${{{name}}}")))
}

/// Expands every string in `table`, recursively, with `lookup`.
pub fn expand_table(
    table: toml::Table,
    lookup: fn(&str) -> Option<String>,
) -> Result<toml::Table, String> {
    table
        .into_iter()
        .map(|(k, v)| Ok((k, expand_value(v, lookup)?)))
        .collect()
}

fn expand_value(
    value: toml::Value,
    lookup: fn(&str) -> Option<String>,
) -> Result<toml::Value, String> {
    Ok(match value {
        toml::Value::String(s) => toml::Value::String(expand(&s, lookup)?),
        toml::Value::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .map(|v| expand_value(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => toml::Value::Table(expand_table(t, lookup)?),
        other => other,
    })
}

/// Expands `${NAME}` with `lookup`; an unset variable is an error naming it.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}').ok_or("`${` without a closing `}`")?;
            let name = &tail[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn lookup(name: &str) -> Option<String> {
        (name == "KEY").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_and_escapes() {
        assert_eq!(expand("Apikey ${KEY}!", lookup).unwrap(), "Apikey s3cret!");
        assert_eq!(
            expand("$${KEY} costs $5", lookup).unwrap(),
            "${KEY} costs $5"
        );
        assert_eq!(expand("plain", lookup).unwrap(), "plain");
    }

    #[test]
    fn missing_or_malformed_is_an_error() {
        assert!(expand("${NOPE}", lookup).unwrap_err().contains("NOPE"));
        assert!(expand("${KEY", lookup).is_err());
        assert!(expand("${K-Y}", lookup).is_err());
    }
}
