//! The wire protocol: names, commands, JSON frames and the plain-text rendering.
//!
//! Everything here is pure (no I/O) so the server, the client and the tests
//! share one definition of what goes over the wire.

use serde::{Deserialize, Serialize};

/// First frame of every session, and the `text` of the JSON `welcome`.
pub const WELCOME: &str = "Welcome to chat! Type a message";
/// The subprotocol that selects JSON mode at the handshake.
pub const SUBPROTOCOL: &str = "wschat.v1";
/// The room every connection starts in.
pub const DEFAULT_ROOM: &str = "lobby";
/// Longest nick, in bytes (all allowed characters are ASCII).
pub const MAX_NICK_LEN: usize = 24;
/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 32;

/// The plain-mode help text, one notice line per entry.
pub const HELP: &[&str] = &[
    "commands:",
    "/nick NAME        choose a nickname (1-24 of A-Z a-z 0-9 _ -)",
    "/join ROOM        move to a room (1-32 of a-z 0-9 _ -)",
    "/msg NICK TEXT    send a private message",
    "/who              list the members of your room",
    "/rooms            list the rooms and how many are in each",
    "/help             this list",
    "//TEXT            send a message that starts with /",
];

/// How a connection talks, chosen at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line of text per frame (no subprotocol requested).
    Plain,
    /// One JSON object per frame (subprotocol `wschat.v1`).
    Json,
}

/// Machine-readable error codes, as sent in JSON `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON object of a known shape.
    BadJson,
    /// The JSON `type` is not one the server knows.
    UnknownType,
    /// A plain-mode `/command` the server does not know.
    UnknownCommand,
    /// The message text is over the server's limit.
    TooLong,
    /// The connection sends faster than the server allows.
    RateLimited,
    /// Another connection holds that nick.
    NickTaken,
    /// The nick is not 1-24 of `A-Z a-z 0-9 _ -`.
    BadNick,
    /// The room name is not 1-32 of `a-z 0-9 _ -`.
    BadRoom,
    /// Opening one more room would pass the server's `--max-rooms`.
    TooManyRooms,
    /// No connection holds that nick.
    NoSuchUser,
    /// Binary frames carry nothing in this protocol.
    BinaryUnsupported,
    /// A message with no text.
    Empty,
    /// The text carries a control character (other than TAB).
    BadText,
    /// The server cannot store or read messages right now; nothing was delivered.
    Unavailable,
    /// A well-formed frame with a field the server does not take (a `cid`
    /// over [`MAX_CID_BYTES`]); nothing was done.
    BadRequest,
    /// Any other failure (the text says what).
    Internal,
    /// Anything this build does not know (for forward compatibility).
    #[serde(other)]
    Unknown,
}

/// A request from a client, after parsing either mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A chat message to the current room.
    Say { text: String, cid: Option<String> },
    /// Choose a nick.
    Nick { nick: String },
    /// Move to a room, optionally resuming after a message id seen in
    /// history `epoch`.
    Join {
        room: String,
        after: Option<u64>,
        epoch: Option<u64>,
    },
    /// A private message.
    Private {
        to: String,
        text: String,
        cid: Option<String>,
    },
    /// List the members of the current room.
    Who,
    /// List the rooms.
    Rooms,
    /// The current room's stored messages before an id (scroll-back), at
    /// most `limit`.
    Older { before: u64, limit: usize },
    /// Plain-mode `/help`.
    Help,
}

/// Messages an `older` request gets when it names no `limit`.
pub const OLDER_PAGE: usize = 50;

/// A request the server refuses before acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// A lowercase sentence for people.
    pub text: String,
}

impl Rejection {
    /// A rejection with the given code and text.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }
}

