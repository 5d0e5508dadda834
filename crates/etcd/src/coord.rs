//! Coordination through etcd for `serve` instances on several machines: a lease kept alive by its
//! holder, one leader elected by a compare-and-swap on one key, a fencing token, and verdicts
//! published under the lease.
//!
//! Everything goes through etcd's JSON gateway (`/v3/kv/txn`, `/v3/lease/grant`, ...), which every
//! etcd 3.4+ serves on its client URL, so no gRPC stack is needed.
//!
//! **Election.** [`Coordinator::campaign`] puts the leader key with the candidate's lease only if
//! the key does not exist (a transaction comparing its create revision with 0). The key goes away
//! when its lease ends (the holder stopped keeping it alive: dead, paused, cut off) or when the
//! holder resigns; the next campaign then wins.
//!
//! **Fencing.** The winner's [`Term`] is the leader key's create revision (with its lease). It
//! grows with every election, so a deposed leader's term is always older than the current one.
//! [`Coordinator::check`] is a linearizable read that says whether a term still holds; it is
//! called before every side effect outside etcd (a journaled step, a traffic switch).
//! [`Coordinator::put_fenced`] writes a key only if the term still holds, compared inside etcd in
//! the same transaction, so a leader that was deposed while it was paused cannot write, however
//! late it wakes up.
//!
//! **Guarantees and limits.** A term holds until its lease ends; a holder that keeps its lease
//! alive less often than its TTL loses it. Between a [`Coordinator::check`] and the side effect
//! that follows there is a window (the time the side effect takes to start): callers keep it short
//! and the journal records the term of each step, so a late step is visible. etcd's own clock
//! decides when a lease ends; the holder's clock is never trusted for that.
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{agent_with, Endpoint, EtcdError};

/// Errors of the coordination client.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A certificate or key file of an endpoint cannot be used. Fix the plan's TLS files.
    #[error("coordination: {0}")]
    Tls(String),
    /// None of the endpoints answered (refused, no route, timed out). Nothing was changed;
    /// retrying may help once a quorum of etcd answers.
    #[error("coordination: no etcd endpoint answers: {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// An endpoint answered with an error (a bad request, no quorum, an unknown lease).
    #[error("coordination: etcd at {endpoint} refused {what}: {reason}")]
    Refused {
        endpoint: String,
        what: &'static str,
        reason: String,
    },
    /// The lease is gone: its TTL ran out (the holder did not keep it alive in time) or it was
    /// revoked. A holder that sees this is no longer leader.
    #[error("coordination: lease {lease:x} has ended")]
    LeaseEnded { lease: i64 },
    /// The term is no longer the leader's: another instance was elected since (or nobody holds
    /// the key). The side effect was not carried out.
    #[error("coordination: term {} is over ({}); this instance is not the leader and did nothing", .term.revision, who_leads(.now))]
    Deposed { term: Term, now: Option<Leader> },
}

/// Who leads now, for a message.
fn who_leads(now: &Option<Leader>) -> String {
    match now {
        Some(l) => format!("{} leads since term {}", l.holder, l.term.revision),
        None => "no leader now".into(),
    }
}

impl CoordError {
    /// Whether trying again may help without a change: etcd that did not answer, or refused in
    /// passing (no quorum yet), may; a TLS file, an ended lease or a lost term need a new start
    /// (a new lease, a new campaign).
    pub fn retry(&self) -> lifeboat_model::Retry {
        use lifeboat_model::Retry;
        match self {
            CoordError::Unreachable { .. } | CoordError::Refused { .. } => Retry::Later,
            CoordError::Tls(_) | CoordError::LeaseEnded { .. } | CoordError::Deposed { .. } => Retry::AfterFix,
        }
    }
}

/// A leader's term: the create revision of the leader key when it won, and the lease it holds
/// the key with. Later terms have larger revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Term {
    pub revision: i64,
    pub lease: i64,
}

/// Who leads, and since which term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The value the winner put: its instance name.
    pub holder: String,
    pub term: Term,
}

/// What a campaign found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This candidate leads, in this term.
    Won(Term),
    /// Another one leads.
    Held(Leader),
}

/// A client of one etcd cluster (several endpoints, tried in order) for the keys under one
/// prefix (`lifeboat/PLAN/`).
pub struct Coordinator {
    endpoints: Vec<(String, ureq::Agent)>,
    prefix: String,
    /// The endpoint that answered last: tried first, so a member that is down or cut off costs
    /// its timeout once, not on every call (a lease's keep-alives must stay well inside its TTL).
    preferred: AtomicUsize,
}

