//! The webhook router: an HTTP POST that asks someone else's system to move the traffic.
//!
//! Body (JSON, fields in this order):
//! `{"plan":"shop","app":"shop","operation":"20261121T080000Z-1a2b","sequence":7,"to":"standby","reason":"failover","time":"2026-11-21T08:00:00Z"}`.
//! Headers: `Content-Type: application/json`, `X-Lifeboat-Timestamp: UNIX-SECONDS` (the same instant
//! as `time`), `X-Lifeboat-Signature: sha256=HEX`, the HMAC-SHA256 of the exact body bytes with the
//! secret file's bytes (trailing newlines trimmed) as the key. The operation id and the sequence
//! are inside the signed body, so they cannot be changed without the secret.
//!
//! A receiver ([`check_delivery`] is the reference) recomputes the signature over the raw body,
//! compares in constant time, rejects stale `time`s, and acts only on a `sequence` above the last
//! one it acted on for that plan and app: a captured request replayed later (even within the time
//! window, after a failback) or an old request delivered late is refused, and a repeat of the same
//! operation's request is recognised by its `operation` id.
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
    /// The operation id (one failover, failback, ...).
    pub operation: String,
    /// Grows with every switch request of this app; see [`SwitchContext::sequence`].
    pub sequence: u64,
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
        operation: context.operation.clone(),
        sequence: context.sequence,
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

/// Why [`check_delivery`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryRefused {
    /// The signature header is missing, malformed or does not match the body.
    #[error("the signature does not match the body")]
    BadSignature,
    /// The body is not a Lifeboat webhook body.
    #[error("the body is not a Lifeboat webhook body: {0}")]
    BadBody(String),
    /// `time` is further than the allowed window from the receiver's clock.
    #[error("the request's time {time} is more than {window_secs} s from now")]
    Stale { time: String, window_secs: u64 },
    /// The sequence is not above the last one acted on: a replay or a late delivery.
    #[error("sequence {sequence} is not above {last}, the last one acted on: a replay or a late delivery")]
    Replayed { sequence: u64, last: u64 },
}

/// The reference receiver's checks, in order: the signature (constant time), the body, the time
/// (within `window` of `now`), then the sequence against `last_sequence`, the highest sequence
/// the receiver acted on for this plan and app (`None`: none yet). On success the receiver acts
/// and then stores the body's `sequence` as the new last one.
pub fn check_delivery(
    secret: &[u8],
    signature_header: &str,
    body: &[u8],
    now: time::OffsetDateTime,
    window: Duration,
    last_sequence: Option<u64>,
) -> Result<WebhookBody, DeliveryRefused> {
    let given = signature_header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(DeliveryRefused::BadSignature)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &given).map_err(|_| DeliveryRefused::BadSignature)?;
    let parsed: WebhookBody = serde_json::from_slice(body).map_err(|e| DeliveryRefused::BadBody(e.to_string()))?;
    let at = time::OffsetDateTime::parse(&parsed.time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| DeliveryRefused::BadBody(format!("time: {e}")))?;
    if (now - at).unsigned_abs() > window {
        return Err(DeliveryRefused::Stale {
            time: parsed.time,
            window_secs: window.as_secs(),
        });
    }
    if let Some(last) = last_sequence {
        if parsed.sequence <= last {
            return Err(DeliveryRefused::Replayed {
                sequence: parsed.sequence,
                last,
            });
        }
    }
    Ok(parsed)
}

pub(crate) struct WebhookRouter {
    url: String,
    shown: String,
    secret: Vec<u8>,
    agent: ureq::Agent,
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
        let shown = lifeboat_model::redact::shown_parsed_url(&parsed);
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
        if let Some(warning) = lifeboat_model::redact::loose_permissions(secret_file) {
            tracing::warn!("webhook secret file {warning}");
        }
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
    /// `hmac.new(b"lab-secret", b'{"plan":"p","app":"a","operation":"20260102T030405Z-ab12","sequence":7,"to":"standby","reason":"drill","time":"2026-01-02T03:04:05Z"}', "sha256").hexdigest()`
    #[test]
    fn signature_vectors() {
        assert_eq!(
            webhook_signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = webhook_body(&ctx(7), Side::Standby, "2026-01-02T03:04:05Z");
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"plan":"p","app":"a","operation":"20260102T030405Z-ab12","sequence":7,"to":"standby","reason":"drill","time":"2026-01-02T03:04:05Z"}"#
        );
        assert_eq!(webhook_signature(b"lab-secret", &body), PY_SIGNATURE);
    }

    const PY_SIGNATURE: &str = "sha256=205e19fb979c48ac12fd0f7f209f76b77bff633eb7006e1c19ccec4e01b7b442";

    fn ctx(sequence: u64) -> SwitchContext {
        SwitchContext {
            plan: "p".into(),
            app: "a".into(),
            reason: "drill".into(),
            operation: "20260102T030405Z-ab12".into(),
            sequence,
        }
    }

    /// The reference receiver: a replayed request (the same bytes and signature, within the time
    /// window) and an older request delivered late are refused; tampering is refused.
    #[test]
    fn the_reference_receiver_refuses_replays_late_deliveries_and_tampering() {
        let t = "2026-01-02T03:04:05Z";
        let now = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
        let window = Duration::from_secs(300);
        let first = webhook_body(&ctx(7), Side::Standby, t);
        let sig = webhook_signature(b"lab-secret", &first);
        let got = check_delivery(b"lab-secret", &sig, &first, now, window, Some(6)).unwrap();
        assert_eq!(
            (got.sequence, got.operation.as_str(), got.to),
            (7, "20260102T030405Z-ab12", Side::Standby)
        );
        // The same request again: refused.
        assert_eq!(
            check_delivery(b"lab-secret", &sig, &first, now, window, Some(7)),
            Err(DeliveryRefused::Replayed { sequence: 7, last: 7 })
        );
        // The failback's request (8) was acted on; the old failover request (7) arrives late.
        assert!(matches!(
            check_delivery(b"lab-secret", &sig, &first, now, window, Some(8)),
            Err(DeliveryRefused::Replayed { .. })
        ));
        // A changed sequence breaks the signature.
        let forged = String::from_utf8(first.clone())
            .unwrap()
            .replace("\"sequence\":7", "\"sequence\":9");
        assert_eq!(
            check_delivery(b"lab-secret", &sig, forged.as_bytes(), now, window, Some(8)),
            Err(DeliveryRefused::BadSignature)
        );
        assert_eq!(
            check_delivery(b"other", &sig, &first, now, window, None),
            Err(DeliveryRefused::BadSignature)
        );
        assert!(matches!(
            check_delivery(
                b"lab-secret",
                &sig,
                &first,
                now + Duration::from_secs(301),
                window,
                None
            ),
            Err(DeliveryRefused::Stale { .. })
        ));
    }

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
