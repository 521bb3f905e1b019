//! The web client: a chat page, its script and its style sheet, built into
//! the binary (no files to install, nothing fetched at run time), and the
//! HTTP answers that serve them.

use std::sync::LazyLock;

use super::handshake;

/// One file of the web client.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// The path it is served at.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// Its entity tag, a hash of the body, quoted.
    pub etag: String,
}

/// The page, then what it loads.
static ASSETS: LazyLock<[Asset; 3]> = LazyLock::new(|| {
    [
        asset(
            "/",
            "text/html; charset=utf-8",
            include_bytes!("../../web/index.html"),
        ),
        asset(
            "/app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../web/app.js"),
        ),
        asset(
            "/app.css",
            "text/css; charset=utf-8",
            include_bytes!("../../web/app.css"),
        ),
    ]
});

fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        path,
        content_type,
        body,
        etag: format!("\"{:016x}\"", fnv1a(body)),
    }
}

/// FNV-1a: enough to tell one build's file from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The asset served at `path`, if any (`/index.html` is `/`).
pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// Headers every static answer carries: the page may load only its own
/// files, talk only to its own server's WebSocket, and not be framed.
pub const SECURITY_HEADERS: &str = "Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n\
X-Content-Type-Options: nosniff\r\n\
Referrer-Policy: no-referrer\r\n";

/// The response head for `asset`: 304 when the client's `If-None-Match`
/// already names it, else 200 (the body follows unless `head_only`).
pub fn response_head(asset: &Asset, if_none_match: Option<&str>) -> (Vec<u8>, bool) {
    let fresh = if_none_match.is_some_and(|tags| {
        tags.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == asset.etag || t == "*")
    });
    let (status, phrase, length) = if fresh {
        (304, "Not Modified", 0)
    } else {
        (200, "OK", asset.body.len())
    };
    let headers = format!(
        "{SECURITY_HEADERS}ETag: {}\r\nCache-Control: no-cache\r\n",
        asset.etag
    );
    let head = handshake::response_head(status, phrase, &headers, asset.content_type, length);
    (head.into_bytes(), !fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_found() {
        assert_eq!(
            find("/").map(|a| a.content_type),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(find("/index.html"), find("/"));
        assert!(find("/app.js").is_some());
        assert!(find("/app.css").is_some());
        assert_eq!(find("/secret"), None);
    }

    #[test]
    fn a_known_etag_is_answered_304_without_a_body() {
        let page = find("/").expect("page");
        let (head, body) = response_head(page, Some(&format!("W/{}", page.etag)));
        assert!(head.starts_with(b"HTTP/1.1 304 "));
        assert!(!body);
        let (head, body) = response_head(page, Some("\"other\""));
        assert!(head.starts_with(b"HTTP/1.1 200 "));
        assert!(body);
    }
}