/// Frames a JSON-mode client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    /// See [`Request::Say`].
    Say {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// See [`Request::Nick`].
    Nick { nick: String },
    /// See [`Request::Join`].
    Join {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    /// See [`Request::Private`].
    Private {
        to: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// See [`Request::Who`].
    Who,
    /// See [`Request::Rooms`].
    Rooms,
    /// See [`Request::Older`].
    Older {
        before: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
}

impl From<ClientFrame> for Request {
    fn from(frame: ClientFrame) -> Self {
        match frame {
            ClientFrame::Say { text, cid } => Request::Say { text, cid },
            ClientFrame::Nick { nick } => Request::Nick { nick },
            ClientFrame::Join { room, after, epoch } => Request::Join { room, after, epoch },
            ClientFrame::Private { to, text, cid } => Request::Private { to, text, cid },
            ClientFrame::Who => Request::Who,
            ClientFrame::Rooms => Request::Rooms,
            ClientFrame::Older { before, limit } => Request::Older {
                before,
                limit: limit.unwrap_or(OLDER_PAGE).clamp(1, LIST_CAP),
            },
        }
    }
}

/// The limits a server announces in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// Messages per connection per 10 seconds on average; 0 means no limit.
    pub rate: u32,
    /// Messages that may be sent at once before the rate applies.
    pub rate_burst: u32,
    /// The longest message text, in bytes.
    pub max_message_bytes: usize,
}

/// One room in a `rooms` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room's name.
    pub name: String,
    /// How many connections are in it.
    pub members: usize,
    /// The id of its last message, when the server knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Frames the server sends in JSON mode; every one also has a plain rendering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// First frame of a session.
    Welcome {
        text: String,
        nick: String,
        room: String,
        /// Identifies the server's message history: when it changes (an
        /// in-memory server restarted), message ids start again, so a client
        /// must forget the ids it saw.
        #[serde(default)]
        epoch: u64,
        /// What the server allows, so a client can pace itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<Allowance>,
        /// This connection's secret: a later handshake with `?resume=` and
        /// it takes over this connection's nick.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// A chat message in a room.
    Message {
        id: u64,
        room: String,
        from: String,
        text: String,
        ts: u64,
        /// Only on the copy sent back to its sender.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        /// Set when replayed from history.
        #[serde(default, skip_serializing_if = "is_false")]
        history: bool,
    },
    /// A private message (sent to its recipient and, as acknowledgement, its sender).
    Private {
        from: String,
        to: String,
        text: String,
        ts: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// Someone entered a room.
    Joined { room: String, nick: String },
    /// Someone left a room.
    Left { room: String, nick: String },
    /// Someone changed nick.
    Renamed { old: String, new: String },
    /// Messages a `join` asked for are not all there: either the room's
    /// history epoch changed (no `after`/`first`: ids start again, and the
    /// recent history follows), or those between `after` and `first` are no
    /// longer stored.
    Gap {
        room: String,
        /// The room's current epoch.
        epoch: u64,
        /// The id the client asked to resume after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// The first id still stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first: Option<u64>,
    },
    /// Ends the answer to `older`: `count` messages before `before` came
    /// (fewer than asked: nothing older is stored).
    Older {
        room: String,
        before: u64,
        count: usize,
    },
    /// Reply to `who`.
    Members {
        room: String,
        nicks: Vec<String>,
        /// Members left out of a long list (see [`LIST_CAP`]).
        #[serde(default, skip_serializing_if = "is_zero")]
        more: usize,
    },
    /// Reply to `rooms`.
    Rooms {
        rooms: Vec<RoomInfo>,
        /// Rooms left out of a long list (see [`LIST_CAP`]).
        #[serde(default, skip_serializing_if = "is_zero")]
        more: usize,
    },
    /// A plain informational line (used for `/help` and the like).
    Notice { text: String },
    /// A refused request; `cid` names it when the request had one.
    Error {
        code: ErrorCode,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
}

impl ServerFrame {
    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The frame as a connection in `mode` receives it.
    pub fn render(&self, mode: Mode) -> String {
        match mode {
            Mode::Plain => self.to_plain(),
            Mode::Json => self.to_json(),
        }
    }

    /// For a `gap`, the line a person is shown: how many messages are gone,
    /// when that is known.
    pub fn gap_text(&self) -> Option<String> {
        let ServerFrame::Gap { after, first, .. } = self else {
            return None;
        };
        Some(match (after, first) {
            (Some(after), Some(first)) if *first > after + 1 => {
                let missing = first - after - 1;
                let plural = if missing == 1 {
                    "message is"
                } else {
                    "messages are"
                };
                format!("{missing} earlier {plural} no longer stored")
            }
            _ => "some earlier messages were not kept".to_owned(),
        })
    }

    /// An error frame from a rejection.
    pub fn error(rejection: Rejection, cid: Option<String>) -> Self {
        ServerFrame::Error {
            code: rejection.code,
            text: rejection.text,
            cid,
        }
    }

    /// The plain-mode line for this frame: `NAME: TEXT`, `[private] NAME: TEXT`,
    /// `* NOTICE` or `! ERROR`.
    pub fn to_plain(&self) -> String {
        match self {
            ServerFrame::Welcome { text, .. } => text.clone(),
            ServerFrame::Message { from, text, .. } => format!("{from}: {text}"),
            ServerFrame::Private { from, text, .. } => format!("[private] {from}: {text}"),
            ServerFrame::Joined { room, nick } => format!("* {nick} joined {room}"),
            ServerFrame::Older { room, count, .. } => {
                format!("* {count} earlier messages of {room} above")
            }
            ServerFrame::Left { room, nick } => format!("* {nick} left {room}"),
            ServerFrame::Renamed { old, new } => format!("* {old} is now known as {new}"),
            ServerFrame::Gap { .. } => format!("! {}", self.gap_text().unwrap_or_default()),
            ServerFrame::Members { room, nicks, more } => format!(
                "* {} in {room}: {}{}",
                nicks.len() + more,
                nicks.join(", "),
                and_more(*more)
            ),
            ServerFrame::Rooms { rooms, more } => {
                let list: Vec<String> = rooms
                    .iter()
                    .map(|r| format!("{} ({})", r.name, r.members))
                    .collect();
                format!("* rooms: {}{}", list.join(", "), and_more(*more))
            }
            ServerFrame::Notice { text } => format!("* {text}"),
            ServerFrame::Error { text, .. } => format!("! {text}"),
        }
    }
}

/// How the names the server gives connections without a nick begin (off
/// loopback); no one may choose a nick that begins so.
pub const GUEST_PREFIX: &str = "guest-";

/// Checks a nick: 1-24 of `A-Z a-z 0-9 _ -`, not beginning with `guest-`.
pub fn validate_nick(nick: &str) -> Result<(), Rejection> {
    if nick
        .get(..GUEST_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(GUEST_PREFIX))
    {
        return Err(Rejection::new(
            ErrorCode::BadNick,
            format!(
                "invalid nickname {nick:?}: names beginning with {GUEST_PREFIX} are given by the server"
            ),
        ));
    }
    let ok = !nick.is_empty()
        && nick.len() <= MAX_NICK_LEN
        && nick
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::BadNick,
            format!("invalid nickname {nick:?}: use 1-24 of A-Z a-z 0-9 _ -"),
        ))
    }
}

/// Lower-cases a room name and checks it: 1-32 of `a-z 0-9 _ -`.
pub fn normalize_room(room: &str) -> Result<String, Rejection> {
    let room = room.to_ascii_lowercase();
    let ok = !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(room)
    } else {
        Err(Rejection::new(
            ErrorCode::BadRoom,
            format!("invalid room name {room:?}: use 1-32 of a-z 0-9 _ -"),
        ))
    }
}

