//! The handshake router on arbitrary request heads, under a strict policy
//! and an open one: always a decision, never a panic, and every answer a
//! well-formed HTTP response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::server::handshake::{Decision, Policy, decide};

fuzz_target!(|data: &[u8]| {
    let strict = Policy {
        token: Some("secret".into()),
        allowed_origins: vec!["https://ok.example".into()],
        check_host: true,
        allowed_hosts: vec!["chat.example".into()],
    };
    for policy in [&strict, &Policy::default()] {
        match decide(data, policy) {
            Decision::Upgrade { response, .. } => {
                assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
                assert!(response.ends_with(b"\r\n\r\n"));
            }
            Decision::Respond(refusal) => {
                assert!(refusal.response.starts_with(b"HTTP/1.1 "));
                assert!((400..600).contains(&refusal.status));
            }
            Decision::Asset { status, head, .. } => {
                assert!(head.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
                assert!(head.ends_with(b"\r\n\r\n"));
            }
            Decision::Health | Decision::Metrics => {}
        }
    }
});
