//! The webhook router: an HTTP POST that asks someone else's system to move the traffic.
//!
//! Body (JSON, fields in this order):
//! `{"plan":"shop","app":"shop","to":"standby","reason":"failover","time":"2026-11-21T08:00:00Z"}`.
//! Headers: `Content-Type: application/json`, `X-Lifeboat-Timestamp: UNIX-SECONDS` (the same instant
//! as `time`), `X-Lifeboat-Signature: sha256=HEX`, the HMAC-SHA256 of the exact body bytes with the
//! secret file's bytes (trailing newlines trimmed) as the key. A receiver should recompute the
//! signature over the raw body, compare in constant time, and reject stale `time`s (replays).
//!
//! Any 2xx answer is success; redirects are not followed; anything else is an error with the
//! status and the start of the body. The receiver must treat the request as idempotent ("send
//! traffic to X"), since a switch may be repeated. No automatic retry: the caller decides.
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::net::TRY_TIMEOUT;
use crate::{Route, Router, Side, SwitchContext, TrafficError};

/// How long the whole request may take (connect: [`TRY_TIMEOUT`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer's body is kept.
const BODY_SHOWN: usize = 512;

/// The JSON body a webhook receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WebhookBody {
    pub plan: String,
    pub app: String,
    pub to: Side,
    pub reason: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// The exact body bytes sent for a switch to `to` at `time` (RFC 3339).
pub fn webhook_body(context: &SwitchContext, to: Side, time: &str) -> Vec<u8> {
    let body = WebhookBody {
        plan: context.plan.clone(),
        app: context.app.clone(),
        to,
        reason: context.reason.clone(),
        time: time.to_string(),
    };
    serde_json::to_vec(&body).expect("a struct of strings serializes")
}

/// The `X-Lifeboat-Signature` value for `body`: `sha256=` and the lower-case hex HMAC-SHA256 of the
/// body keyed with `secret`.
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}

pub(crate) struct WebhookRouter {
    url: String,
    shown: String,
    secret: Vec<u8>,
    agent: ureq::Agent,
}

/// The URL without user info, query and fragment (where tokens hide).
fn shown_url(u: &url::Url) -> String {
    let mut s = u.clone();
    let _ = s.set_username("");
    let _ = s.set_password(None);
    s.set_query(None);
    s.set_fragment(None);
    s.to_string()
}

/// `s` cut to at most `max` bytes (on a character boundary), control characters as spaces.
fn shorten(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string();
    if end < s.len() {
        out.push_str(" ...");
    }
    out
}

impl WebhookRouter {
    pub(crate) fn new(url: &str, secret_file: &Path) -> Result<WebhookRouter, TrafficError> {
        let parsed = url::Url::parse(url).map_err(|e| TrafficError::Config {
            router: "webhook".into(),
            reason: format!("url is not a URL: {e}"),
        })?;
        let shown = shown_url(&parsed);
        let router = format!("webhook {shown}");
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(TrafficError::Config {
                router,
                reason: "url must be http:// or https:// with a host".into(),
            });
        }
        let secret_error = |reason: String| TrafficError::SecretFile {
            router: router.clone(),
            what: "webhook secret file",
            path: secret_file.to_path_buf(),
            reason,
        };
        let mut secret = std::fs::read(secret_file).map_err(|e| secret_error(crate::net::io_reason(&e)))?;
        while matches!(secret.last(), Some(b'\n' | b'\r')) {
            secret.pop();
        }
        if secret.is_empty() {
            return Err(secret_error("the file is empty".into()));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(TRY_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirects(0)
            .build();
        Ok(WebhookRouter {
            url: url.to_string(),
            shown,
            secret,
            agent,
        })
    }

    fn transport_error(&self, t: &ureq::Transport) -> TrafficError {
        use std::error::Error as _;
        let io = t.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        if io.is_some_and(crate::net::is_timeout) {
            return TrafficError::Timeout {
                router: self.describe(),
                server: self.shown.clone(),
                waited: REQUEST_TIMEOUT,
                tries: 1,
                change_sent: true,
            };
        }
        // (ureq's Display of a transport error starts with the URL, which may hold a token.)
        let mut reason = t.kind().to_string();
        if let Some(m) = t.message() {
            reason = format!("{reason}: {m}");
        }
        if let Some(e) = io {
            reason = format!("{reason}: {}", crate::net::io_reason(e));
        }
        TrafficError::Unreachable {
            router: self.describe(),
            server: self.shown.clone(),
            reason,
        }
    }
}

impl Router for WebhookRouter {
    fn describe(&self) -> String {
        format!("webhook {}", self.shown)
    }

    /// A webhook is fire-and-forget: there is no agreed way to ask where traffic goes, and a GET
    /// could have effects on an unknown receiver. No network traffic.
    fn current(&self) -> Result<Route, TrafficError> {
        Ok(Route::Unknown(
            "webhook routers do not report where traffic goes".into(),
        ))
    }

    fn switch(&self, to: Side, context: &SwitchContext) -> Result<(), TrafficError> {
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| now.unix_timestamp().to_string());
        let body = webhook_body(context, to, &stamp);
        let result = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("X-Lifeboat-Timestamp", &now.unix_timestamp().to_string())
            .set("X-Lifeboat-Signature", &webhook_signature(&self.secret, &body))
            .send_bytes(&body);
        let (status, response) = match result {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(&t)),
        };
        if (200..300).contains(&status) {
            return Ok(());
        }
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(
            &mut std::io::Read::take(response.into_reader(), (BODY_SHOWN * 4) as u64),
            &mut text,
        );
        Err(TrafficError::WebhookStatus {
            router: self.describe(),
            status,
            body: shorten(&text, BODY_SHOWN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 ("Jefe"), and a value computed with Python's hmac module:
    /// `hmac.new(b"lab-secret", b'{"plan":"p","app":"a","to":"standby","reason":"drill","time":"2026-01-02T03:04:05Z"}', "sha256").hexdigest()`
    #[test]
    fn signature_vectors() {
        assert_eq!(
            webhook_signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let ctx = SwitchContext {
            plan: "p".into(),
            app: "a".into(),
            reason: "drill".into(),
        };
        let body = webhook_body(&ctx, Side::Standby, "2026-01-02T03:04:05Z");
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"plan":"p","app":"a","to":"standby","reason":"drill","time":"2026-01-02T03:04:05Z"}"#
        );
        assert_eq!(webhook_signature(b"lab-secret", &body), PY_SIGNATURE);
    }

    const PY_SIGNATURE: &str = "sha256=dc0550ef2c2f470c78609a85a492a836f8a1448ac786dc3f1e1050035bfcca66";

    #[test]
    fn urls_are_shown_without_secrets() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("secret");
        std::fs::write(&f, "s3cret\n").unwrap();
        let r = WebhookRouter::new("https://user:pw@hooks.example.test/lifeboat?token=abc#x", &f).unwrap();
        assert_eq!(r.describe(), "webhook https://hooks.example.test/lifeboat");
        assert_eq!(r.secret, b"s3cret");
        assert!(matches!(
            WebhookRouter::new("ftp://hooks.example.test/", &f),
            Err(TrafficError::Config { .. })
        ));
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            WebhookRouter::new("https://hooks.example.test/", &f),
            Err(TrafficError::SecretFile { .. })
        ));
    }

    #[test]
    fn shorten_bodies() {
        assert_eq!(shorten("oops\n", 512), "oops");
        let long = "é".repeat(400);
        let s = shorten(&long, 512);
        assert!(s.len() <= 516 && s.ends_with(" ..."));
    }
}
