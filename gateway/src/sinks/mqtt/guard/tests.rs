use rumqttc::{LastWill, Publish, QoS, Subscribe, Unsubscribe};

use super::*;

fn access(users: &[(&str, &str)]) -> Access {
    Access {
        prefix: "soundbox".into(),
        gateway_client_id: "soundbox-shop-1".into(),
        users: users
            .iter()
            .map(|(u, p)| MqttUser {
                username: u.to_string(),
                password: Secret::new(*p),
            })
            .collect(),
    }
}

fn broker_login() -> Login {
    Login {
        username: "guard".into(),
        password: Secret::new("internal-secret"),
    }
}

fn connect(id: &str, login: Option<(&str, &str)>) -> Connect {
    let mut c = Connect::new(id);
    if let Some((u, p)) = login {
        c.set_login(u, p);
    }
    c
}

fn encode(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    packet.write(&mut out, usize::MAX).expect("encode");
    out
}

#[test]
fn the_whole_prefix_tree_is_the_gateways() {
    let a = access(&[]);
    for topic in [
        "soundbox",
        "soundbox/shop-1/events",
        "soundbox/shop-1/status",
        "soundbox/shop-1/speakers/VNS-1",
        "soundbox/another-shop/events",
        "soundbox/",
    ] {
        assert!(a.is_protected(topic), "{topic}");
    }
    for topic in [
        "soundboxes/x",
        "pos/soundbox/x",
        "/soundbox/shop-1/events",
        "",
        "sound",
    ] {
        assert!(!a.is_protected(topic), "{topic}");
    }
    let chain = Access {
        prefix: "chain/hanoi".into(),
        ..access(&[])
    };
    assert!(chain.is_protected("chain/hanoi/shop-1/events"));
    assert!(!chain.is_protected("chain/saigon/shop-1/events"));
}

#[test]
fn anonymous_clients_read_on_loopback_under_the_guards_login() {
    let forwarded =
        check_connect(&access(&[]), true, &broker_login(), connect("pos-1", None)).expect("let in");
    assert_eq!(forwarded.client_id, "pos-1");
    let login = forwarded.login.expect("login");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("guard", "internal-secret")
    );
    // Whatever they sent as a login is replaced too.
    let forwarded = check_connect(
        &access(&[]),
        true,
        &broker_login(),
        connect("pos-1", Some(("gateway", "guess"))),
    )
    .expect("let in");
    assert_eq!(forwarded.login.expect("login").username, "guard");
}

#[test]
fn without_accounts_off_loopback_nobody_gets_in() {
    let refused = check_connect(&access(&[]), false, &broker_login(), connect("pos-1", None));
    assert_eq!(
        refused.map_err(|r| r.code),
        Err(ConnectReturnCode::NotAuthorized)
    );
}

#[test]
fn with_accounts_only_their_passwords_get_in() {
    let a = access(&[("pos", "correct horse"), ("display", "battery staple")]);
    let login = broker_login();
    let code = |c| {
        check_connect(&a, true, &login, c)
            .map(|_| ())
            .map_err(|r| r.code)
    };
    assert_eq!(
        code(connect("pos-1", None)),
        Err(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        code(connect("pos-1", Some(("pos", "battery staple")))),
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        code(connect("pos-1", Some(("nobody", "correct horse")))),
        Err(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        code(connect("pos-1", Some(("pos", "correct horse")))),
        Ok(())
    );
    assert_eq!(
        code(connect("d", Some(("display", "battery staple")))),
        Ok(())
    );
    let forwarded = check_connect(
        &a,
        true,
        &login,
        connect("pos-1", Some(("pos", "correct horse"))),
    )
    .expect("let in");
    assert_eq!(forwarded.login.expect("login").password, "internal-secret");
}

#[test]
fn nobody_takes_the_gateways_client_id() {
    let a = access(&[("pos", "correct horse")]);
    let refused = check_connect(
        &a,
        true,
        &broker_login(),
        connect("soundbox-shop-1", Some(("pos", "correct horse"))),
    );
    assert_eq!(
        refused.map_err(|r| r.code),
        Err(ConnectReturnCode::BadClientId)
    );
    let refused = check_connect(
        &access(&[]),
        true,
        &broker_login(),
        connect("soundbox-shop-1", None),
    );
    assert_eq!(
        refused.map_err(|r| r.code),
        Err(ConnectReturnCode::BadClientId)
    );
}

#[test]
fn a_last_will_on_the_gateways_topics_is_refused() {
    let mut c = connect("pos-1", None);
    c.last_will = Some(LastWill::new(
        "soundbox/shop-1/status",
        "online",
        QoS::AtLeastOnce,
        true,
    ));
    let refused = check_connect(&access(&[]), true, &broker_login(), c);
    assert_eq!(
        refused.map_err(|r| r.code),
        Err(ConnectReturnCode::NotAuthorized)
    );
    let mut c = connect("pos-1", None);
    c.last_will = Some(LastWill::new(
        "pos/pos-1/status",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    assert!(check_connect(&access(&[]), true, &broker_login(), c).is_ok());
}

#[test]
fn mqtt_5_is_refused_with_the_version_code() {
    let mut c = connect("pos-1", None);
    c.protocol = Protocol::V5;
    let refused = check_connect(&access(&[]), true, &broker_login(), c);
    assert_eq!(
        refused.map_err(|r| r.code),
        Err(ConnectReturnCode::RefusedProtocolVersion)
    );
}

#[test]
fn publishing_on_the_gateways_topics_is_blocked_and_the_rest_passes() {
    let a = access(&[]);
    let fake = Publish::new(
        "soundbox/shop-1/events",
        QoS::AtLeastOnce,
        r#"{"amount":50000000}"#,
    );
    assert_eq!(
        check_packet(&a, &Packet::Publish(fake)),
        Err(Blocked::Publish {
            topic: "soundbox/shop-1/events".into()
        })
    );
    let mut status = Publish::new("soundbox/shop-1/status", QoS::AtMostOnce, "online");
    status.retain = true;
    assert!(check_packet(&a, &Packet::Publish(status)).is_err());
    let other = Publish::new("pos/pos-1/receipts", QoS::AtLeastOnce, "x");
    assert_eq!(check_packet(&a, &Packet::Publish(other)), Ok(()));
    for packet in [
        Packet::Subscribe(Subscribe::new("soundbox/#", QoS::AtLeastOnce)),
        Packet::Unsubscribe(Unsubscribe::new("soundbox/#")),
        Packet::PubAck(rumqttc::PubAck::new(7)),
        Packet::PubRec(rumqttc::PubRec::new(7)),
        Packet::PubRel(rumqttc::PubRel::new(7)),
        Packet::PubComp(rumqttc::PubComp::new(7)),
        Packet::PingReq,
        Packet::Disconnect,
    ] {
        assert_eq!(check_packet(&a, &packet), Ok(()), "{packet:?}");
    }
    for packet in [
        Packet::Connect(connect("again", None)),
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        Packet::PingResp,
    ] {
        assert!(
            matches!(check_packet(&a, &packet), Err(Blocked::NotFromClient(_))),
            "{packet:?}"
        );
    }
}

/// A MQTT 5 CONNECT as a v5 client sends it: properties after keep-alive.
fn v5_connect() -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 30, 0];
    body.extend([0, 5]);
    body.extend(b"pos-1");
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend(body);
    frame
}

#[test]
fn the_protocol_level_is_read_from_the_raw_connect() {
    let v4 = encode(&Packet::Connect(connect("pos-1", None)));
    assert_eq!(connect_level(&v4), Some(4));
    assert_eq!(connect_level(&v5_connect()), Some(5));
    let mut v31 = vec![0x10, 14, 0, 6];
    v31.extend(b"MQIsdp");
    v31.extend([3, 2, 0, 30]);
    assert_eq!(connect_level(&v31), Some(3));
    assert_eq!(connect_level(&v4[..5]), None, "truncated");
    assert_eq!(connect_level(&[0x30, 0]), None, "a PUBLISH");
    assert_eq!(connect_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0xff]), None);
    assert_eq!(connect_level(&[]), None);
}