/// Parses one plain-mode frame: a message, or a `/command`.
///
/// `//text` sends `/text` as a message.
pub fn parse_plain(line: &str) -> Result<Request, Rejection> {
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Request::Say {
            text: line.to_owned(),
            cid: None,
        });
    };
    if rest.starts_with('/') {
        return Ok(Request::Say {
            text: rest.to_owned(),
            cid: None,
        });
    }
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((name, args)) => (name, args.trim()),
        None => (rest, ""),
    };
    let usage = |text: &str| Err(Rejection::new(ErrorCode::UnknownCommand, text));
    match name {
        // The whole rest is the name, so a bad one gets the reason it is bad.
        "nick" if !args.is_empty() => Ok(Request::Nick {
            nick: args.to_owned(),
        }),
        "nick" => usage("usage: /nick NAME"),
        "join" if !args.is_empty() => Ok(Request::Join {
            room: args.to_owned(),
            after: None,
            epoch: None,
        }),
        "join" => usage("usage: /join ROOM"),
        "msg" => match args.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => Ok(Request::Private {
                to: to.to_owned(),
                text: text.trim_start().to_owned(),
                cid: None,
            }),
            _ => usage("usage: /msg NICK TEXT"),
        },
        "who" => Ok(Request::Who),
        "rooms" => Ok(Request::Rooms),
        "help" => Ok(Request::Help),
        _ => Err(Rejection::new(
            ErrorCode::UnknownCommand,
            format!("unknown command /{name} (try /help)"),
        )),
    }
}

/// The longest `cid` a client may give a message, in bytes: it is stored
/// with the message, so it may not cost more than a short id.
pub const MAX_CID_BYTES: usize = 64;

