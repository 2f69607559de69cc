//! The contract's types, with constructors that keep connectors short.

pub use crate::__bindings::host::soundbox::connector::types::{
    BalanceChange, ConnectorError, Direction, HttpRequest, HttpResponse, PollOutcome,
    WebhookOutcome,
};

impl HttpRequest {
    /// A `POST` with a body, for tests.
    pub fn post_json(body: impl Into<Vec<u8>>) -> Self {
        HttpRequest {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// Adds a header (name lower-cased, as the gateway delivers them).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the raw query string (without `?`).
    pub fn with_query(mut self, query: &str) -> Self {
        self.query = query.into();
        self
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query string decoded into pairs (`+` and `%XX` decoded).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        crate::http::parse_form(&self.query)
    }
}

impl HttpResponse {
    /// A JSON reply with the given status.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// A reply with no body, e.g. `204`.
    pub fn empty(status: u16) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The body as UTF-8 text (lossy), for logs and tests.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl BalanceChange {
    /// Incoming money in VND with every optional field empty. Set the rest
    /// with struct update syntax:
    ///
    /// ```
    /// use soundbox_plugin_sdk::BalanceChange;
    ///
    /// let change = BalanceChange {
    ///     content: Some("DH1234 thanh toan".into()),
    ///     occurred_at_ms: Some(1_700_000_000_000),
    ///     ..BalanceChange::incoming("hello", "42", "0001", 150_000)
    /// };
    /// assert_eq!(change.amount, 150_000);
    /// ```
    ///
    /// The speaker announces incoming changes only; see [`outgoing`](Self::outgoing).
    pub fn incoming(provider: &str, transaction_id: &str, account: &str, amount: u64) -> Self {
        Self::new(
            Direction::Incoming,
            provider,
            transaction_id,
            account,
            amount,
        )
    }

    /// Outgoing money (a transfer out of `account`) in VND with every
    /// optional field empty, like [`incoming`](Self::incoming). The gateway
    /// stores and forwards it; the speaker stays silent unless the shop's
    /// config asks to announce outgoing payments.
    pub fn outgoing(provider: &str, transaction_id: &str, account: &str, amount: u64) -> Self {
        Self::new(
            Direction::Outgoing,
            provider,
            transaction_id,
            account,
            amount,
        )
    }

    fn new(
        direction: Direction,
        provider: &str,
        transaction_id: &str,
        account: &str,
        amount: u64,
    ) -> Self {
        BalanceChange {
            provider: provider.into(),
            transaction_id: transaction_id.into(),
            account: account.into(),
            amount,
            currency: "VND".into(),
            direction,
            reference: None,
            counterparty: None,
            content: None,
            occurred_at_ms: None,
            extra: Vec::new(),
        }
    }
}

impl ConnectorError {
    /// The short reason carried by any variant.
    pub fn reason(&self) -> &str {
        match self {
            ConnectorError::BadRequest(r)
            | ConnectorError::Unauthorized(r)
            | ConnectorError::Transient(r)
            | ConnectorError::Fatal(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_mirrors_incoming_but_for_the_direction() {
        let out = BalanceChange::outgoing("sepay", "92704", "0123499999", 2_277_000);
        assert_eq!(out.direction, Direction::Outgoing);
        assert_eq!(out.provider, "sepay");
        assert_eq!(out.transaction_id, "92704");
        assert_eq!(out.account, "0123499999");
        assert_eq!(out.amount, 2_277_000);
        assert_eq!(out.currency, "VND");
        assert_eq!(
            (&out.reference, &out.counterparty, &out.content),
            (&None, &None, &None)
        );
        assert_eq!(out.occurred_at_ms, None);
        assert!(out.extra.is_empty());

        let incoming = BalanceChange::incoming("sepay", "92704", "0123499999", 2_277_000);
        assert_eq!(incoming.direction, Direction::Incoming);
        assert_eq!(
            BalanceChange {
                direction: Direction::Incoming,
                ..out
            },
            incoming
        );
    }

    #[test]
    fn optional_fields_by_struct_update() {
        let out = BalanceChange {
            counterparty: Some("NGUYEN VAN A".into()),
            ..BalanceChange::outgoing("hello", "7", "0001", 10_000)
        };
        assert_eq!(out.counterparty.as_deref(), Some("NGUYEN VAN A"));
        assert_eq!(out.direction, Direction::Outgoing);
    }
}
