//! The server's frame reader: any bytes, in any pieces, give messages or a
//! clean violation, never a panic; valid frames come back exactly.

mod common;

use common::cases;
use proptest::prelude::*;
use wschat::server::frames::{FrameReader, Incoming, Violation};

const LIMIT: usize = 64 * 1024;

/// A masked client frame without reserved bits.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    common::client_frame(fin, 0, opcode, payload, mask)
}

/// Feeds `bytes` cut at `cuts`; returns what came out and how it ended.
fn read_all(bytes: &[u8], cuts: &[usize]) -> (Vec<Incoming>, Option<Violation>) {
    let mut reader = FrameReader::new(LIMIT);
    let mut items = Vec::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    for end in ends {
        reader.feed(&bytes[at..end.max(at)]);
        while let Some(item) = reader.take() {
            match item {
                Ok(item) => items.push(item),
                Err(violation) => return (items, Some(violation)),
            }
        }
        at = end.max(at);
    }
    (items, None)
}

/// One message a client might send, and what the reader should make of it.
#[derive(Debug, Clone)]
enum Sent {
    Text(String, usize),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(u16, String),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        (".{0,300}", 1usize..4).prop_map(|(text, pieces)| Sent::Text(text, pieces)),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Sent::Binary),
        prop::collection::vec(any::<u8>(), 0..125).prop_map(Sent::Ping),
        (
            prop::sample::select(vec![1000u16, 1001, 1011, 3000, 4999]),
            ".{0,20}"
        )
            .prop_map(|(code, reason)| Sent::Close(code, reason)),
    ]
}

fn encode(message: &Sent, mask: [u8; 4], out: &mut Vec<u8>) -> Incoming {
    match message {
        Sent::Text(text, pieces) => {
            // Fragmented into up to `pieces` frames.
            let bytes = text.as_bytes();
            let size = bytes.len().div_ceil(*pieces).max(1);
            let parts: Vec<&[u8]> = if bytes.is_empty() {
                vec![&[][..]]
            } else {
                bytes.chunks(size).collect()
            };
            for (index, part) in parts.iter().enumerate() {
                let opcode = if index == 0 { 1 } else { 0 };
                out.extend(frame(index + 1 == parts.len(), opcode, part, mask));
            }
            Incoming::Text(text.clone())
        }
        Sent::Binary(bytes) => {
            out.extend(frame(true, 2, bytes, mask));
            Incoming::Binary
        }
        Sent::Ping(bytes) => {
            out.extend(frame(true, 9, bytes, mask));
            Incoming::Ping(bytes.clone())
        }
        Sent::Close(code, reason) => {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason.as_bytes());
            out.extend(frame(true, 8, &payload, mask));
            Incoming::Close(Some((*code, reason.clone())))
        }
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn any_bytes_give_messages_or_a_violation(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (_, violation) = read_all(&bytes, &cuts);
        if let Some(violation) = violation {
            prop_assert!([1002, 1007, 1009].contains(&violation.close_code()));
        }
    }

    #[test]
    fn valid_frames_come_back_exactly_however_they_are_cut(
        messages in prop::collection::vec(sent(), 0..8),
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut bytes = Vec::new();
        let expected: Vec<Incoming> = messages.iter().map(|m| encode(m, mask, &mut bytes)).collect();
        let (items, violation) = read_all(&bytes, &cuts);
        prop_assert_eq!(violation, None);
        prop_assert_eq!(items, expected);
    }
}

#[test]
fn broken_frames_get_the_right_close_code() {
    let mask = [1, 2, 3, 4];
    let unmasked = [0x81, 0x02, b'h', b'i'];
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (unmasked.to_vec(), 1002),
        (frame(true, 0x3, b"", mask), 1002),
        (vec![0xc1, 0x80, 0, 0, 0, 0], 1002),
        (frame(false, 9, b"", mask), 1002),
        (frame(true, 0, b"x", mask), 1002),
        (frame(true, 8, b"\x03", mask), 1002),
        (frame(true, 8, b"\x03\xed", mask), 1002),
        (frame(true, 1, b"bad \xff", mask), 1007),
        (frame(true, 8, b"\x03\xe8\xff", mask), 1007),
        (frame(true, 1, &vec![b'a'; LIMIT + 1], mask), 1009),
        (
            [frame(false, 1, b"a", mask), frame(true, 1, b"b", mask)].concat(),
            1002,
        ),
    ];
    for (bytes, code) in cases {
        let (_, violation) = read_all(&bytes, &[]);
        assert_eq!(
            violation.map(|v| v.close_code()),
            Some(code),
            "{:02x?}",
            &bytes[..bytes.len().min(16)]
        );
    }
    // A frame over the limit is refused from its header, before its payload.
    let mut reader = FrameReader::new(LIMIT);
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
    reader.feed(&head);
    assert!(matches!(reader.take(), Some(Err(Violation::TooBig(_)))));
}

#[test]
fn a_huge_length_after_a_fragment_is_refused_not_overflowed() {
    // Found by cargo fuzz: a fragment, then a continuation whose 64-bit
    // length brought the message's size past u64::MAX.
    let mut bytes = frame(false, 1, b"a", [0; 4]);
    bytes.extend_from_slice(&[0x80, 0x80 | 127]);
    bytes.extend_from_slice(&u64::MAX.to_be_bytes());
    let (items, violation) = read_all(&bytes, &[]);
    assert!(items.is_empty());
    assert_eq!(violation, Some(Violation::TooBig(u64::MAX)));
}

#[test]
fn messages_complete_before_a_bad_frame_are_still_delivered() {
    let mask = [9, 8, 7, 6];
    // One read: two whole messages, a ping, then a frame with reserved bits.
    let bytes = [
        frame(true, 1, b"first", mask),
        frame(false, 1, b"sec", mask),
        frame(true, 0, b"ond", mask),
        frame(true, 9, b"p", mask),
        vec![0xf1, 0x80, 0, 0, 0, 0],
        frame(true, 1, b"never", mask),
    ]
    .concat();
    let (items, violation) = read_all(&bytes, &[]);
    assert_eq!(
        items,
        [
            Incoming::Text("first".into()),
            Incoming::Text("second".into()),
            Incoming::Ping(b"p".to_vec()),
        ]
    );
    assert_eq!(violation.map(|v| v.close_code()), Some(1002));
    // Nothing is read after the violation.
    let mut reader = FrameReader::new(LIMIT);
    reader.feed(&[0xf1, 0x80, 0, 0, 0, 0]);
    assert!(matches!(reader.take(), Some(Err(_))));
    reader.feed(&frame(true, 1, b"late", mask));
    assert_eq!(reader.take(), None);
}
