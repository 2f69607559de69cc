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
    /// Incoming money in VND with every optional field empty; set the rest
    /// with struct update syntax or the `with_*` helpers.
    pub fn incoming(provider: &str, transaction_id: &str, account: &str, amount: u64) -> Self {
        BalanceChange {
            provider: provider.into(),
            transaction_id: transaction_id.into(),
            account: account.into(),
            amount,
            currency: "VND".into(),
            direction: Direction::Incoming,
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
