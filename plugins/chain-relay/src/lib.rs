//! A shop's side of a store chain's relay.
//!
//! The chain's relay gateway takes the providers' webhooks at one public URL
//! and publishes each payment, as the gateway's own event JSON (schema 1,
//! see docs/mqtt.md), on the shop's MQTT topic. The shop's gateway
//! subscribes through a connector with this plugin: each message reaches
//! [`ChainRelay::handle`] as a synthetic `POST /mqtt/<topic>` with the topic
//! in the `mqtt-topic` header, and becomes one balance change that keeps the
//! original `provider` and `transaction_id`, so the shop's dedupe key is the
//! relay's and a payment also seen by the shop's own poller is announced
//! once. See README.md.

pub mod event;
pub mod settings;

use soundbox_plugin_sdk::{
    ConnectorError, HttpRequest, WebhookConnector, WebhookOutcome, export_webhook_connector,
};

use settings::Settings;

/// Where the gateway puts a message's topic.
pub const TOPIC_HEADER: &str = "mqtt-topic";
/// The path of the synthetic request for an MQTT message: `/mqtt/<topic>`.
/// A webhook's is `/hooks/<connector>`, and no sender can change that.
pub const MQTT_PATH_PREFIX: &str = "/mqtt/";

pub struct ChainRelay;

impl WebhookConnector for ChainRelay {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        // Config first: a broken config is a 500 whatever the message is.
        let settings = Settings::load()?;
        check_source(&settings, &request)?;
        let change = event::parse(&request.body)?;
        settings.check_account(&change.account)?;
        Ok(WebhookOutcome {
            changes: vec![change],
            reply: None,
        })
    }
}

export_webhook_connector!(ChainRelay);

