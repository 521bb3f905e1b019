//! The web client in a real headless Chromium (Debian's `chromium`, driven
//! through `chromedriver`), against a real server, with raw WebSocket
//! clients on the other side.
//!
//! Without `chromedriver` these tests say so and pass, except under
//! `CI=true`, where a missing browser is a failure (`.ci/run` installs it).

mod common;

use std::time::Duration;

use common::{Peer, TestServer, WAIT, free_port, start_helper, within};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use wschat::protocol::ServerFrame;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium session, with its chromedriver and profile.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// One browser at a time: several Chromiums on two cores would make
    /// every bounded wait a race.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts a browser, or `None` (after saying why) when there is none and
/// this is not CI.
async fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "SKIPPED: browser tests need {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let turn = ONE_AT_A_TIME.lock().await;
    let port = free_port();
    let driver = start_helper(
        Command::new(CHROMEDRIVER).arg(format!("--port={port}")),
        "chromedriver",
        "started successfully",
    )
    .await;

    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let client = within(
        "a browser session",
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .expect("browser session");
    Some(Browser {
        client,
        driver,
        _profile: profile,
        _turn: turn,
    })
}

/// chromedriver's own command for what the page wrote to its console.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// A DevTools command through chromedriver (for media emulation).
#[derive(Debug)]
struct DevTools(&'static str, Value);

impl WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"cmd": self.0, "params": self.1}).to_string()),
        )
    }
}

impl Browser {
    async fn open(&self, url: &str) {
        within("the page to load", self.client.goto(url))
            .await
            .expect("goto");
    }

    /// Console messages at level SEVERE (errors) since the last call.
    async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn find(&self, css: &str) -> Element {
        within(
            css,
            self.client
                .wait()
                .at_most(WAIT)
                .for_element(Locator::Css(css)),
        )
        .await
        .unwrap_or_else(|err| panic!("no {css}: {err}"))
    }

