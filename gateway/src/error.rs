//! How an error prints with its causes, on one line.

/// `error` and its causes as one line, `a: b: c` like anyhow's `{:#}`,
/// leaving out a cause whose text the line already holds: many errors here
/// ([`crate::log::LogError`] among them) end their message with their cause
/// and also return it from `source()`, and it should show once.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{context}")]
    struct Context {
        context: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{context}: {source}")]
    struct Repeats {
        context: &'static str,
        source: std::io::Error,
    }

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::StorageFull)
    }

    #[test]
    fn each_cause_shows_once() {
        let hidden = Context {
            context: "segment write",
            source: io(),
        };
        let shown = Repeats {
            context: "segment write",
            source: io(),
        };
        let expected = format!("segment write: {}", io());
        assert_eq!(chain(&hidden), expected);
        assert_eq!(chain(&shown), expected);
        let wrapped = anyhow::Error::new(shown).context("cannot open the store");
        assert_eq!(
            chain(wrapped.as_ref()),
            format!("cannot open the store: {expected}")
        );
    }
}
