//! Any input to the command and JSON parsers yields a request or a clean error.

mod common;

use common::cases;
use proptest::prelude::*;
use wschat::protocol::{
    ClientFrame, ErrorCode, Request, normalize_room, parse_json, parse_plain, validate_nick,
};

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn plain_lines_never_panic(line in any::<String>()) {
        match parse_plain(&line) {
            Ok(Request::Say { text, .. }) => {
                // A message keeps its text (minus the // escape).
                let escaped = format!("/{}", text);
                prop_assert!(line == text || line == escaped);
            }
            Ok(_) => prop_assert!(line.starts_with('/')),
            Err(rejection) => {
                prop_assert_eq!(rejection.code, ErrorCode::UnknownCommand);
                prop_assert!(!rejection.text.is_empty());
            }
        }
    }

    #[test]
    fn commands_with_arbitrary_arguments_never_panic(
        name in prop::sample::select(vec!["nick", "join", "msg", "who", "rooms", "help", "x"]),
        args in ".{0,40}",
    ) {
        let _ = parse_plain(&format!("/{name} {args}"));
    }

    #[test]
    fn json_text_never_panics(text in any::<String>()) {
        if let Err(rejection) = parse_json(&text) {
            prop_assert!(matches!(rejection.code, ErrorCode::BadJson | ErrorCode::UnknownType));
        }
    }

    #[test]
    fn json_shaped_input_never_panics(
        kind in prop::sample::select(vec!["say", "nick", "join", "private", "who", "rooms", "zap", ""]),
        field in prop::sample::select(vec!["text", "nick", "room", "to", "after", "cid"]),
        value in prop::sample::select(vec!["\"x\"", "1", "-1", "null", "[]", "{}", "1e400", "\"\\ud800\"", "18446744073709551616"]),
    ) {
        let text = format!(r#"{{"type":"{kind}","{field}":{value}}}"#);
        let _ = parse_json(&text);
    }

    #[test]
    fn every_client_frame_round_trips(text in ".{0,64}", nick in "[A-Za-z0-9_-]{1,24}", after in any::<Option<u64>>()) {
        let frames = [
            ClientFrame::Say { text: text.clone(), cid: Some(nick.clone()) },
            ClientFrame::Nick { nick: nick.clone() },
            ClientFrame::Join { room: nick.to_lowercase(), after, epoch: after.map(|a| a ^ 7) },
            ClientFrame::Private { to: nick.clone(), text, cid: None },
            ClientFrame::Who,
            ClientFrame::Rooms,
        ];
        for frame in frames {
            let json = serde_json::to_string(&frame).expect("serialise");
            prop_assert_eq!(parse_json(&json), Ok(Request::from(frame)));
        }
    }

    #[test]
    fn names_are_validated_without_panicking(name in any::<String>()) {
        if validate_nick(&name).is_ok() {
            prop_assert!((1..=24).contains(&name.len()));
        }
        if let Ok(room) = normalize_room(&name) {
            prop_assert!((1..=32).contains(&room.len()));
            prop_assert_eq!(room.to_ascii_lowercase(), room.clone());
        }
    }
}