#[tokio::test]
async fn the_first_packet_must_be_a_3_1_1_connect() {
    let mut buf = BytesMut::new();
    let error = read_connect(&mut &v5_connect()[..], &mut buf)
        .await
        .expect_err("v5");
    assert!(matches!(error, FirstPacketError::Version(5)), "{error}");

    let publish = encode(&Packet::Publish(Publish::new("a", QoS::AtMostOnce, "x")));
    let mut buf = BytesMut::new();
    let error = read_connect(&mut &publish[..], &mut buf)
        .await
        .expect_err("publish");
    assert!(matches!(error, FirstPacketError::NotConnect), "{error}");

    let mut buf = BytesMut::new();
    let error = read_connect(&mut &[0x10u8, 20, 0][..], &mut buf)
        .await
        .expect_err("cut");
    assert!(matches!(error, FirstPacketError::Closed), "{error}");
}

#[tokio::test]
async fn an_oversized_packet_is_refused_from_its_header() {
    // Remaining length 268,435,455 (the most MQTT can say); nothing follows.
    let huge = [0x10u8, 0xff, 0xff, 0xff, 0x7f];
    let mut buf = BytesMut::new();
    let error = read_connect(&mut &huge[..], &mut buf)
        .await
        .expect_err("huge");
    assert!(
        matches!(
            error,
            FirstPacketError::Mqtt(mqttbytes::Error::PayloadSizeLimitExceeded(_))
        ),
        "{error}"
    );
    let mut buf = BytesMut::new();
    let huge_publish = [0x30u8, 0xff, 0xff, 0xff, 0x7f];
    let error = read_packet(&mut &huge_publish[..], &mut buf)
        .await
        .expect_err("huge");
    assert!(
        matches!(
            error,
            FirstPacketError::Mqtt(mqttbytes::Error::PayloadSizeLimitExceeded(_))
        ),
        "{error}"
    );
}

#[tokio::test]
async fn packets_sent_right_behind_the_connect_are_kept() {
    let mut bytes = encode(&Packet::Connect(connect("pos-1", None)));
    bytes.extend_from_slice(&encode(&Packet::Subscribe(Subscribe::new(
        "soundbox/#",
        QoS::AtLeastOnce,
    ))));
    bytes.extend_from_slice(&encode(&Packet::PingReq));
    let mut reader = &bytes[..];
    let mut buf = BytesMut::new();
    let c = read_connect(&mut reader, &mut buf).await.expect("connect");
    assert_eq!(c.client_id, "pos-1");
    let next = read_packet(&mut reader, &mut buf).await.expect("read");
    assert!(matches!(next, Some(Packet::Subscribe(_))), "{next:?}");
    let next = read_packet(&mut reader, &mut buf).await.expect("read");
    assert_eq!(next, Some(Packet::PingReq));
    assert_eq!(read_packet(&mut reader, &mut buf).await.expect("eof"), None);
}

#[test]
fn what_clients_chose_is_escaped_and_cut_in_logs() {
    assert_eq!(
        printable("pos\n2024-01-01 INFO fake\u{1b}[31m"),
        "pos\\n2024-01-01 INFO fake\\u{1b}[31m"
    );
    assert_eq!(printable("máy POS \u{202e}1"), "máy POS \\u{202e}1");
    let long = "x".repeat(500);
    assert_eq!(printable(&long).chars().count(), SHOWN_CHARS + 1);
}
