//! The errors of traffic routers.
use std::path::PathBuf;
use std::time::Duration;

use crate::Side;

/// Where traffic is after a failed [`crate::Router::switch`], as far as the router knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficAfter {
    /// The failed switch changed nothing: traffic is where it was before.
    Unchanged,
    /// Traffic is entirely on this side (a half-done switch was undone, or completed).
    On(Side),
    /// No side takes traffic: a half-done switch could not be undone. Act now.
    Nowhere,
    /// The change was sent but its outcome is not known (no answer in time, or an answer that
    /// cannot be trusted); ask [`crate::Router::current`]. Never split by construction: a DNS update
    /// is atomic, and HAProxy's two servers are never ready at once.
    Unknown,
}

/// Why a router cannot be built, cannot tell where traffic goes, or cannot move it.
///
/// `router` is the router's [`crate::Router::describe`] text and `server` the server's address as the
/// plan gives it. No variant ever holds a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficError {
    /// The plan's traffic settings cannot work: an address that is not an IP address, a socket that
    /// is neither `unix://` nor `tcp://`, a name outside its zone, ... Fix the plan; retrying does not
    /// help.
    #[error("{router}: {reason}")]
    Config { router: String, reason: String },

    /// A key or secret file cannot be read (missing, unreadable, empty). Fix the file; retrying does
    /// not help.
    #[error("{router}: cannot use the {what} {}: {reason}", path.display())]
    SecretFile {
        router: String,
        /// `TSIG key file` or `webhook secret file`.
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// The TSIG key file is not in BIND's `key "NAME" { algorithm ALG; secret "BASE64"; };` format.
    /// `line` is where the parser stopped (1-based; 0 when the whole file is concerned). The reason
    /// never quotes the file's text, so no part of the secret can leak.
    #[error("{}:{line}: not a usable TSIG key file: {reason}", path.display())]
    KeyFile { path: PathBuf, line: usize, reason: String },

    /// The key file names an algorithm this router cannot sign with (it signs with hmac-sha256,
    /// hmac-sha384 and hmac-sha512). Make another key (`tsig-keygen -a hmac-sha256 NAME`).
    #[error(
        "{}: TSIG algorithm {algorithm} is not supported (use hmac-sha256, hmac-sha384 or hmac-sha512, \
         e.g. a key made with `tsig-keygen -a hmac-sha256 NAME`)",
        path.display()
    )]
    UnsupportedAlgorithm { path: PathBuf, algorithm: String },

    /// The server cannot be reached at all: connection refused (nothing listens there), no route,
    /// a host name that does not resolve. Nothing was changed. Retrying may help once the server is
    /// reachable.
    #[error("{router}: cannot reach {server}: {reason} (nothing was changed)")]
    Unreachable {
        router: String,
        server: String,
        reason: String,
    },

    /// The server did not answer in time. When `change_sent`, the change may or may not have been
    /// applied: [`crate::Router::current`] tells. Retrying may help (switches are idempotent).
    #[error(
        "{router}: no answer from {server} within {} s ({tries} {}){}",
        waited.as_secs_f32(),
        if *tries == 1 { "try" } else { "tries" },
        if *change_sent { "; the change may or may not have been applied" } else { "" }
    )]
    Timeout {
        router: String,
        server: String,
        /// How long each try waited.
        waited: Duration,
        tries: u32,
        change_sent: bool,
    },

    /// The DNS server rejected the update's TSIG signature: `BADSIG` (the key file's secret is not
    /// the server's), `BADKEY` (the server knows no key of that name and algorithm) or `BADTIME`
    /// (this machine's clock and the server's differ by more than 300 s). The record is unchanged.
    /// Retrying does not help: fix the key file (or the clock).
    #[error(
        "{router}: {server} rejected the TSIG signature made with key {key}: {code} ({}); the record is unchanged",
        tsig_hint(code)
    )]
    TsigRejected {
        router: String,
        server: String,
        /// The key's name (not its secret).
        key: String,
        /// `BADSIG`, `BADKEY`, `BADTIME`, or another TSIG error code.
        code: String,
    },

    /// The DNS server answered with an error code (`REFUSED`: the key may not update this name or the
    /// server does not allow updates; `NOTZONE`/`NOTAUTH`: the server is not authoritative for the
    /// zone; `SERVFAIL`: the server failed). For an update, the record is unchanged (the server applies
    /// all of an update or none of it). Retrying may help only for `SERVFAIL`.
    #[error("{router}: {server} answered the {operation} with {rcode}{}", if *operation == "update" { "; the record is unchanged" } else { "" })]
    DnsRcode {
        router: String,
        server: String,
        /// `update` or `query`.
        operation: &'static str,
        rcode: String,
    },

    /// The answer to a signed update says "done" but is not signed with the key (no TSIG, a wrong
    /// MAC, or a signing time outside the 300 s fudge): it may be forged, so the update's outcome is
    /// unknown. Retrying does not help until the cause is found.
    #[error("{router}: the answer of {server} to the update is not authentic ({reason}); the record may or may not have changed")]
    Unauthenticated {
        router: String,
        server: String,
        reason: String,
    },

    /// The server's answer makes no sense: not a DNS message, a DNS message of the wrong kind, or
    /// HAProxy output in an unknown format. When `change_sent`, the change's outcome is unknown.
    #[error("{router}: unexpected answer from {server}: {reason}{}", if *change_sent { "; the change may or may not have been applied" } else { "" })]
    BadAnswer {
        router: String,
        server: String,
        reason: String,
        change_sent: bool,
    },

    /// HAProxy refused a runtime API command (its answer, which is not empty, is its error message,
    /// e.g. `No such server.`). A refused command changed nothing. Retrying does not help.
    #[error("{router}: HAProxy answered `{command}` with: {answer}")]
    Haproxy {
        router: String,
        server: String,
        command: String,
        answer: String,
    },

    /// The HAProxy backend has no server of this name (checked before anything is changed). Fix the
    /// plan; retrying does not help.
    #[error(
        "{router}: backend {backend} has no server {name} (the {side}); its servers are: {known}; nothing was changed"
    )]
    NoSuchServer {
        router: String,
        backend: String,
        name: String,
        side: Side,
        known: String,
    },

    /// A switch failed half-way (HAProxy: the old side was put in maintenance, then the new side
    /// could not be made ready). `traffic` says where traffic is now: back on the old side (the
    /// rollback worked), nowhere (the rollback failed too; `rollback` says why), or unknown.
    #[error("{router}: switch to the {to} failed half-way: {cause}; {}", after_text(traffic, rollback.as_deref()))]
    SwitchFailed {
        router: String,
        to: Side,
        traffic: TrafficAfter,
        /// Why the new side could not take traffic (without the router's name).
        cause: String,
        /// Why putting the old side back failed, if it did (without the router's name).
        rollback: Option<String>,
    },

    /// The switch moved traffic to `to`, but what must follow it failed: closing the sessions
    /// still open to the old server (HAProxy's `shutdown sessions`), or saving the server state
    /// for reloads. Traffic is on `to`; retrying the switch (idempotent) does the rest.
    #[error("{router}: traffic moved to the {to}, but {what}: {reason}")]
    AfterSwitch {
        router: String,
        to: Side,
        what: String,
        reason: String,
    },

    /// The webhook answered with a status other than 2xx (redirects are not followed). `body` is the
    /// start of its answer (at most 512 bytes, control characters replaced). Whether traffic moved is
    /// up to the receiver; retrying may help for 5xx and 429.
    #[error("{router}: the webhook answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    WebhookStatus { router: String, status: u16, body: String },
}

