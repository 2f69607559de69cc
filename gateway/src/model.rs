//! The narrow type that travels from the connector runtime to the log and the
//! sinks: one normalised, validated balance change.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// A movement of money as a connector reported it, plus where and when the
/// gateway received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceChange {
    /// Who assigned `transaction_id` (e.g. `sepay`); first half of the dedupe key.
    pub provider: String,
    /// The provider's transaction id; second half of the dedupe key.
    pub transaction_id: String,
    /// The `[[connector]]` that produced it.
    pub connector: String,
    pub account: String,
    /// Minor units of `currency` (VND has none).
    pub amount: u64,
    pub currency: String,
    pub direction: Direction,
    pub reference: Option<String>,
    pub counterparty: Option<String>,
    pub content: Option<String>,
    /// When the bank booked it, Unix ms.
    pub occurred_at_ms: Option<i64>,
    /// When the gateway received it, Unix ms.
    pub received_at_ms: i64,
    pub extra: Vec<(String, String)>,
}

/// Why a connector's output was refused. A plugin bug, not the sender's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid balance change: {0}")]
pub struct InvalidChange(pub String);

impl BalanceChange {
    /// `(provider, transaction id)` as one string: the same payment seen twice
    /// (a provider retry, webhook and poller) has the same key.
    pub fn dedupe_key(&self) -> String {
        format!("{}\u{1f}{}", self.provider, self.transaction_id)
    }

    /// Checks what the rest of the flow relies on. Bounds keep a misbehaving
    /// plugin from filling the disk or the speaker's queue with junk.
    pub fn validate(&self) -> Result<(), InvalidChange> {
        fn text(field: &str, value: &str, max: usize) -> Result<(), InvalidChange> {
            if value.trim().is_empty() {
                return Err(InvalidChange(format!("{field} is empty")));
            }
            if value.len() > max {
                return Err(InvalidChange(format!("{field} is longer than {max} bytes")));
            }
            if value.chars().any(char::is_control) {
                return Err(InvalidChange(format!(
                    "{field} contains control characters"
                )));
            }
            Ok(())
        }
        text("provider", &self.provider, 64)?;
        text("transaction id", &self.transaction_id, 128)?;
        text("account", &self.account, 64)?;
        if self.amount == 0 {
            return Err(InvalidChange("amount is 0".into()));
        }
        if self.amount > 1_000_000_000_000_000 {
            return Err(InvalidChange("amount is implausibly large".into()));
        }
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(InvalidChange(format!(
                "currency `{}` is not an ISO 4217 code",
                self.currency
            )));
        }
        for (field, value) in [
            ("reference", &self.reference),
            ("counterparty", &self.counterparty),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > 256) {
                return Err(InvalidChange(format!("{field} is longer than 256 bytes")));
            }
        }
        if self.content.as_ref().is_some_and(|c| c.len() > 2048) {
            return Err(InvalidChange("content is longer than 2048 bytes".into()));
        }
        let extra_bytes: usize = self.extra.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.extra.len() > 32 || extra_bytes > 8192 {
            return Err(InvalidChange(
                "extra has more than 32 entries or 8 KiB".into(),
            ));
        }
        Ok(())
    }
}

impl BalanceChange {
    /// An incoming SePay payment of `amount` đồng to account 0123499999,
    /// received now; for tests, benches and examples to adjust.
    #[doc(hidden)]
    pub fn example(transaction_id: &str, amount: u64) -> BalanceChange {
        BalanceChange {
            provider: "sepay".into(),
            transaction_id: transaction_id.into(),
            connector: "sepay".into(),
            account: "0123499999".into(),
            amount,
            currency: "VND".into(),
            direction: Direction::In,
            reference: None,
            counterparty: None,
            content: Some(format!("thanh toan {transaction_id}")),
            occurred_at_ms: None,
            received_at_ms: now_ms(),
            extra: Vec::new(),
        }
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> BalanceChange {
        BalanceChange {
            provider: "sepay".into(),
            transaction_id: "92704".into(),
            connector: "sepay".into(),
            account: "0123499999".into(),
            amount: 150_000,
            currency: "VND".into(),
            direction: Direction::In,
            reference: None,
            counterparty: None,
            content: Some("thanh toan".into()),
            occurred_at_ms: None,
            received_at_ms: 1,
            extra: Vec::new(),
        }
    }

    #[test]
    fn validate_accepts_normal_and_rejects_junk() {
        assert_eq!(sample().validate(), Ok(()));
        type Mutation = fn(&mut BalanceChange);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.amount = 0, "amount is 0"),
            (|c| c.transaction_id = " ".into(), "transaction id is empty"),
            (|c| c.account = "a\nb".into(), "account contains control"),
            (|c| c.currency = "vnd".into(), "currency"),
            (|c| c.provider = "p".repeat(65), "provider is longer"),
            (|c| c.content = Some("x".repeat(3000)), "content is longer"),
        ];
        for (mutate, expected) in cases {
            let mut c = sample();
            mutate(&mut c);
            let err = c.validate().expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn dedupe_key_separates_provider_and_id() {
        let mut a = sample();
        a.provider = "ab".into();
        a.transaction_id = "c".into();
        let mut b = sample();
        b.provider = "a".into();
        b.transaction_id = "bc".into();
        assert_ne!(a.dedupe_key(), b.dedupe_key());
    }
}
