//! Where accepted balance changes go.
//!
//! Until the durable event log lands, [`Handoff::accept`] only records each
//! change in the tracing log. It is the single point the durable log will
//! replace: everything upstream (ingress, poller) calls only this.

use crate::model::BalanceChange;

/// Why changes could not be accepted; the sender gets a 5xx and retries.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("event log unavailable: {0}")]
    Unavailable(String),
}

/// The hand-off from the connector runtime to the rest of the flow.
#[derive(Debug, Clone, Default)]
pub struct Handoff;

impl Handoff {
    /// Takes responsibility for `changes`. When this returns `Ok`, the sender
    /// may be acknowledged.
    pub async fn accept(&self, changes: &[BalanceChange]) -> Result<(), AcceptError> {
        for change in changes {
            tracing::info!(
                connector = %change.connector,
                provider = %change.provider,
                transaction_id = %change.transaction_id,
                account = %change.account,
                amount = change.amount,
                currency = %change.currency,
                direction = ?change.direction,
                "balance change accepted"
            );
        }
        Ok(())
    }
}
