//! Traffic routers: how clients are sent to an app's primary or standby site.
//!
//! A DR plan's `traffic` section (`lifeboat_plan::Traffic`) becomes a [`Router`] with [`router`].
//! Three kinds exist, behind the one trait:
//!
//! - **DNS** (RFC 2136 dynamic update, signed with TSIG, RFC 8945): one update message replaces the
//!   A (or AAAA) record set of a name with the address of the chosen side. The server applies an
//!   update message atomically, so the name never points at both sides.
//! - **HAProxy** runtime API: the old side's server goes into maintenance first, then the new side's
//!   server is made ready, so both never take traffic at once (at the price of a moment in which
//!   neither does).
//! - **Webhook**: an HTTP POST, signed with HMAC-SHA256, tells someone else's system to move the
//!   traffic; that system owns the switch.
//!
//! The API is synchronous (blocking sockets, `ureq`); call it from blocking code (in an async program,
//! from `spawn_blocking`). Every network exchange has a timeout (3 s per try), so no call hangs.
//!
//! What every router guarantees:
//! - [`Router::switch`] is idempotent: switching to where traffic already is succeeds and changes
//!   nothing a client sees (for DNS, the record set is rewritten with the same single record).
//! - A failed switch never leaves traffic split between the sides; the error says where traffic is
//!   ([`TrafficError::traffic_after`]) and whether retrying may help ([`TrafficError::retry_may_help`]).
//! - No secret (TSIG secret, webhook secret) appears in any error, description or `Debug` output.
//!
//! `docs/traffic.md` describes the protocols, what is verified and why hickory-proto was chosen.
#![forbid(unsafe_code)]

mod dns;
mod error;
mod haproxy;
pub mod keyfile;
mod net;
mod webhook;

use std::path::{Path, PathBuf};

pub use error::{TrafficAfter, TrafficError};
pub use keyfile::TsigKey;
pub use webhook::{check_delivery, webhook_body, webhook_signature, DeliveryRefused, WebhookBody};

/// One of the two sides an app's traffic can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The app's primary site (the plan's `primary` address or server).
    Primary,
    /// The app's standby site (the plan's `standby` address or server).
    Standby,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Standby,
            Side::Standby => Side::Primary,
        }
    }

    /// `"primary"` or `"standby"`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Standby => "standby",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where traffic goes now, as a router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// All of it to this side.
    On(Side),
    /// Neither side, both, somewhere else, or the router cannot tell; the text says which, with the
    /// values seen (for example "app.lab.test. points at 10.0.0.9, which is neither primary
    /// (10.77.1.2) nor standby (10.77.2.2)").
    Unknown(String),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::On(side) => write!(f, "on the {side}"),
            Route::Unknown(why) => write!(f, "unknown: {why}"),
        }
    }
}

/// Why a switch happens; webhooks pass it on, the other routers ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SwitchContext {
    /// The DR plan's name.
    pub plan: String,
    /// The app whose traffic moves.
    pub app: String,
    /// `failover`, `failback`, `drill`, ... (free text, passed on as is).
    pub reason: String,
    /// The id of the operation that switches (the journal's operation id); a receiver
    /// deduplicates by it.
    pub operation: String,
    /// A number that grows with every switch request of this app (kept in the app's state in the
    /// repository, never reused, also across crashes and resumes): a receiver refuses a request
    /// whose sequence is not above the last one it acted on, so an old request replayed or
    /// delivered late cannot move traffic back.
    pub sequence: u64,
}

/// Moves an app's traffic between its primary and standby site.
///
/// Implementations are cheap to share between threads; each call opens its own connection.
pub trait Router: Send + Sync {
    /// Human description, e.g. `dns app.lab.test. A at 127.0.0.1:5353`; never contains a secret
    /// (webhook URLs are shown without user info, query and fragment).
    fn describe(&self) -> String;

    /// Where traffic goes now. This is also the reachability check of a preflight: an `Ok` means the
    /// router's server answered. Changes nothing.
    ///
    /// Webhook routers cannot know and return [`Route::Unknown`] without any network traffic.
    fn current(&self) -> Result<Route, TrafficError>;

    /// Sends all traffic to `to`.
    ///
    /// Idempotent: switching to where traffic already is succeeds and changes nothing visible.
    /// A switch that fails leaves traffic entirely on one side (or, when even the repair failed,
    /// on none), never split; [`TrafficError::traffic_after`] says which, and so does the message.
    fn switch(&self, to: Side, context: &SwitchContext) -> Result<(), TrafficError>;
}

/// Builds the router a plan's `traffic` section describes.
///
/// `base_dir` is the plan's directory: a relative `tsig_key` or `secret_file` path is resolved
/// against it. Key and secret files are read here, once, so a bad file fails early (and a preflight
/// finds it); nothing is sent over the network. Addresses, socket URLs and names are checked here
/// too ([`TrafficError::Config`]).
pub fn router(traffic: &lifeboat_plan::Traffic, base_dir: &Path) -> Result<Box<dyn Router>, TrafficError> {
    match traffic {
        lifeboat_plan::Traffic::Dns {
            server,
            zone,
            name,
            ttl,
            tsig_key,
            primary,
            standby,
        } => {
            let key_path = resolve(base_dir, tsig_key);
            let r = dns::DnsRouter::new(dns::DnsConfig {
                server,
                zone,
                name,
                ttl: *ttl,
                key_path: &key_path,
                primary,
                standby,
            })?;
            Ok(Box::new(r))
        }
        lifeboat_plan::Traffic::Haproxy {
            socket,
            backend,
            primary,
            standby,
            state_file,
        } => Ok(Box::new(haproxy::HaproxyRouter::new(
            socket,
            backend,
            primary,
            standby,
            state_file.as_ref().map(|f| resolve(base_dir, f)),
        )?)),
        lifeboat_plan::Traffic::Webhook { url, secret_file } => {
            let path = resolve(base_dir, secret_file);
            Ok(Box::new(webhook::WebhookRouter::new(url, &path)?))
        }
    }
}

fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}