fn tsig_hint(code: &str) -> &'static str {
    match code {
        "BADSIG" => "the key file's secret is not the server's secret for this key",
        "BADKEY" => "the server knows no key of this name and algorithm",
        "BADTIME" => "this machine's clock and the server's differ by more than 300 s",
        "BADTRUNC" => "the server refuses the MAC length",
        _ => "the server refuses the signature",
    }
}

fn after_text(traffic: &TrafficAfter, rollback: Option<&str>) -> String {
    match traffic {
        TrafficAfter::Unchanged => "traffic is where it was before".to_string(),
        TrafficAfter::On(side) => format!("traffic is still entirely on the {side}, which was put back into service"),
        TrafficAfter::Nowhere => format!(
            "putting the old side back into service failed too ({}): NO SIDE TAKES TRAFFIC NOW",
            rollback.unwrap_or("unknown reason")
        ),
        TrafficAfter::Unknown => format!(
            "putting the old side back into service got no clear answer ({}): where traffic goes is unknown; \
             look with `current`",
            rollback.unwrap_or("unknown reason")
        ),
    }
}

impl TrafficError {
    /// [`Self::retry_may_help`] as a retry class.
    pub fn retry(&self) -> lifeboat_model::Retry {
        lifeboat_model::Retry::later_if(self.retry_may_help())
    }

    /// Whether trying the same call again later may succeed without changing the plan or its files:
    /// the server was unreachable or slow, it failed (`SERVFAIL`, HTTP 5xx/429), or a half-done
    /// switch was undone.
    pub fn retry_may_help(&self) -> bool {
        match self {
            TrafficError::Unreachable { .. } | TrafficError::Timeout { .. } => true,
            TrafficError::DnsRcode { rcode, .. } => rcode == "SERVFAIL",
            TrafficError::WebhookStatus { status, .. } => *status >= 500 || *status == 429,
            TrafficError::SwitchFailed { traffic, .. } => matches!(traffic, TrafficAfter::On(_)),
            TrafficError::AfterSwitch { .. } => true,
            _ => false,
        }
    }

    /// Where traffic is after this error ended a [`crate::Router::switch`]. (For errors of `router` and
    /// `current`, which change nothing, it is [`TrafficAfter::Unchanged`].)
    pub fn traffic_after(&self) -> TrafficAfter {
        match self {
            TrafficError::Timeout { change_sent: true, .. }
            | TrafficError::BadAnswer { change_sent: true, .. }
            | TrafficError::Unauthenticated { .. } => TrafficAfter::Unknown,
            // The receiver owns the switch; a 5xx may have moved part of it.
            TrafficError::WebhookStatus { status, .. } if *status >= 500 => TrafficAfter::Unknown,
            TrafficError::SwitchFailed { traffic, .. } => *traffic,
            TrafficError::AfterSwitch { to, .. } => TrafficAfter::On(*to),
            _ => TrafficAfter::Unchanged,
        }
    }

    /// This error's message without the leading `ROUTER: ` (used when one error is the cause
    /// inside another of the same router).
    pub(crate) fn without_router(&self, router: &str) -> String {
        let text = self.to_string();
        match text.strip_prefix(router).and_then(|t| t.strip_prefix(": ")) {
            Some(rest) => rest.to_string(),
            None => text,
        }
    }
}