/// Parses one JSON-mode frame.
pub fn parse_json(text: &str) -> Result<Request, Rejection> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(
            ClientFrame::Say { cid: Some(cid), .. } | ClientFrame::Private { cid: Some(cid), .. },
        ) if cid.len() > MAX_CID_BYTES => Err(Rejection::new(
            ErrorCode::BadRequest,
            format!(
                "cid is {} bytes, over the limit of {MAX_CID_BYTES}: nothing was sent",
                cid.len()
            ),
        )),
        Ok(frame) => Ok(frame.into()),
        Err(err) => {
            // Only on the error path: tell an unknown `type` from malformed JSON.
            #[derive(Deserialize)]
            struct Tagged {
                #[serde(rename = "type")]
                kind: String,
            }
            const KNOWN: &[&str] = &["say", "nick", "join", "private", "who", "rooms", "older"];
            match serde_json::from_str::<Tagged>(text) {
                Ok(tagged) if !KNOWN.contains(&tagged.kind.as_str()) => Err(Rejection::new(
                    ErrorCode::UnknownType,
                    format!("unknown type {:?}", tagged.kind),
                )),
                _ => Err(Rejection::new(
                    ErrorCode::BadJson,
                    format!("malformed frame: {err}"),
                )),
            }
        }
    }
}

/// Readies message text (chat or private) the way every mode does: one
/// trailing `\n` or `\r\n` (what raw tools append) is dropped, then any
/// control character but TAB (C0, DEL, C1) refuses the message, so no
/// message can forge a line of its own or reach a terminal as an escape
/// sequence.
///
/// # Errors
/// `bad_text`, naming the first control character.
pub fn clean_text(text: &mut String) -> Result<(), Rejection> {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    match first_control(text) {
        None => Ok(()),
        Some(c) => Err(Rejection::new(
            ErrorCode::BadText,
            format!(
                "message not delivered: it contains the control character U+{:04X}",
                u32::from(c)
            ),
        )),
    }
}

/// The first control character in `text` other than TAB.
fn first_control(text: &str) -> Option<char> {
    // Bytes first: C0 and DEL are single bytes, and every C1 character is
    // encoded as 0xC2 followed by 0x80..=0x9F.
    let bytes = text.as_bytes();
    let suspect = bytes
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2)?;
    text[suspect..]
        .chars()
        .find(|&c| c != '\t' && c.is_control())
}

/// Format characters that can reorder or hide text on a terminal: bidi
/// embeddings, overrides and isolates, the zero-width space, the word
/// joiner, the line and paragraph separators, and the BOM. (ZWJ, ZWNJ and
/// tag characters are left alone: emoji and scripts are made of them.)
fn is_deceptive(c: char) -> bool {
    matches!(
        u32::from(c),
        0x200B | 0x2028 | 0x2029 | 0x202A..=0x202E | 0x2060 | 0x2066..=0x2069 | 0xFEFF
    )
}