/// The longest one request may take (etcd answers in milliseconds; a member without quorum
/// answers after its own timeout, or not at all: then the next member is tried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest a connection to one member may take to open (lab and LAN round trips are
/// milliseconds; a member that is down or cut off is given up on quickly).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// An int64 of the gateway's JSON (a string, or a number).
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One key-value of a range answer.
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    create_revision: i64,
    lease: i64,
}

fn kvs(range: &Value) -> Vec<Kv> {
    let decode = |v: Option<&Value>| {
        B64.decode(v.and_then(Value::as_str).unwrap_or_default())
            .unwrap_or_default()
    };
    range
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|kv| Kv {
            key: decode(kv.get("key")),
            value: decode(kv.get("value")),
            create_revision: int(kv.get("create_revision")),
            lease: int(kv.get("lease")),
        })
        .collect()
}

/// Why a request got no answer, in a few words: the innermost cause (`Connection refused (os
/// error 111)`, `timed out`), else the kind of failure.
fn transport_reason(t: &ureq::Transport) -> String {
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(t);
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    last.or_else(|| t.message().map(str::to_string))
        .unwrap_or_else(|| t.kind().to_string())
}

impl Coordinator {
    /// A client for the keys under `prefix` on the etcd cluster at `endpoints`. Nothing is sent
    /// yet; TLS files are read here.
    pub fn new(endpoints: &[Endpoint], prefix: &str) -> Result<Coordinator, CoordError> {
        let mut out = Vec::new();
        for ep in endpoints {
            let agent = agent_with(ep, CONNECT_TIMEOUT, Some(REQUEST_TIMEOUT)).map_err(|e| match e {
                EtcdError::Tls(t) => CoordError::Tls(t),
                other => CoordError::Tls(other.to_string()),
            })?;
            out.push((ep.url.trim_end_matches('/').to_string(), agent));
        }
        if out.is_empty() {
            return Err(CoordError::Unreachable {
                endpoints: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        Ok(Coordinator {
            endpoints: out,
            prefix: prefix.to_string(),
            preferred: AtomicUsize::new(0),
        })
    }

    /// `name` under the prefix.
    fn key(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    /// POSTs `body` to `path` on the first endpoint that answers, starting with the one that
    /// answered last.
    fn call(&self, what: &'static str, path: &str, body: Value) -> Result<Value, CoordError> {
        let mut failures = Vec::new();
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        for i in (0..n).map(|k| (first + k) % n) {
            let (url, agent) = &self.endpoints[i];
            let answered = || self.preferred.store(i, Ordering::Relaxed);
            let request = agent
                .post(&format!("{url}{path}"))
                .set("Content-Type", "application/json");
            match request.send_string(&body.to_string()) {
                Ok(resp) => {
                    answered();
                    return serde_json::from_reader::<_, Value>(resp.into_reader()).map_err(|e| CoordError::Refused {
                        endpoint: url.clone(),
                        what,
                        reason: format!("an answer that is not JSON: {e}"),
                    });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    let msg = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| {
                            v.get("message")
                                .or(v.get("error"))
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .unwrap_or(text);
                    // The gateway answers a gRPC NotFound (an unknown lease) as 404, at times without a body.
                    let msg = match (msg.trim(), code) {
                        ("", 404) => "not found".to_string(),
                        ("", _) => "an empty answer".to_string(),
                        (m, _) => m.to_string(),
                    };
                    // A member without quorum answers 503 (or a gRPC "unavailable"): try the next.
                    if code >= 500 {
                        failures.push(format!("{url}: {msg} (HTTP {code})"));
                        continue;
                    }
                    answered();
                    return Err(CoordError::Refused {
                        endpoint: url.clone(),
                        what,
                        reason: format!("{msg} (HTTP {code})"),
                    });
                }
                Err(ureq::Error::Transport(t)) => failures.push(format!("{url}: {}", transport_reason(&t))),
            }
        }
        Err(CoordError::Unreachable {
            endpoints: self
                .endpoints
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: failures.join("; "),
        })
    }

    /// [`Coordinator::call`] of a request that uses `lease`: etcd's "not found" for it is
    /// [`CoordError::LeaseEnded`].
    fn with_lease(&self, lease: i64, what: &'static str, path: &str, body: Value) -> Result<Value, CoordError> {
        match self.call(what, path, body) {
            Err(CoordError::Refused { reason, .. }) if reason.contains("not found") => {
                Err(CoordError::LeaseEnded { lease })
            }
            r => r,
        }
    }

    /// A new lease of `ttl` (whole seconds, at least 1).
    pub fn grant(&self, ttl: Duration) -> Result<i64, CoordError> {
        let v = self.call("a lease", "/v3/lease/grant", json!({"TTL": ttl.as_secs().max(1)}))?;
        match int(v.get("ID")) {
            0 => Err(CoordError::Refused {
                endpoint: self.endpoints[0].0.clone(),
                what: "a lease",
                reason: v
                    .get("error")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "no lease id".into()),
            }),
            id => Ok(id),
        }
    }

    /// Keeps `lease` alive for another TTL; what is left of it. [`CoordError::LeaseEnded`] when
    /// it has ended: the holder is no longer leader.
    pub fn keep_alive(&self, lease: i64) -> Result<Duration, CoordError> {
        let v = match self.call(
            "a lease keep-alive",
            "/v3/lease/keepalive",
            json!({"ID": lease.to_string()}),
        ) {
            Err(CoordError::Refused { reason, .. }) if reason.contains("not found") => {
                return Err(CoordError::LeaseEnded { lease })
            }
            v => v?,
        };
        match int(v.pointer("/result/TTL")) {
            ttl if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            _ => Err(CoordError::LeaseEnded { lease }),
        }
    }

    /// What is left of `lease` (whole seconds, rounded down) without keeping it alive; `None`
    /// when it has ended.
    pub fn time_to_live(&self, lease: i64) -> Result<Option<Duration>, CoordError> {
        let v = match self.call(
            "a lease lookup",
            "/v3/lease/timetolive",
            json!({"ID": lease.to_string()}),
        ) {
            Err(CoordError::Refused { reason, .. }) if reason.contains("not found") => return Ok(None),
            v => v?,
        };
        // -1: ended; 0: less than a second left.
        Ok(match int(v.get("TTL")) {
            ttl if ttl >= 0 => Some(Duration::from_secs(ttl as u64)),
            _ => None,
        })
    }

    /// Ends `lease` now: every key held with it is deleted (the leader key too: another
    /// instance can take over at once).
    pub fn revoke(&self, lease: i64) -> Result<(), CoordError> {
        match self.call(
            "a lease revocation",
            "/v3/lease/revoke",
            json!({"ID": lease.to_string()}),
        ) {
            Ok(_) => Ok(()),
            // Already gone is what was asked.
            Err(CoordError::Refused { reason, .. }) if reason.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Becomes the leader as `holder` with `lease` if nobody leads, else says who does. A holder
    /// that already leads with this lease (a campaign repeated) keeps its term.
    pub fn campaign(&self, holder: &str, lease: i64) -> Result<Campaign, CoordError> {
        let key = b64(&self.key("leader"));
        let v = self.with_lease(
            lease,
            "a campaign",
            "/v3/kv/txn",
            json!({
                "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": b64(holder.as_bytes()), "lease": lease.to_string()}}],
                "failure": [{"request_range": {"key": key}}],
            }),
        )?;
        if v.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(Campaign::Won(Term {
                revision: int(v.pointer("/header/revision")),
                lease,
            }));
        }
        let range = v.pointer("/responses/0/response_range").cloned().unwrap_or(Value::Null);
        match kvs(&range).into_iter().next() {
            Some(kv) if kv.lease == lease && kv.value == holder.as_bytes() => Ok(Campaign::Won(Term {
                revision: kv.create_revision,
                lease,
            })),
            Some(kv) => Ok(Campaign::Held(Leader {
                holder: String::from_utf8_lossy(&kv.value).into_owned(),
                term: Term {
                    revision: kv.create_revision,
                    lease: kv.lease,
                },
            })),
            // Gone between the compare and the read: the next campaign wins or sees the winner.
            None => self.campaign(holder, lease),
        }
    }

    /// Who leads now (a linearizable read).
    pub fn leader(&self) -> Result<Option<Leader>, CoordError> {
        let v = self.call("a read", "/v3/kv/range", json!({"key": b64(&self.key("leader"))}))?;
        Ok(kvs(&v).into_iter().next().map(|kv| Leader {
            holder: String::from_utf8_lossy(&kv.value).into_owned(),
            term: Term {
                revision: kv.create_revision,
                lease: kv.lease,
            },
        }))
    }

    /// Whether `term` still leads: `Ok` when it does, [`CoordError::Deposed`] (naming who leads
    /// now) when it does not. Called before every side effect.
    pub fn check(&self, term: Term) -> Result<(), CoordError> {
        match self.leader()? {
            Some(l) if l.term == term => Ok(()),
            now => Err(CoordError::Deposed { term, now }),
        }
    }

    /// Puts `name` = `value` only while `term` leads, compared inside etcd in the same
    /// transaction: a deposed leader's write is refused ([`CoordError::Deposed`]) and changes
    /// nothing.
    pub fn put_fenced(&self, term: Term, name: &str, value: &[u8]) -> Result<(), CoordError> {
        let leader = b64(&self.key("leader"));
        let v = self.call(
            "a fenced write",
            "/v3/kv/txn",
            json!({
                "compare": [
                    {"key": leader, "target": "CREATE", "result": "EQUAL", "create_revision": term.revision.to_string()},
                    {"key": leader, "target": "LEASE", "result": "EQUAL", "lease": term.lease.to_string()},
                ],
                "success": [{"request_put": {"key": b64(&self.key(name)), "value": b64(value)}}],
                "failure": [],
            }),
        )?;
        if v.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        Err(CoordError::Deposed {
            term,
            now: self.leader()?,
        })
    }

    /// Gives up `term`: the leader key is deleted if it is still this term's, so another instance
    /// can win at once. Resigning a term that is over changes nothing.
    pub fn resign(&self, term: Term) -> Result<(), CoordError> {
        let leader = b64(&self.key("leader"));
        self.call(
            "a resignation",
            "/v3/kv/txn",
            json!({
                "compare": [{"key": leader, "target": "CREATE", "result": "EQUAL", "create_revision": term.revision.to_string()}],
                "success": [{"request_delete_range": {"key": leader}}],
                "failure": [],
            }),
        )?;
        Ok(())
    }

    /// Puts `name` = `value` held by `lease`: it goes away with the lease (a verdict of an
    /// instance that stopped publishing does not outlive it).
    pub fn publish(&self, name: &str, value: &[u8], lease: i64) -> Result<(), CoordError> {
        self.with_lease(
            lease,
            "a write",
            "/v3/kv/put",
            json!({"key": b64(&self.key(name)), "value": b64(value), "lease": lease.to_string()}),
        )?;
        Ok(())
    }

    /// Puts `name` = `value` with no lease: it stays until deleted.
    pub fn put(&self, name: &str, value: &[u8]) -> Result<(), CoordError> {
        self.call(
            "a write",
            "/v3/kv/put",
            json!({"key": b64(&self.key(name)), "value": b64(value)}),
        )?;
        Ok(())
    }

    /// Deletes `name` (deleting a key that is not there changes nothing).
    pub fn delete(&self, name: &str) -> Result<(), CoordError> {
        self.call("a delete", "/v3/kv/deleterange", json!({"key": b64(&self.key(name))}))?;
        Ok(())
    }

    /// Every key under `name` (under the prefix), with its value, in key order; keys are given
    /// without the prefix.
    pub fn list(&self, name: &str) -> Result<Vec<(String, Vec<u8>)>, CoordError> {
        let start = self.key(name);
        let v = self.call(
            "a read",
            "/v3/kv/range",
            json!({"key": b64(&start), "range_end": b64(&prefix_end(&start))}),
        )?;
        Ok(kvs(&v)
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                (key.strip_prefix(&self.prefix).unwrap_or(&key).to_string(), kv.value)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_is_the_next_key_after_all_that_start_with_it() {
        assert_eq!(prefix_end(b"lifeboat/p/verdicts/"), b"lifeboat/p/verdicts0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }

    #[test]
    fn int64s_of_the_gateway_come_as_strings_or_numbers() {
        assert_eq!(int(Some(&json!("7587868721853612292"))), 7587868721853612292);
        assert_eq!(int(Some(&json!(12))), 12);
        assert_eq!(int(None), 0);
    }

    #[test]
    fn a_deposed_term_says_who_leads_now() {
        let e = CoordError::Deposed {
            term: Term { revision: 5, lease: 1 },
            now: Some(Leader {
                holder: "b".into(),
                term: Term { revision: 9, lease: 2 },
            }),
        };
        assert_eq!(
            e.to_string(),
            "coordination: term 5 is over (b leads since term 9); this instance is not the leader and did nothing"
        );
    }
}
