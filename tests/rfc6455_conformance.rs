//! RFC 6455 conformance of the server's own WebSocket code, in the manner
//! of the Autobahn test suite: framing and length encodings, fragmentation
//! (with control frames between fragments), reserved bits and opcodes,
//! masking, UTF-8 split across fragments, close codes and reasons, and
//! what happens to messages that came before a broken frame.
//!
//! Each case drives a real server over a raw TCP socket and watches the
//! result from the outside: the frames the server answers with, and what a
//! second (plain-mode) client in the same room receives.

mod common;

use common::{Peer, RawFrame, RawPeer, TestServer};
use wschat::protocol::WELCOME;

use wschat::server::frames::opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};

use common::client_frame as frame;

/// A final frame with no reserved bits and a fixed mask.
fn whole(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// A server with a raw peer (past its welcome) and a plain-mode watcher in
/// the same room.
struct Bench {
    server: TestServer,
    raw: RawPeer,
    name: String,
    watcher: Peer,
}

impl Bench {
    async fn open() -> Self {
        Self::open_with(|_| {}).await
    }

    async fn open_with(tweak: impl FnOnce(&mut wschat::config::ServerConfig)) -> Self {
        let server = TestServer::with(|c| {
            c.rate = 0;
            tweak(c);
        })
        .await;
        let watcher = Peer::plain(&server.url()).await;
        let (status, raw) = RawPeer::upgrade(server.addr, "/", &[]).await;
        assert_eq!(status, 101);
        let mut raw = raw.expect("upgraded");
        assert_eq!(raw.frame().await, Some(RawFrame::Text(WELCOME.into())));
        let name = raw.stream.local_addr().expect("addr").to_string();
        let mut bench = Self {
            server,
            raw,
            name,
            watcher,
        };
        let joined = format!("* {} joined lobby", bench.name);
        bench.watcher.expect(&joined).await;
        bench.next_text(&joined).await;
        bench
    }

    /// The watcher receives the raw peer's message `text`.
    async fn delivered(&mut self, text: &str) {
        let line = format!("{}: {text}", self.name);
        self.watcher.expect(&line).await;
    }

    /// The raw peer's next text frame is `line`.
    async fn next_text(&mut self, line: &str) {
        assert_eq!(self.raw.frame().await, Some(RawFrame::Text(line.into())));
    }

    /// The raw peer is closed with `code`, after any other frames.
    async fn closed_with(&mut self, code: u16) {
        let (got, _) = self.raw.close_frame().await;
        assert_eq!(got, code);
    }

    /// The server is still well: the watcher's own request is answered.
    async fn still_serving(mut self) {
        // Gone first, so stopping the server need not wait for its close.
        drop(self.raw);
        self.watcher.send("/rooms").await;
        loop {
            let line = self.watcher.text().await;
            if line.starts_with("* rooms: ") {
                break;
            }
        }
        self.watcher.close().await;
        self.server.stop().await;
    }
}

/// Sending `bytes` closes the connection with `code`, and the server
/// carries on.
async fn fails_with(bytes: &[u8], code: u16) {
    let mut bench = Bench::open().await;
    bench.raw.send_bytes(bytes).await;
    bench.closed_with(code).await;
    bench.still_serving().await;
}

#[tokio::test]
async fn every_length_encoding_is_read() {
    let mut bench = Bench::open_with(|c| {
        c.max_message_bytes = 100_000;
        c.max_frame_bytes = 100_000;
    })
    .await;
    for len in [1, 125, 126, 127, 65_535, 65_536, 70_000] {
        let text = "a".repeat(len);
        bench.raw.send_bytes(&whole(TEXT, text.as_bytes())).await;
        bench.delivered(&text).await;
    }
    // A length in the 64-bit form although it would fit a shorter one.
    let mut long_form = vec![0x81, 0x80 | 127];
    long_form.extend_from_slice(&5u64.to_be_bytes());
    long_form.extend_from_slice(&[0, 0, 0, 0]);
    long_form.extend_from_slice(b"short");
    bench.raw.send_bytes(&long_form).await;
    bench.delivered("short").await;
    bench.still_serving().await;
}

#[tokio::test]
async fn a_length_over_the_limit_closes_1009_from_the_header() {
    let mut bench = Bench::open().await;
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 62).to_be_bytes());
    bench.raw.send_bytes(&head).await;
    bench.closed_with(1009).await;
    bench.still_serving().await;
}