    /// Runs `script` in the page; returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    /// Waits until `script` (an expression) is true in the page.
    async fn until(&self, what: &str, script: &str) {
        let check = format!("return Boolean({script});");
        within(what, async {
            loop {
                if self.eval(&check).await == Value::Bool(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// The transcript's lines, as the user reads them.
    async fn log_lines(&self) -> Vec<String> {
        let value = self
            .eval(
                "return [...document.querySelectorAll('[role=log] .line')]\
                 .map(l => [...l.querySelectorAll('.from, .text, .tag')].map(s => s.textContent).join(' '));",
            )
            .await;
        serde_json::from_value(value).expect("lines")
    }

    /// Waits until the transcript has a line equal to `line`.
    async fn expect_line(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let lines = self.log_lines().await;
            if lines.iter().any(|l| l == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the line {line:?}; the transcript:\n{}",
                lines.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the message box and presses Enter.
    async fn type_message(&self, text: &str) {
        let input = self.find("textarea[aria-label=Message]").await;
        input
            .send_keys(&format!("{text}\u{E007}"))
            .await
            .expect("type");
    }

    /// Waits until the status says the page is connected.
    async fn online(&self, what: &str) {
        self.until(
            what,
            "document.querySelector('[role=status]').dataset.state === 'online'",
        )
        .await;
    }

    async fn status(&self) -> String {
        self.eval("return document.querySelector('[role=status]').textContent;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn set_nick(&self, nick: &str) {
        let input = self.find("#nick").await;
        input.clear().await.expect("clear");
        input
            .send_keys(&format!("{nick}\u{E007}"))
            .await
            .expect("type nick");
        self.until(
            "the nick to be taken",
            &format!(
                "document.querySelector('#members .me')?.textContent === {}",
                json!(nick)
            ),
        )
        .await;
    }

    async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

fn page(server: &TestServer) -> String {
    format!("http://{}/", server.addr)
}

/// A raw JSON client named `nick`, in `room`.
async fn raw_peer(url: &str, nick: &str) -> Peer {
    let (mut peer, _) = Peer::json_joined(url).await;
    peer.send(&json!({"type": "nick", "nick": nick}).to_string())
        .await;
    within("the rename", async {
        while !matches!(peer.frame().await, ServerFrame::Renamed { .. }) {}
    })
    .await;
    peer
}

/// Reads frames until a chat message arrives; returns (from, text).
async fn next_message(peer: &mut Peer) -> (String, String) {
    within("a message", async {
        loop {
            if let ServerFrame::Message { from, text, .. } = peer.frame().await {
                return (from, text);
            }
        }
    })
    .await
}

#[tokio::test]
async fn chat_in_the_page_with_a_raw_client() {
    let Some(browser) = browser().await else {
        return;
    };
    let server = TestServer::start().await;
    let mut raw = raw_peer(&server.url(), "rawbob").await;

    browser.open(&page(&server)).await;
    browser.online("the page to connect").await;
    assert_eq!(browser.status().await, "Connected");
    assert_eq!(
        browser.eval("return document.title;").await,
        "#lobby · wschat"
    );
    browser.set_nick("alice").await;

    // Page -> raw client.
    browser.type_message("hello from the page").await;
    assert_eq!(
        next_message(&mut raw).await,
        ("alice".into(), "hello from the page".into())
    );
    browser.expect_line("alice hello from the page").await;

    // Raw client -> page; markup is shown as text, never run.
    raw.send(
        &json!({"type": "say", "text": "<b>bold</b><img src=x onerror=alert(1)>"}).to_string(),
    )
    .await;
    browser
        .expect_line("rawbob <b>bold</b><img src=x onerror=alert(1)>")
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('[role=log] b, [role=log] img').length;")
            .await,
        0
    );

    // Members lists both; the own nick is marked.
    browser
        .until(
            "both members",
            "[...document.querySelectorAll('ul[aria-label=Members] li')].map(l => l.textContent).join(',') === 'alice,rawbob'",
        )
        .await;

    // A mention of the own nick is highlighted.
    raw.send(&json!({"type": "say", "text": "alice: look"}).to_string())
        .await;
    browser.expect_line("rawbob alice: look").await;
    assert_eq!(
        browser
            .eval("return document.querySelector('[role=log] .line.mention .text').textContent;")
            .await,
        "alice: look"
    );

    // While the tab is in the background, mentions are counted in its
    // title; coming back clears the count.
    browser
        .eval("Object.defineProperty(document, 'hidden', {value: true, configurable: true}); return null;")
        .await;
    raw.send(&json!({"type": "say", "text": "alice, are you there?"}).to_string())
        .await;
    raw.send(&json!({"type": "say", "text": "not a mention"}).to_string())
        .await;
    browser.expect_line("rawbob not a mention").await;
    assert_eq!(
        browser.eval("return document.title;").await,
        "(1) #lobby · wschat"
    );
    browser
        .eval("delete document.hidden; document.dispatchEvent(new Event('visibilitychange')); return null;")
        .await;
    assert_eq!(
        browser.eval("return document.title;").await,
        "#lobby · wschat"
    );

    // A private message both ways.
    browser.type_message("/msg rawbob psst").await;
    let private = within("the private message", async {
        loop {
            if let ServerFrame::Private { from, text, .. } = raw.frame().await {
                return (from, text);
            }
        }
    })
    .await;
    assert_eq!(private, ("alice".into(), "psst".into()));
    raw.send(&json!({"type": "private", "to": "alice", "text": "back"}).to_string())
        .await;
    browser.expect_line("private rawbob back").await;

    // Up recalls the last line typed.
    let input = browser.find("textarea[aria-label=Message]").await;
    input.send_keys("\u{E013}").await.expect("arrow up");
    assert_eq!(
        browser
            .eval("return document.querySelector('textarea').value;")
            .await,
        "/msg rawbob psst"
    );
    input.clear().await.expect("clear");

    // Tab completes a member's nick.
    input.send_keys("raw\u{E004}").await.expect("tab");
    assert_eq!(
        browser
            .eval("return document.querySelector('textarea').value;")
            .await,
        "rawbob: "
    );
    input.clear().await.expect("clear");

    // Web addresses become links (built as elements); nothing else does.
    raw.send(
        &json!({"type": "say", "text": "docs: https://example.com/a?b=1, not javascript:alert(1)"})
            .to_string(),
    )
    .await;
    browser
        .expect_line("rawbob docs: https://example.com/a?b=1, not javascript:alert(1)")
        .await;
    assert_eq!(
        browser
            .eval("return [...document.querySelectorAll('[role=log] a')].map(a => a.href + ' ' + a.rel).join('|');")
            .await,
        "https://example.com/a?b=1 noopener noreferrer"
    );

    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn rooms_list_join_and_unread_counts() {
    let Some(browser) = browser().await else {
        return;
    };
    let server = TestServer::start().await;
    let mut raw = raw_peer(&server.url(), "carol").await;
    browser.open(&page(&server)).await;
    browser.set_nick("dave").await;

    // /join moves the page; the Rooms list shows both rooms.
    browser.type_message("/join rust").await;
    browser
        .until(
            "the room title",
            "document.querySelector('#room-title').textContent === '#rust'",
        )
        .await;
    browser
        .until(
            "both rooms listed",
            "[...document.querySelectorAll('ul[aria-label=Rooms] .name')].map(n => n.textContent).join(',') === '#lobby,#rust'",
        )
        .await;
    assert_eq!(
        browser.eval("return document.querySelector('ul[aria-label=Rooms] [aria-current=true] .name').textContent;").await,
        "#rust"
    );
    // The raw client sees the page leave.
    within("the page to leave lobby", async {
        loop {
            if let ServerFrame::Left { nick, .. } = raw.frame().await {
                assert_eq!(nick, "dave");
                return;
            }
        }
    })
    .await;

    // Messages in lobby while the page is in rust: an unread count on
    // lobby once the page refreshes its room list.
    for n in 1..=3 {
        raw.send(&json!({"type": "say", "text": format!("lobby {n}")}).to_string())
            .await;
    }
    for _ in 1..=3 {
        next_message(&mut raw).await;
    }
    browser.type_message("/rooms").await;
    browser
        .until(
            "3 unread in lobby",
            "document.querySelector('ul[aria-label=Rooms] button[data-room=lobby] .unread')?.textContent === '3'",
        )
        .await;

    // Clicking lobby shows what was missed.
    browser
        .find("ul[aria-label=Rooms] button[data-room=lobby]")
        .await
        .click()
        .await
        .expect("click lobby");
    for n in 1..=3 {
        browser.expect_line(&format!("carol lobby {n}")).await;
    }
    assert!(
        browser
            .eval("return document.querySelector('ul[aria-label=Rooms] button[data-room=lobby] .unread');")
            .await
            .is_null()
    );

    // rust is empty now; the page may forget it (lobby, where it is, not).
    let forget = browser
        .find("ul[aria-label=Rooms] button[aria-label='Forget #rust']")
        .await;
    assert!(
        browser
            .eval("return document.querySelector(\"button[aria-label='Forget #lobby']\");")
            .await
            .is_null()
    );
    forget.click().await.expect("forget");
    browser
        .until(
            "rust to be gone",
            "[...document.querySelectorAll('ul[aria-label=Rooms] .name')].map(n => n.textContent).join(',') === '#lobby'",
        )
        .await;
    assert_eq!(
        browser
            .eval("return localStorage.getItem('wschat.rooms');")
            .await,
        "[\"lobby\"]"
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_page_reconnects_after_a_restart_and_shows_what_it_missed_once() {
    let Some(browser) = browser().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let with_db = |c: &mut wschat::config::ServerConfig| c.db = Some(db.clone());
    let server = TestServer::with(with_db).await;
    let port = server.addr.port();
    let mut raw = raw_peer(&server.url(), "erin").await;
    browser.open(&page(&server)).await;
    browser.set_nick("frank").await;
    raw.send(&json!({"type": "say", "text": "before"}).to_string())
        .await;
    browser.expect_line("erin before").await;

    server.stop().await;
    browser
        .until(
            "the status to say reconnecting",
            "document.querySelector('[role=status]').dataset.state === 'reconnecting'",
        )
        .await;
    assert!(
        browser.status().await.starts_with("Reconnecting"),
        "{}",
        browser.status().await
    );

    // Back on the same port; the raw client sends before the page is back.
    let server = TestServer::on_port(port, with_db).await;
    let mut raw = raw_peer(&server.url(), "erin").await;
    for n in 1..=3 {
        raw.send(
            &json!({"type": "say", "text": format!("missed {n}"), "cid": n.to_string()})
                .to_string(),
        )
        .await;
    }
    for _ in 1..=3 {
        next_message(&mut raw).await;
    }
    browser.online("the page to be back").await;
    for n in 1..=3 {
        browser.expect_line(&format!("erin missed {n}")).await;
    }
    // And a live one after, then every line exactly once, in order.
    raw.send(&json!({"type": "say", "text": "after"}).to_string())
        .await;
    browser.expect_line("erin after").await;
    let lines: Vec<String> = browser
        .log_lines()
        .await
        .into_iter()
        .filter(|l| l.starts_with("erin "))
        .collect();
    assert_eq!(
        lines,
        [
            "erin before",
            "erin missed 1",
            "erin missed 2",
            "erin missed 3",
            "erin after"
        ]
    );
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_with_a_token_asks_for_it_or_takes_it_from_the_address() {
    let Some(browser) = browser().await else {
        return;
    };
    let server = TestServer::with(|c| c.token = Some("open sesame".into())).await;

    // Without a token: the page asks for one; a wrong one is refused.
    browser.open(&page(&server)).await;
    let field = browser.find("dialog[open] #token").await;
    field.send_keys("wrong\u{E007}").await.expect("type token");
    browser
        .until(
            "the refusal",
            "!document.querySelector('#token-error').hidden",
        )
        .await;
    let field = browser.find("dialog[open] #token").await;
    field.clear().await.expect("clear");
    field
        .send_keys("open sesame\u{E007}")
        .await
        .expect("type token");
    browser.online("the page to connect").await;

    // With ?token= in the page's own address it connects at once.
    browser.eval("sessionStorage.clear(); return null;").await;
    let browser2 = browser;
    browser2
        .open(&format!("{}?token=open%20sesame", page(&server)))
        .await;
    browser2.online("the page to connect").await;
    assert!(
        browser2
            .eval("return document.querySelector('dialog[open]');")
            .await
            .is_null()
    );
    browser2.close().await;
    server.stop().await;
}

#[tokio::test]
async fn scroll_back_shows_earlier_messages_in_order() {
    let Some(browser) = browser().await else {
        return;
    };
    let server = TestServer::with(|c| c.rate = 0).await;
    let mut raw = raw_peer(&server.url(), "gus").await;
    for n in 1..=30 {
        raw.send(
            &json!({"type": "say", "text": format!("m{n}"), "cid": n.to_string()}).to_string(),
        )
        .await;
    }
    for _ in 1..=30 {
        next_message(&mut raw).await;
    }
    // A fresh page gets the room's last 20 (--history-on-join).
    browser.open(&page(&server)).await;
    browser.expect_line("gus m30").await;
    let shown = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| l.starts_with("gus m"))
            .collect()
    };
    let expected =
        |from: u32| -> Vec<String> { (from..=30).map(|n| format!("gus m{n}")).collect() };
    assert_eq!(shown(browser.log_lines().await), expected(11));

    browser.find("#earlier").await.click().await.expect("click");
    browser.expect_line("gus m1").await;
    assert_eq!(shown(browser.log_lines().await), expected(1));
    browser
        .until(
            "the button to go",
            "document.querySelector('#earlier').hidden",
        )
        .await;
    browser.close().await;
    server.stop().await;
}

/// Sets the viewport and the colour scheme the page sees.
async fn emulate(browser: &Browser, width: u32, height: u32, dark: bool) {
    let metrics = json!({
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600
    });
    browser
        .client
        .issue_cmd(DevTools("Emulation.setDeviceMetricsOverride", metrics))
        .await
        .expect("viewport");
    let scheme = json!({
        "features": [{"name": "prefers-color-scheme", "value": if dark { "dark" } else { "light" }}]
    });
    browser
        .client
        .issue_cmd(DevTools("Emulation.setEmulatedMedia", scheme))
        .await
        .expect("colour scheme");
}

/// A small conversation, shown at desktop and phone width, light and dark.
/// The page must fit the phone's width and follow the colour scheme; the
/// screenshots go to `$WSCHAT_SCREENSHOTS` when it is set
/// (`scripts/web-screenshots.sh` writes them into Gambar/).
#[tokio::test]
async fn the_page_fits_a_phone_and_follows_the_colour_scheme() {
    let Some(browser) = browser().await else {
        return;
    };
    let server = TestServer::with(|c| c.rate = 0).await;
    let url = server.url();
    let mut ana = raw_peer(&url, "ana").await;
    let mut ben = raw_peer(&url, "ben").await;
    let mut lee = raw_peer(&url, "lee").await;
    lee.send(r#"{"type":"join","room":"rust"}"#).await;
    ana.send(&json!({"type": "say", "text": "morning all! the build is green again"}).to_string())
        .await;
    ben.send(&json!({"type": "say", "text": "nice. did the release notes go out?"}).to_string())
        .await;
    next_message(&mut ben).await;
    next_message(&mut ben).await;

    browser.open(&page(&server)).await;
    browser.set_nick("maya").await;
    browser.type_message("not yet, writing them now").await;
    browser.expect_line("maya not yet, writing them now").await;
    ana.send(
        &json!({"type": "say", "text": "maya: ping me when they are up, I'll proofread"})
            .to_string(),
    )
    .await;
    ben.send(&json!({"type": "private", "to": "maya", "text": "lunch at 1?"}).to_string())
        .await;
    browser.expect_line("private ben lunch at 1?").await;
    browser.type_message("/rooms").await;
    browser
        .until(
            "rust listed",
            "document.querySelector('ul[aria-label=Rooms] button[data-room=rust]') !== null",
        )
        .await;

    let out = std::env::var_os("WSCHAT_SCREENSHOTS").map(std::path::PathBuf::from);
    for (name, width, height) in [("desktop", 1280, 720), ("phone", 390, 760)] {
        for dark in [false, true] {
            emulate(&browser, width, height, dark).await;
            let fits = browser
                .eval("return document.documentElement.scrollWidth <= window.innerWidth;")
                .await;
            assert_eq!(fits, Value::Bool(true), "{name}: wider than the screen");
            let background = browser
                .eval("return getComputedStyle(document.body).backgroundColor;")
                .await;
            let expected = if dark {
                "rgb(22, 24, 28)"
            } else {
                "rgb(255, 255, 255)"
            };
            assert_eq!(background, expected, "{name}, dark: {dark}");
            let png = browser.client.screenshot().await.expect("screenshot");
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            if let Some(dir) = &out {
                let scheme = if dark { "dark" } else { "light" };
                std::fs::write(dir.join(format!("web-{name}-{scheme}.png")), png)
                    .expect("write screenshot");
            }
        }
    }
    // At phone width the member list is one tap away.
    browser
        .find("#show-members")
        .await
        .click()
        .await
        .expect("tap");
    browser
        .until(
            "the member list to open",
            "getComputedStyle(document.querySelector('#members-pane')).display !== 'none'",
        )
        .await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_page_chats_with_someone_on_another_server_of_the_chat() {
    let Some(browser) = browser().await else {
        return;
    };
    let Some(redis) = common::redis::RedisServer::start().await else {
        return;
    };
    let on_redis = |c: &mut wschat::config::ServerConfig| c.redis = Some(redis.url());
    let one = TestServer::with(on_redis).await;
    let two = TestServer::with(on_redis).await;
    let mut raw = raw_peer(&two.url(), "rawbob").await;

    browser.open(&page(&one)).await;
    browser.online("the page to connect").await;
    browser.set_nick("alice").await;
    browser
        .until(
            "both members, one on each server",
            "[...document.querySelectorAll('ul[aria-label=Members] li')].map(l => l.textContent).join(',') === 'alice,rawbob'",
        )
        .await;

    browser.type_message("hello across servers").await;
    assert_eq!(
        next_message(&mut raw).await,
        ("alice".into(), "hello across servers".into())
    );
    raw.send(&json!({"type": "say", "text": "hi from the other one"}).to_string())
        .await;
    browser.expect_line("rawbob hi from the other one").await;
    browser.close().await;
    one.stop().await;
    two.stop().await;
}
