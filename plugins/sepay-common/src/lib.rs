//! What the two SePay connectors share: the provider name, the transaction
//! id each gives a bank transaction, and the rule that keeps the poller off
//! every payment a webhook may still deliver ([`Ledger`]).
//!
//! The two ids never need to agree, because the two sources never report the
//! same payment (see [`webhook_transaction_id`]). Nothing SePay publishes
//! ties the two together: SePay's docs (developer.sepay.vn, API v2
//! overview and "upgrade from v1") give v2 items UUID ids where webhooks
//! carry integers, and no v2 field holds the webhook's id; the
//! reconciliation guide never says `reference_number` equals the webhook's
//! `referenceCode`, nor that the dates are identical, nor that a reference
//! is unique. So no key is built from references, amounts or times.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The dedupe provider both SePay connectors declare.
pub const PROVIDER: &str = "sepay";

/// The gateway refuses a transaction id longer than this.
pub const MAX_TRANSACTION_ID_BYTES: usize = 128;

/// Prefix of the poller's ids: keeps them apart from the webhook's integers.
pub const POLL_PREFIX: &str = "v2/";

/// The transaction id of a webhook: SePay's integer `id`, as text.
///
/// Why the id alone: SePay's docs (developer.sepay.vn, webhooks quick start
/// and "errors and retry") dedupe on `id`; a retry and a manual replay from
/// the dashboard resend the same `id`; two transfers that share a reference,
/// or an amount and a second, are two SePay transactions with two ids.
///
/// The cross-source rule: a payment reaches the log either from the webhook
/// (this key) or from `sepay-poll` (key [`poll_transaction_id`]), never
/// both, because in its default `backfill` mode the poller reports only a
/// transaction SePay lists with `webhook_success=0` and that it first saw at
/// least the retry horizon ago, when no automatic retry can come any more
/// ([`Ledger`]). So the two keys never have to meet on one payment. The one
/// way to get a payment twice: the shop replays, from SePay's dashboard, a
/// webhook the poller has already reported (documented in both READMEs).
pub fn webhook_transaction_id(sepay_id: impl std::fmt::Display) -> String {
    let id = clean(&sepay_id.to_string());
    soundbox_plugin_sdk::text::truncate(&id, MAX_TRANSACTION_ID_BYTES).to_string()
}

/// The transaction id of an API v2 item: `v2/<uuid>`, from its `id`.
/// `None` when the item has no usable id (empty, or too long to keep whole:
/// a cut id could merge two transactions).
///
/// SePay's docs (developer.sepay.vn, API v2 overview) give every transaction
/// a UUID; a re-read of the same transaction returns the same UUID, which is
/// all this key needs. See [`webhook_transaction_id`] for why it never has
/// to equal the webhook's key.
pub fn poll_transaction_id(uuid: &str) -> Option<String> {
    let uuid = clean(uuid);
    let id = format!("{POLL_PREFIX}{uuid}");
    (!uuid.is_empty() && id.len() <= MAX_TRANSACTION_ID_BYTES).then_some(id)
}

/// Trimmed, without control characters (the gateway refuses them in ids).
fn clean(part: &str) -> String {
    part.trim().chars().filter(|c| !c.is_control()).collect()
}

/// What the poller should do with a transaction SePay lists as
/// `webhook_success=0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its webhook can no longer arrive: report it now.
    Emit,
    /// First seen less than the horizon ago: a retry may still deliver it.
    Wait,
    /// Reported before.
    Emitted,
    /// The ledger is full; it is looked at again on a later sweep.
    Full,
}

/// The poller's memory of failed-webhook transactions: when it first saw
/// each, and whether it reported it. Kept in the plugin's KV as one small
/// JSON value (at most [`Ledger::MAX_ENTRIES`], pruned by [`Ledger::prune`]).
///
/// "First seen" rather than the bank time, because SePay may record a
/// transaction late with an older bank time, and its retries count from
/// when it recorded it, which the API does not show. SePay's docs
/// (developer.sepay.vn, webhooks "errors and retry"): with "Auto retry on
/// server error" on, 8 attempts at 0, 1, 2, 4, 7, 12, 20 and 33 minutes;
/// with it off, one attempt. A horizon over 33 minutes (default 40) after
/// the poller first saw it failed is past the last automatic retry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// UUID → [first seen (Unix s), bank time (Unix s), reported].
    entries: BTreeMap<String, (i64, i64, bool)>,
}

impl Ledger {
    /// About 55 bytes of JSON each: well under the gateway's 64 KiB value
    /// limit. A day with more failed webhooks than this only delays the
    /// rest to a later sweep.
    pub const MAX_ENTRIES: usize = 1000;

    /// Looks at a transaction listed as failed at `now`; `bank_time` is its
    /// `transaction_date` (or `now` when unreadable), used to prune it.
    pub fn observe_failed(
        &mut self,
        uuid: &str,
        bank_time: i64,
        now: i64,
        horizon_secs: i64,
    ) -> Verdict {
        if !self.entries.contains_key(uuid) {
            if self.entries.len() >= Self::MAX_ENTRIES {
                return Verdict::Full;
            }
            self.entries
                .insert(uuid.to_string(), (now, bank_time, false));
        }
        let Some(entry) = self.entries.get_mut(uuid) else {
            return Verdict::Full;
        };
        if entry.2 {
            Verdict::Emitted
        } else if now.saturating_sub(entry.0) >= horizon_secs {
            entry.2 = true;
            Verdict::Emit
        } else {
            Verdict::Wait
        }
    }

    /// Forgets transactions whose bank time is before `window_start`: the
    /// re-read window no longer returns them, so nothing asks about them.
    pub fn prune(&mut self, window_start: i64) {
        self.entries.retain(|_, (_, bank, _)| *bank >= window_start);
    }

    /// The oldest bank time among transactions not reported yet: the
    /// window must reach back to it until they are.
    pub fn oldest_pending(&self) -> Option<i64> {
        self.entries
            .values()
            .filter(|(_, _, reported)| !reported)
            .map(|(_, bank, _)| *bank)
            .min()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
