//! The handshake router on arbitrary request heads, under a strict policy
//! and an open one: always a decision, never a panic, and every answer a
//! well-formed HTTP response. What it learned: an upgrade is never granted
//! to a head with bare-LF line ends, to a key that is not 16 bytes of
//! base64, or (under the strict policy) to a `Host` that only looks like a
//! name it knows.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::server::handshake::{Decision, Policy, decide};

/// The value of header `name` (case-insensitive), if the head has one.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Whether `key` decodes as base64 to 16 bytes: 22 characters of the
/// alphabet and `==`.
fn sixteen_bytes(key: &str) -> bool {
    let (body, pad) = key.split_at(key.len().min(22));
    body.len() == 22
        && pad == "=="
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Whether `host` names the strict policy's server: a loopback name or
/// `chat.example`, with at most a numeric port.
fn known_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host.as_str(),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name == "localhost"
        || name.ends_with(".localhost")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        || name == "[::1]"
        || name == "chat.example"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What an upgrade's head must be, whatever the policy.
fn check_upgrade(data: &[u8], strict: bool) {
    let bare_lf = data
        .iter()
        .enumerate()
        .any(|(at, &b)| b == b'\n' && (at == 0 || data[at - 1] != b'\r'));
    assert!(!bare_lf, "upgrade granted to a head with bare LF");
    let head = std::str::from_utf8(data).expect("an upgraded head is text");
    let key = header(head, "sec-websocket-key").expect("an upgrade has a key");
    assert!(sixteen_bytes(key), "upgrade granted to key {key:?}");
    if strict {
        let host = header(head, "host").expect("an upgrade has a Host");
        assert!(known_host(host), "upgrade granted to Host {host:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let strict = Policy {
        token: Some("secret".into()),
        allowed_origins: vec!["https://ok.example".into()],
        check_host: true,
        allowed_hosts: vec!["chat.example".into()],
    };
    for (policy, is_strict) in [(&strict, true), (&Policy::default(), false)] {
        match decide(data, policy) {
            Decision::Upgrade { response, .. } => {
                assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
                assert!(response.ends_with(b"\r\n\r\n"));
                check_upgrade(data, is_strict);
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
