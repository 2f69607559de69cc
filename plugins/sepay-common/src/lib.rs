//! What the two SePay connectors share: the provider name and the
//! transaction id they both give one bank transaction.
//!
//! SePay's webhooks carry an integer `id`, its transaction API v2 a UUID, so
//! neither id can be the dedupe key when `sepay-webhook` and `sepay-poll` run
//! side by side (the poller fills what the webhooks missed). The key is built
//! instead from fields both paths carry:
//!
//! - with a bank reference: `<account>/<reference>`,
//!   e.g. `0123499999/MBVCB.3278907687`;
//! - without one: `<account>/<in|out>/<amount>/<occurred-at Unix seconds>`,
//!   e.g. `0123499999/in/2277000/1701933300`;
//! - without a reference or a readable date either (never seen; the two paths
//!   do not agree on this one): `<account>/<in|out>/<amount>/id-<SePay id>`.
//!
//! This rests on an assumption to confirm against a real SePay account: v2's
//! `reference_number` equals the webhook's `referenceCode`, and v2's
//! `transaction_date` equals the webhook's `transactionDate`.

use soundbox_plugin_sdk::Direction;

/// The dedupe provider both SePay connectors declare.
pub const PROVIDER: &str = "sepay";

/// The gateway refuses a transaction id longer than this.
pub const MAX_TRANSACTION_ID_BYTES: usize = 128;

/// The transaction id of one SePay transaction, the same from a webhook and
/// from the API.
///
/// `account` is the webhook's `accountNumber` / v2's `account_number`;
/// `reference` the webhook's `referenceCode` / v2's `reference_number`;
/// `occurred_at_ms` the parsed `transactionDate` / `transaction_date`;
/// `sepay_id` SePay's own id, used only when neither reference nor date is
/// there. Whitespace around the parts and control characters in them are
/// dropped; the result is cut to [`MAX_TRANSACTION_ID_BYTES`].
pub fn transaction_id(
    account: &str,
    reference: Option<&str>,
    direction: Direction,
    amount: u64,
    occurred_at_ms: Option<i64>,
    sepay_id: &str,
) -> String {
    let account = clean(account);
    let reference = reference.map(clean).filter(|r| !r.is_empty());
    let dir = match direction {
        Direction::Incoming => "in",
        Direction::Outgoing => "out",
    };
    let id = match (reference, occurred_at_ms) {
        (Some(reference), _) => format!("{account}/{reference}"),
        (None, Some(ms)) => format!("{account}/{dir}/{amount}/{}", ms.div_euclid(1000)),
        (None, None) => format!("{account}/{dir}/{amount}/id-{}", clean(sepay_id)),
    };
    soundbox_plugin_sdk::text::truncate(&id, MAX_TRANSACTION_ID_BYTES).to_string()
}

/// Trimmed, without control characters (the gateway refuses them in ids).
fn clean(part: &str) -> String {
    part.trim().chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Incoming, Outgoing};

    // 2023-12-07 14:15:00 in Vietnam (UTC+7) = 2023-12-07T07:15:00Z.
    const AT_MS: i64 = 1_701_933_300_000;

    #[test]
    fn with_a_reference_it_is_account_and_reference() {
        let id = transaction_id(
            "0123499999",
            Some("MBVCB.3278907687"),
            Incoming,
            2_277_000,
            Some(AT_MS),
            "92704",
        );
        assert_eq!(id, "0123499999/MBVCB.3278907687");
        // Amount, direction, date and SePay's id do not enter it: a UUID from
        // the API and an integer from a webhook give the same key.
        let same = transaction_id(
            " 0123499999 ",
            Some(" MBVCB.3278907687\n"),
            Incoming,
            2_277_000,
            None,
            "0b8e6f1c-5d0a-4c1e-9f7e-2a1d3c4b5e6f",
        );
        assert_eq!(same, id);
    }

    #[test]
    fn without_a_reference_it_is_direction_amount_and_time() {
        for empty in [None, Some(""), Some("   ")] {
            assert_eq!(
                transaction_id("0123499999", empty, Outgoing, 350_000, Some(AT_MS), "1"),
                "0123499999/out/350000/1701933300"
            );
        }
        assert_eq!(
            transaction_id("0123499999", None, Incoming, 5, Some(AT_MS + 999), "1"),
            "0123499999/in/5/1701933300",
            "whole seconds"
        );
        assert_eq!(
            transaction_id("0123499999", None, Incoming, 5, None, "92704"),
            "0123499999/in/5/id-92704"
        );
    }

    #[test]
    fn ids_stay_within_the_gateway_rules() {
        let id = transaction_id("01\t23", Some("A\u{0}B"), Incoming, 1, None, "x");
        assert_eq!(id, "0123/AB");
        let long = "đ".repeat(100);
        let id = transaction_id("0123", Some(&long), Incoming, 1, None, "x");
        assert!(id.len() <= MAX_TRANSACTION_ID_BYTES, "{}", id.len());
        assert!(id.starts_with("0123/đđ"));
        // Cut on a char boundary: `0123/` is 5 bytes, each `đ` 2.
        assert_eq!(id.len(), 127);
    }
}