/// `text` with every control character but TAB made visible: C0 and DEL in
/// caret notation (`^[` for ESC, `^J` for a newline, `^?` for DEL), C1 and
/// the format characters that reorder or hide text as `<U+202E>`. What a
/// terminal shows is then exactly what was sent, in the order it was sent.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    let suspect = |c: char| (c != '\t' && c.is_control()) || is_deceptive(c);
    if !text.chars().any(suspect) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match u32::from(c) {
            0x09 => out.push(c),
            code @ 0x00..=0x1f => {
                out.push('^');
                out.push(char::from(b'@' + code as u8));
            }
            0x7f => out.push_str("^?"),
            code @ 0x80..=0x9f => out.push_str(&format!("<U+{code:04X}>")),
            code if is_deceptive(c) => out.push_str(&format!("<U+{code:04X}>")),
            _ => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The most names a `members` or `rooms` answer lists; the rest are counted
/// in its `more`.
pub const LIST_CAP: usize = 500;

/// Keeps the first [`LIST_CAP`] of `list`; returns how many it dropped.
pub fn cap_list<T>(list: &mut Vec<T>) -> usize {
    let more = list.len().saturating_sub(LIST_CAP);
    list.truncate(LIST_CAP);
    more
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The tail of a capped list in plain text: ` and N more`, or nothing.
fn and_more(more: usize) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(" and {more} more")
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaned(text: &str) -> Result<String, ErrorCode> {
        let mut text = text.to_owned();
        clean_text(&mut text).map(|()| text).map_err(|r| r.code)
    }

    #[test]
    fn text_loses_one_trailing_newline_and_refuses_control_characters() {
        assert_eq!(cleaned("hi\n"), Ok("hi".into()));
        assert_eq!(cleaned("hi\r\n"), Ok("hi".into()));
        assert_eq!(cleaned("tab\tok\n"), Ok("tab\tok".into()));
        assert_eq!(cleaned("héllo wörld ✓"), Ok("héllo wörld ✓".into()));
        assert_eq!(
            cleaned("\u{a0}non-breaking\u{ff}"),
            Ok("\u{a0}non-breaking\u{ff}".into())
        );
        for bad in [
            "two\n\n",
            "a\nbob: forged",
            "cr\ronly",
            "\u{1b}[2Jclear",
            "bell\u{7}",
            "del\u{7f}",
            "csi\u{9b}31m",
            "nul\0",
            "trailing cr\r",
        ] {
            assert_eq!(cleaned(bad), Err(ErrorCode::BadText), "{bad:?}");
        }
        let mut text = "x\u{1b}".to_owned();
        let rejection = clean_text(&mut text).expect_err("ESC");
        assert_eq!(
            rejection.text,
            "message not delivered: it contains the control character U+001B"
        );
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(visible("plain ✓\ttab"), "plain ✓\ttab");
        assert_eq!(visible("a\nbob: forged"), "a^Jbob: forged");
        assert_eq!(visible("\u{1b}[2J\r\u{7f}\u{9b}"), "^[[2J^M^?<U+009B>");
    }

    #[test]
    fn format_characters_that_reorder_or_hide_text_are_shown() {
        for (text, shown) in [
            ("pay \u{202E}moc.evil", "pay <U+202E>moc.evil"),
            (
                "\u{202A}\u{202B}\u{202C}\u{202D}",
                "<U+202A><U+202B><U+202C><U+202D>",
            ),
            (
                "a\u{2066}b\u{2067}c\u{2068}d\u{2069}",
                "a<U+2066>b<U+2067>c<U+2068>d<U+2069>",
            ),
            ("zero\u{200B}width", "zero<U+200B>width"),
            ("word\u{2060}joiner", "word<U+2060>joiner"),
            ("line\u{2028}para\u{2029}", "line<U+2028>para<U+2029>"),
            ("\u{FEFF}bom", "<U+FEFF>bom"),
            // Emoji sequences and scripts need ZWJ, ZWNJ and tags as they are.
            (
                "\u{1F469}\u{200D}\u{1F4BB} \u{0645}\u{200C}\u{0649} \u{1F3F4}\u{E0067}\u{E007F}",
                "\u{1F469}\u{200D}\u{1F4BB} \u{0645}\u{200C}\u{0649} \u{1F3F4}\u{E0067}\u{E007F}",
            ),
        ] {
            assert_eq!(visible(text), shown, "{text:?}");
        }
    }

    #[test]
    fn plain_text_is_a_message() {
        assert_eq!(
            parse_plain("hello world"),
            Ok(Request::Say {
                text: "hello world".into(),
                cid: None
            })
        );
        assert_eq!(
            parse_plain("//shrug"),
            Ok(Request::Say {
                text: "/shrug".into(),
                cid: None
            })
        );
    }

    #[test]
    fn plain_commands_parse() {
        assert_eq!(
            parse_plain("/nick alice"),
            Ok(Request::Nick {
                nick: "alice".into()
            })
        );
        assert_eq!(
            parse_plain("/join Rust"),
            Ok(Request::Join {
                room: "Rust".into(),
                after: None,
                epoch: None
            })
        );
        assert_eq!(
            parse_plain("/msg bob  psst there"),
            Ok(Request::Private {
                to: "bob".into(),
                text: "psst there".into(),
                cid: None
            })
        );
        assert_eq!(parse_plain("/who"), Ok(Request::Who));
        assert_eq!(parse_plain("/rooms"), Ok(Request::Rooms));
        assert_eq!(parse_plain("/help"), Ok(Request::Help));
    }

    #[test]
    fn bad_commands_name_help() {
        let err = parse_plain("/dance").unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownCommand);
        assert_eq!(err.text, "unknown command /dance (try /help)");
        assert_eq!(
            parse_plain("/msg bob").unwrap_err().text,
            "usage: /msg NICK TEXT"
        );
        assert_eq!(parse_plain("/nick").unwrap_err().text, "usage: /nick NAME");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_nick("alice_-9").is_ok());
        assert!(validate_nick("").is_err());
        assert!(validate_nick("a b").is_err());
        assert!(validate_nick(&"x".repeat(25)).is_err());
        assert!(validate_nick(&"x".repeat(24)).is_ok());
        assert_eq!(normalize_room("Rust-2").as_deref(), Ok("rust-2"));
        assert!(normalize_room("no spaces").is_err());
        assert!(normalize_room(&"r".repeat(33)).is_err());
        // Names the server gives guests cannot be chosen.
        for taken in ["guest-4821", "Guest-1", "GUEST-x"] {
            assert!(validate_nick(taken).is_err(), "{taken}");
        }
        assert!(validate_nick("guest").is_ok());
        assert!(validate_nick("guest_1").is_ok());
    }

    #[test]
    fn cids_over_the_limit_are_bad_requests() {
        let at_limit = "c".repeat(MAX_CID_BYTES);
        let over = "c".repeat(MAX_CID_BYTES + 1);
        let say = |cid: &str| format!(r#"{{"type":"say","text":"hi","cid":"{cid}"}}"#);
        let private =
            |cid: &str| format!(r#"{{"type":"private","to":"a","text":"hi","cid":"{cid}"}}"#);
        assert!(parse_json(&say(&at_limit)).is_ok());
        assert!(parse_json(&private(&at_limit)).is_ok());
        for frame in [say(&over), private(&over)] {
            let refused = parse_json(&frame).expect_err("over the limit");
            assert_eq!(refused.code, ErrorCode::BadRequest);
            assert_eq!(
                refused.text,
                "cid is 65 bytes, over the limit of 64: nothing was sent"
            );
        }
    }

    #[test]
    fn json_requests_parse() {
        assert_eq!(
            parse_json(r#"{"type":"say","text":"hi","cid":"c1","extra":1}"#),
            Ok(Request::Say {
                text: "hi".into(),
                cid: Some("c1".into())
            })
        );
        assert_eq!(
            parse_json(r#"{"type":"join","room":"rust","after":123}"#),
            Ok(Request::Join {
                room: "rust".into(),
                after: Some(123),
                epoch: None
            })
        );
        assert_eq!(parse_json(r#"{"type":"who"}"#), Ok(Request::Who));
        let older = |before, limit| Ok(Request::Older { before, limit });
        assert_eq!(
            parse_json(r#"{"type":"older","before":9}"#),
            older(9, OLDER_PAGE)
        );
        assert_eq!(
            parse_json(r#"{"type":"older","before":9,"limit":0}"#),
            older(9, 1)
        );
        assert_eq!(
            parse_json(r#"{"type":"older","before":9,"limit":100000}"#),
            older(9, LIST_CAP)
        );
        assert_eq!(
            parse_json(r#"{"type":"older"}"#).unwrap_err().code,
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_json(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(parse_json("{nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            parse_json(r#"{"type":"say"}"#).unwrap_err().code,
            ErrorCode::BadJson
        );
    }

    #[test]
    fn frames_render_both_ways() {
        let frame = ServerFrame::Message {
            id: 42,
            room: "lobby".into(),
            from: "alice".into(),
            text: "hi".into(),
            ts: 7,
            cid: None,
            history: false,
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"message","id":42,"room":"lobby","from":"alice","text":"hi","ts":7}"#
        );
        assert_eq!(frame.to_plain(), "alice: hi");
        let err = ServerFrame::error(
            Rejection::new(ErrorCode::NickTaken, "nickname alice is already in use"),
            None,
        );
        assert_eq!(
            err.to_json(),
            r#"{"type":"error","code":"nick_taken","text":"nickname alice is already in use"}"#
        );
        assert_eq!(err.to_plain(), "! nickname alice is already in use");
    }

    #[test]
    fn gaps_render_what_is_known() {
        let gap = |after, first| ServerFrame::Gap {
            room: "lobby".into(),
            epoch: 9,
            after,
            first,
        };
        assert_eq!(
            gap(Some(3), Some(124)).to_plain(),
            "! 120 earlier messages are no longer stored"
        );
        assert_eq!(
            gap(Some(3), Some(5)).to_plain(),
            "! 1 earlier message is no longer stored"
        );
        assert_eq!(
            gap(None, None).to_plain(),
            "! some earlier messages were not kept"
        );
        assert_eq!(
            gap(None, None).to_json(),
            r#"{"type":"gap","room":"lobby","epoch":9}"#
        );
    }
}