#[tokio::test]
async fn fragments_make_one_message_with_control_frames_between_them() {
    let mut bench = Bench::open().await;
    let mask = [1, 2, 3, 4];
    let mut bytes = frame(false, 0, TEXT, b"frag", mask);
    bytes.extend(frame(false, 0, CONTINUATION, b"men", mask));
    bytes.extend(frame(true, 0, PING, b"between", mask));
    bytes.extend(frame(false, 0, CONTINUATION, b"", mask));
    bytes.extend(frame(true, 0, PONG, b"unasked", mask));
    bytes.extend(frame(true, 0, CONTINUATION, b"ted", mask));
    bench.raw.send_bytes(&bytes).await;
    // The ping is answered at once, with its payload.
    assert_eq!(
        bench.raw.frame().await,
        Some(RawFrame::Pong(b"between".to_vec()))
    );
    bench.delivered("fragmented").await;
    // One byte per frame.
    let word = "bytewise";
    for (index, byte) in word.bytes().enumerate() {
        let opcode = if index == 0 { TEXT } else { CONTINUATION };
        let fin = index + 1 == word.len();
        bench
            .raw
            .send_bytes(&frame(fin, 0, opcode, &[byte], mask))
            .await;
    }
    bench.delivered(word).await;
    bench.still_serving().await;
}

#[tokio::test]
async fn endless_empty_fragments_are_a_message_too_big() {
    // Each fragment costs at least 16 bytes of the 64 KiB message limit:
    // a message of 4096 empty fragments is refused (it used to go on for
    // ever, a core busy per connection), one of 100 one-byte fragments is fine.
    let mut bench = Bench::open().await;
    let mask = [5, 6, 7, 8];
    let mut bytes = frame(false, 0, TEXT, b"", mask);
    for _ in 0..100 {
        bytes.extend(frame(false, 0, CONTINUATION, b"x", mask));
    }
    bytes.extend(frame(true, 0, CONTINUATION, b"", mask));
    bench.raw.send_bytes(&bytes).await;
    bench.delivered(&"x".repeat(100)).await;
    let mut empty = frame(false, 0, TEXT, b"", mask);
    let fragment = frame(false, 0, CONTINUATION, b"", mask);
    for _ in 0..4096 {
        empty.extend_from_slice(&fragment);
    }
    bench.raw.send_bytes(&empty).await;
    bench.closed_with(1009).await;
}

#[tokio::test]
async fn utf8_split_across_fragments_is_put_back_together() {
    let mut bench = Bench::open().await;
    let text = "héllo wörld 𝄞";
    let bytes = text.as_bytes();
    // Cut inside the two-byte é and inside the four-byte clef.
    let cuts = [2, 14, 16, bytes.len()];
    let mut at = 0;
    for (index, &cut) in cuts.iter().enumerate() {
        let opcode = if index == 0 { TEXT } else { CONTINUATION };
        let fin = index + 1 == cuts.len();
        bench
            .raw
            .send_bytes(&frame(fin, 0, opcode, &bytes[at..cut], [9, 9, 9, 9]))
            .await;
        at = cut;
    }
    bench.delivered(text).await;
    bench.still_serving().await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let cases: [&[u8]; 5] = [
        b"\xff",
        b"\xc0\xaf",         // overlong '/'
        b"\xed\xa0\x80",     // a UTF-16 surrogate
        b"\xf4\x90\x80\x80", // past U+10FFFF
        b"ok \xe2\x82",      // cut short at the end of the message
    ];
    for bytes in cases {
        fails_with(&whole(TEXT, bytes), 1007).await;
    }
    // Invalid in a fragment of its own.
    let mut bench = Bench::open().await;
    let mut bytes = frame(false, 0, TEXT, b"fine so far ", [0; 4]);
    bytes.extend(frame(
        true,
        0,
        CONTINUATION,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
        [0; 4],
    ));
    bench.raw.send_bytes(&bytes).await;
    bench.closed_with(1007).await;
    bench.still_serving().await;
}

#[tokio::test]
async fn reserved_bits_and_opcodes_close_1002() {
    let mut cases: Vec<Vec<u8>> = (1..8)
        .map(|rsv| frame(true, rsv, TEXT, b"x", [1; 4]))
        .collect();
    for opcode in [3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        cases.push(frame(true, 0, opcode, b"", [1; 4]));
    }
    // Reserved bits on a control frame too.
    cases.push(frame(true, 4, PING, b"", [1; 4]));
    for bytes in cases {
        fails_with(&bytes, 1002).await;
    }
}

