//! The handshake path: any bytes get a decision, never a panic, and the
//! decisions that matter hold under arbitrary extra headers.

mod common;

use common::cases;
use proptest::prelude::*;
use wschat::server::handshake::{Decision, Policy, decide};

const VALID: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn status(decision: &Decision) -> u16 {
    decision.status()
}

fn locked() -> Policy {
    Policy {
        token: Some("secret".into()),
        allowed_origins: vec!["https://ok.example".into()],
        check_host: true,
        allowed_hosts: vec!["h".into()],
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn arbitrary_bytes_get_a_decision(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let decision = decide(&bytes, &locked());
        let code = status(&decision);
        prop_assert!([101, 200, 304, 400, 401, 403, 404, 405, 426, 431].contains(&code));
        if let Decision::Respond(refusal) = decision {
            prop_assert!(refusal.response.starts_with(b"HTTP/1.1 "));
        }
    }

    #[test]
    fn arbitrary_header_lines_get_a_decision(lines in proptest::collection::vec("[ -~]{0,80}", 0..20)) {
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for line in &lines {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let _ = decide(head.as_bytes(), &locked());
    }

    #[test]
    fn no_upgrade_without_the_token(extra in proptest::collection::vec("[A-Za-z-]{1,20}: [ -~]{0,40}", 0..6)) {
        let mut head = String::from(VALID);
        for line in &extra {
            if line.to_ascii_lowercase().starts_with("authorization") {
                continue;
            }
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        prop_assert_ne!(status(&decide(head.as_bytes(), &locked())), 101);
    }

    #[test]
    fn no_upgrade_for_a_foreign_origin(host in "[a-z]{1,12}\\.example", port in 1u16..) {
        let head = format!("{VALID}Authorization: Bearer secret\r\nOrigin: https://{host}:{port}\r\n\r\n");
        prop_assert_eq!(status(&decide(head.as_bytes(), &locked())), 403);
    }
}

#[test]
fn the_valid_request_upgrades() {
    let head = format!("{VALID}Authorization: Bearer secret\r\n\r\n");
    assert_eq!(status(&decide(head.as_bytes(), &locked())), 101);
}