/// The message must come from the connector's MQTT subscription (the broker
/// authenticated the relay that published it), and, with `expect_topic`,
/// from that topic.
fn check_source(settings: &Settings, request: &HttpRequest) -> Result<(), ConnectorError> {
    if !request.path.starts_with(MQTT_PATH_PREFIX) && !settings.allow_unsigned {
        return Err(ConnectorError::Unauthorized(format!(
            "{} {}: chain-relay takes payments only from its MQTT subscription \
             ([connector.mqtt]); an HTTP request has nothing to verify it by",
            request.method,
            event::shown(&request.path)
        )));
    }
    if let Some(expected) = &settings.expect_topic {
        match request.header(TOPIC_HEADER) {
            None => {
                return Err(ConnectorError::Unauthorized(format!(
                    "no {TOPIC_HEADER} header, and expect_topic is `{expected}`"
                )));
            }
            Some(topic) if topic != expected => {
                return Err(ConnectorError::Unauthorized(format!(
                    "message on topic `{}`; this connector takes only `{expected}`",
                    event::shown(topic)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::testing::TestHost;
    use soundbox_plugin_sdk::{BalanceChange, Direction};

    const TOPIC: &str = "chain/shop-042/payments";

    /// The example event in docs/mqtt.md, as the relay publishes it.
    const SAMPLE: &str = r#"{"schema":1,"id":"7d2f6c0e5e0b4f0c9a3c1c2b8e6f4a11","seq":12,"provider":"sepay",
 "connector":"sepay","account":"0123499999","direction":"in","amount":2277000,
 "currency":"VND","transaction_id":"0123499999/MBVCB.3278907687","reference":"MBVCB.3278907687",
 "counterparty":null,"content":"chuyen tien DH102","occurred_at":"2023-03-25T07:02:37.000Z",
 "received_at":"2026-11-26T20:01:02.123Z"}"#;

    /// The synthetic request the gateway makes of an MQTT message.
    fn mqtt(topic: &str, body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: format!("{MQTT_PATH_PREFIX}{topic}"),
            query: String::new(),
            headers: vec![
                (TOPIC_HEADER.into(), topic.into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: body.as_bytes().to_vec(),
        }
    }

    fn run(host: &TestHost, req: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| ChainRelay::handle(req))
    }

    fn one(host: &TestHost, body: &str) -> Result<BalanceChange, ConnectorError> {
        let outcome = run(host, mqtt(TOPIC, body))?;
        assert_eq!(outcome.changes.len(), 1);
        assert!(outcome.reply.is_none(), "the gateway's default reply");
        Ok(outcome.changes.into_iter().next().expect("one change"))
    }

    /// `(kind, reason)` of an error.
    fn refused<T: std::fmt::Debug>(result: Result<T, ConnectorError>) -> (&'static str, String) {
        let err = result.expect_err("should be refused");
        let kind = match &err {
            ConnectorError::BadRequest(_) => "bad-request",
            ConnectorError::Unauthorized(_) => "unauthorized",
            ConnectorError::Transient(_) => "transient",
            ConnectorError::Fatal(_) => "fatal",
        };
        (kind, err.reason().to_string())
    }

    /// The shop's config from docs/fleet.md.
    fn shop() -> TestHost {
        TestHost::new()
            .config("expect_topic", TOPIC)
            .config("accounts", "0123499999, 0123456789")
    }

    #[test]
    fn the_gateways_event_json_becomes_the_same_payment() {
        let change = one(&shop(), SAMPLE).expect("accepted");
        assert_eq!(
            change,
            BalanceChange {
                provider: "sepay".into(),
                transaction_id: "0123499999/MBVCB.3278907687".into(),
                account: "0123499999".into(),
                amount: 2_277_000,
                currency: "VND".into(),
                direction: Direction::Incoming,
                reference: Some("MBVCB.3278907687".into()),
                counterparty: None,
                content: Some("chuyen tien DH102".into()),
                // `date -u -d 2023-03-25T07:02:37Z +%s` = 1679727757.
                occurred_at_ms: Some(1_679_727_757_000),
                extra: vec![
                    (
                        "relay_event_id".into(),
                        "7d2f6c0e5e0b4f0c9a3c1c2b8e6f4a11".into()
                    ),
                    ("relay_connector".into(), "sepay".into()),
                ],
            }
        );
    }

    #[test]
    fn no_config_takes_any_mqtt_message() {
        let change = one(&TestHost::new(), SAMPLE).expect("accepted");
        assert_eq!(change.provider, "sepay");
        let other = run(&TestHost::new(), mqtt("chain/shop-043/payments", SAMPLE));
        assert!(other.is_ok(), "no expect_topic: any topic");
    }

    #[test]
    fn the_smallest_event_and_an_outgoing_one() {
        let body = r#"{"schema":1,"provider":"momo","transaction_id":"42","account":"0909",
            "direction":"out","amount":1,"currency":"VND","occurred_at":null,
            "reference":null,"counterparty":"SHOP B","content":null,"some_later_field":[1,2]}"#;
        let change = one(&TestHost::new(), body).expect("accepted");
        assert_eq!(change.direction, Direction::Outgoing);
        assert_eq!(change.amount, 1);
        assert_eq!(change.counterparty.as_deref(), Some("SHOP B"));
        assert_eq!((change.reference, change.content), (None, None));
        assert_eq!(change.occurred_at_ms, None);
        assert_eq!(change.extra, vec![], "no id, no connector: no extra");
    }

    #[test]
    fn occurred_at_with_an_offset() {
        let body = SAMPLE.replace("2023-03-25T07:02:37.000Z", "2023-03-25T14:02:37+07:00");
        let change = one(&TestHost::new(), &body).expect("accepted");
        assert_eq!(change.occurred_at_ms, Some(1_679_727_757_000));
    }

    #[test]
    fn malformed_messages_are_bad_requests() {
        let host = shop();
        let field = |name: &str, value: &str| -> String {
            let mut event: serde_json::Value = serde_json::from_str(SAMPLE).expect("json");
            if value == "<absent>" {
                event.as_object_mut().expect("object").remove(name);
            } else {
                event[name] = serde_json::from_str(value).expect("value json");
            }
            event.to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "body is not JSON"),
            ("".into(), "body is not JSON"),
            (format!("[{SAMPLE}]"), "expected one event object"),
            (field("schema", "<absent>"), "`schema` is missing"),
            (field("schema", "2"), "schema 2 is not supported"),
            (field("schema", r#""1""#), "schema \"1\" is not supported"),
            (field("provider", "<absent>"), "`provider` is missing"),
            (field("provider", r#""""#), "`provider` is empty"),
            (field("provider", r#""  ""#), "`provider` is empty"),
            (field("provider", "null"), "`provider` is missing"),
            (field("provider", "7"), "`provider` must be a string"),
            (
                field("provider", r#""se\npay""#),
                "`provider` contains control characters",
            ),
            (
                field("provider", &format!("\"{}\"", "p".repeat(65))),
                "`provider` is longer than 64 bytes",
            ),
            (
                field("transaction_id", "<absent>"),
                "`transaction_id` is missing",
            ),
            (
                field("transaction_id", r#""""#),
                "`transaction_id` is empty",
            ),
            (field("account", "<absent>"), "`account` is missing"),
            (field("account", r#""""#), "`account` is empty"),
            (field("amount", "<absent>"), "`amount` is missing"),
            (
                field("amount", "150000.5"),
                "`amount` must be a positive integer",
            ),
            (
                field("amount", "150000.0"),
                "`amount` must be a positive integer",
            ),
            (
                field("amount", r#""150000""#),
                "`amount` must be a positive integer",
            ),
            (
                field("amount", "-150000"),
                "`amount` must be a positive integer",
            ),
            (field("amount", "0"), "`amount` is 0"),
            (
                field("amount", "1000000000000000001"),
                "`amount` is implausibly large",
            ),
            (field("currency", "<absent>"), "`currency` is missing"),
            (field("currency", r#""vnd""#), "is not an ISO 4217 code"),
            (field("direction", "<absent>"), "`direction` is missing"),
            (
                field("direction", r#""incoming""#),
                "`direction` is `incoming`; expected `in` or `out`",
            ),
            (field("direction", r#""IN""#), "expected `in` or `out`"),
            (
                field("occurred_at", r#""yesterday""#),
                "`occurred_at` `yesterday` is not an RFC 3339 time",
            ),
            (
                field("occurred_at", "1679727757000"),
                "`occurred_at` must be a string or null",
            ),
            (
                field("reference", "12"),
                "`reference` must be a string or null",
            ),
            (
                field("content", &format!("\"{}\"", "c".repeat(2049))),
                "`content` is longer than 2048 bytes",
            ),
            (
                field("counterparty", &format!("\"{}\"", "c".repeat(257))),
                "`counterparty` is longer than 256 bytes",
            ),
            (field("id", "12"), "`id` must be a string"),
            (
                field("connector", &format!("\"{}\"", "c".repeat(129))),
                "`connector` is longer than 128 bytes",
            ),
        ];
        for (body, expected) in cases {
            let (kind, reason) = refused(run(&host, mqtt(TOPIC, &body)));
            assert_eq!(kind, "bad-request", "{body}: {reason}");
            assert!(
                reason.contains(expected),
                "{body}: `{reason}` should say `{expected}`"
            );
        }
    }

    #[test]
    fn a_long_value_is_not_echoed_whole() {
        let body = SAMPLE.replace("\"in\"", &format!("\"{}\"", "x".repeat(10_000)));
        let (_, reason) = refused(run(&TestHost::new(), mqtt(TOPIC, &body)));
        assert!(reason.len() < 200, "{reason}");
    }

    #[test]
    fn another_topic_is_unauthorized() {
        let host = shop();
        let (kind, reason) = refused(run(&host, mqtt("chain/shop-043/payments", SAMPLE)));
        assert_eq!(kind, "unauthorized");
        assert_eq!(
            reason,
            "message on topic `chain/shop-043/payments`; this connector takes only \
             `chain/shop-042/payments`"
        );
        // Exact: no prefix, suffix or case games.
        for topic in [
            "chain/shop-042/payments/x",
            "chain/shop-042",
            "Chain/shop-042/payments",
        ] {
            assert_eq!(refused(run(&host, mqtt(topic, SAMPLE))).0, "unauthorized");
        }
        let mut no_header = mqtt(TOPIC, SAMPLE);
        no_header.headers.retain(|(k, _)| k != TOPIC_HEADER);
        let (kind, reason) = refused(run(&host, no_header));
        assert_eq!(kind, "unauthorized");
        assert!(reason.contains("no mqtt-topic header"), "{reason}");
    }

    #[test]
    fn the_topic_is_checked_before_the_body() {
        let (kind, _) = refused(run(&shop(), mqtt("chain/other", "not json")));
        assert_eq!(kind, "unauthorized");
    }

    #[test]
    fn another_shops_account_is_unauthorized() {
        let host = shop();
        let body = SAMPLE.replace("\"account\":\"0123499999\"", "\"account\":\"9876543210\"");
        let (kind, reason) = refused(run(&host, mqtt(TOPIC, &body)));
        assert_eq!(kind, "unauthorized");
        assert_eq!(reason, "account 9876543210 is not this shop's");
        // The second account of the list is the shop's too.
        let body = SAMPLE.replace("\"account\":\"0123499999\"", "\"account\":\"0123456789\"");
        assert!(run(&host, mqtt(TOPIC, &body)).is_ok());
        // Exact match: a prefix of an account is another account.
        let body = SAMPLE.replace("\"account\":\"0123499999\"", "\"account\":\"012349999\"");
        assert_eq!(refused(run(&host, mqtt(TOPIC, &body))).0, "unauthorized");
    }

    #[test]
    fn accounts_as_a_toml_array() {
        // The gateway hands a non-string value over as JSON text.
        let host = TestHost::new().config("accounts", r#"["0123499999","0777"]"#);
        assert!(one(&host, SAMPLE).is_ok());
        let host = TestHost::new().config("accounts", r#"["0777"]"#);
        assert_eq!(refused(run(&host, mqtt(TOPIC, SAMPLE))).0, "unauthorized");
    }

    #[test]
    fn an_http_request_is_refused_unless_unsigned_is_allowed() {
        let http = || {
            let mut req = HttpRequest::post_json(SAMPLE).with_header(TOPIC_HEADER, TOPIC);
            req.path = "/hooks/chain".into();
            req
        };
        // Even with a made-up mqtt-topic header.
        let (kind, reason) = refused(run(&shop(), http()));
        assert_eq!(kind, "unauthorized");
        assert!(
            reason.contains("only from its MQTT subscription"),
            "{reason}"
        );
        let demo = shop().config("allow_unsigned", "true");
        assert!(run(&demo, http()).is_ok());
        // allow_unsigned does not switch off expect_topic.
        let mut wrong = http();
        wrong.headers.retain(|(k, _)| k != TOPIC_HEADER);
        assert_eq!(refused(run(&demo, wrong)).0, "unauthorized");
    }

    #[test]
    fn config_mistakes_are_fatal() {
        let cases = [
            (
                TestHost::new().config("expect_topc", TOPIC),
                "unknown config key(s): expect_topc",
            ),
            (
                TestHost::new().config("expect_topic", " "),
                "config `expect_topic` is empty",
            ),
            (
                TestHost::new().config("expect_topic", "chain/+/payments"),
                "config `expect_topic` = `chain/+/payments` has a wildcard",
            ),
            (
                TestHost::new().config("accounts", " , "),
                "config `accounts` lists no account",
            ),
            (
                TestHost::new().config("accounts", "[]"),
                "config `accounts` lists no account",
            ),
            (
                TestHost::new().config("accounts", "[1,2]"),
                "config `accounts`: a list must hold strings",
            ),
            (
                TestHost::new().config("allow_unsigned", "yes"),
                "config `allow_unsigned` is `yes`; expected true or false",
            ),
        ];
        for (host, expected) in cases {
            // Whatever the message: a config mistake is the operator's.
            let (kind, reason) = refused(run(&host, mqtt(TOPIC, "not json")));
            assert_eq!(kind, "fatal", "{reason}");
            assert!(
                reason.contains(expected),
                "`{reason}` should say `{expected}`"
            );
        }
    }
}