#[tokio::test]
async fn broken_framing_closes_1002() {
    let mask = [5, 6, 7, 8];
    let cases: Vec<Vec<u8>> = vec![
        // Unmasked.
        vec![0x81, 0x02, b'h', b'i'],
        // A continuation with nothing to continue.
        frame(true, 0, CONTINUATION, b"x", mask),
        // A new message inside a fragmented one.
        [
            frame(false, 0, TEXT, b"a", mask),
            frame(true, 0, TEXT, b"b", mask),
        ]
        .concat(),
        [
            frame(false, 0, TEXT, b"a", mask),
            frame(true, 0, BINARY, b"b", mask),
        ]
        .concat(),
        // Fragmented and oversized control frames.
        frame(false, 0, PING, b"", mask),
        frame(true, 0, PING, &[b'p'; 126], mask),
        frame(true, 0, CLOSE, &[b'c'; 126], mask),
    ];
    for bytes in cases {
        fails_with(&bytes, 1002).await;
    }
}

#[tokio::test]
async fn pings_are_answered_with_their_payload() {
    let mut bench = Bench::open().await;
    for payload in [&b""[..], b"x", &[0xfe; 125]] {
        bench.raw.send_bytes(&whole(PING, payload)).await;
        assert_eq!(
            bench.raw.frame().await,
            Some(RawFrame::Pong(payload.to_vec()))
        );
    }
    // Any mask works, an all-zero one included.
    bench
        .raw
        .send_bytes(&frame(true, 0, TEXT, b"zero mask", [0; 4]))
        .await;
    bench.delivered("zero mask").await;
    bench.still_serving().await;
}

#[tokio::test]
async fn binary_messages_are_refused_but_the_connection_stays() {
    let mut bench = Bench::open().await;
    bench.raw.send_bytes(&whole(BINARY, &[0, 1, 2])).await;
    bench
        .next_text("! binary frames are not supported: send text")
        .await;
    bench.raw.send_bytes(&whole(TEXT, b"after binary")).await;
    bench.delivered("after binary").await;
    bench.still_serving().await;
}

#[tokio::test]
async fn a_close_is_echoed_with_its_code() {
    for (payload, echoed) in [
        (&b""[..], 1005), // no code: the echo has none either
        (b"\x03\xe8", 1000),
        (b"\x03\xe8bye for now", 1000),
        (b"\x03\xe9", 1001),
        (b"\x0b\xb8", 3000),
        (b"\x13\x87custom", 4999),
    ] {
        let mut bench = Bench::open().await;
        bench.raw.send_bytes(&whole(CLOSE, payload)).await;
        bench.closed_with(echoed).await;
        // The server hangs up after its close frame.
        assert_eq!(bench.raw.frame().await, None);
        bench.still_serving().await;
    }
}

#[tokio::test]
async fn a_close_with_a_bad_code_or_reason_fails_the_connection() {
    for (payload, code) in [
        (&b"\x03"[..], 1002),        // one byte
        (b"\x00\x00", 1002),         // 0
        (b"\x03\xe7", 1002),         // 999
        (b"\x03\xed", 1002),         // 1005: never on the wire
        (b"\x03\xee", 1002),         // 1006: never on the wire
        (b"\x03\xf7", 1002),         // 1015: never on the wire
        (b"\x03\xf8", 1002),         // 1016: not assigned
        (b"\x0b\xb7", 1002),         // 2999: reserved for the protocol
        (b"\x13\x88", 1002),         // 5000
        (b"\x03\xe8\xff\xfe", 1007), // reason not UTF-8
    ] {
        fails_with(&whole(CLOSE, payload), code).await;
    }
}

#[tokio::test]
async fn messages_before_a_broken_frame_in_one_segment_are_delivered() {
    let mut bench = Bench::open().await;
    let bytes = [
        whole(TEXT, b"one"),
        whole(TEXT, b"two"),
        frame(true, 2, TEXT, b"broken", [1; 4]),
        whole(TEXT, b"never"),
    ]
    .concat();
    bench.raw.send_bytes(&bytes).await;
    bench.delivered("one").await;
    bench.delivered("two").await;
    bench.closed_with(1002).await;
    let left = format!("* {} left lobby", bench.name);
    bench.watcher.expect(&left).await;
    bench.still_serving().await;
}
