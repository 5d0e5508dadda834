//! What the orchestrator remembers, kept in the repository (sealed like everything else there):
//! each app's state (`dr/PLAN/APP/state`) and one journal per operation (`dr/PLAN/APP/ops/ID`).
//!
//! A journal is rewritten after every step starts and after it ends, so after a crash it tells
//! which steps finished (never repeated) and which one was under way (repeated: every step is
//! idempotent). See docs/dr.md.
use lifeboat_repo::Repository;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::OrchestratorError;

/// Where an app stands, across operations.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AppState {
    /// The site that serves the app now (the plan's primary until a failover finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Sites fenced by a failover and not brought back by a failback.
    #[serde(default)]
    pub fenced: Vec<Fence>,
    /// The snapshot whose volume data was last written to a hot standby, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
    /// The operation under way (a crash leaves it here; the same command resumes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The last operation that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Restart policies a fence cleared, by site, then container (`always`, `on-failure:3`):
    /// kept here (a container's labels cannot be changed) until the start step on that site gives
    /// them back. Recorded before they are cleared, so a crash in between loses nothing.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub restart_policies: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The sequence number of the app's last traffic switch request (webhook bodies carry it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub traffic_sequence: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A fenced site.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fence {
    pub site: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Lifeboat could not stop the site itself (it could not be reached, or the operator fenced it
    /// by hand): it is never started automatically.
    pub unreachable: bool,
    /// Who or what confirmed a fence Lifeboat could not carry out: the witness's report or the
    /// operator (`--fenced-by-hand`). `None` when Lifeboat stopped the site itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Staged {
    pub site: String,
    pub snapshot: String,
}

/// The kind of an operation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Failover,
    Failback,
    Drill,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Failback => "failback",
            Kind::Drill => "drill",
        }
    }
}

/// A snapshot an operation recovers from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryPoint {
    pub snapshot: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Taken by this operation after fencing (nothing was written after it).
    pub final_backup: bool,
}

/// One step of an operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished: Option<OffsetDateTime>,
    /// `done`, `skipped` or `failed` once finished.
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
    /// How many times the step was started (more than 1 after a resume).
    #[serde(default = "one")]
    pub attempts: u32,
}

fn one() -> u32 {
    1
}

/// An operation's journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Operation {
    pub id: String,
    pub plan: String,
    pub app: String,
    pub kind: Kind,
    pub from: String,
    pub to: String,
    /// When the operation was asked for (or, from `watch`, when the first failed probe was seen).
    #[serde(with = "time::serde::rfc3339")]
    pub trigger: OffsetDateTime,
    /// Why: `manual`, `health`, `drill`.
    pub reason: String,
    /// When `watch` decided (after the failure threshold), if it did.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub detected: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<RecoveryPoint>,
    pub steps: Vec<StepRecord>,
    /// `running`, `done` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times the operation was resumed after an interruption.
    #[serde(default)]
    pub resumed: u32,
}

impl Operation {
    /// The finished step named `name`, if any.
    pub fn finished(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name && s.finished.is_some())
    }

    /// Seconds from the trigger to the end of step `name`.
    pub fn seconds_to(&self, name: &str) -> Option<f64> {
        let end = self.finished(name)?.finished?;
        Some((end - self.trigger).as_seconds_f64())
    }

    /// The achieved RPO: the trigger time minus the recovery point's time (0 when the recovery
    /// point was taken after the trigger, by a final backup).
    pub fn rpo_seconds(&self) -> Option<f64> {
        let rp = self.recovery_point.as_ref()?;
        Some((self.trigger - rp.time).as_seconds_f64().max(0.0))
    }
}

/// How long a request to give way ([`Store::request_preemption`]) stays current.
pub const PREEMPTION_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A failover's or failback's request that a scheduled backup of the same app give way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Preemption {
    /// `failover`, `failback`.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// The repository paths of a plan's app.
pub struct Store<'a> {
    pub repo: &'a Repository,
    pub plan: String,
    pub app: String,
}

impl Store<'_> {
    pub fn dir(&self) -> String {
        format!("{}/{}", self.plan, self.app)
    }

    pub fn state(&self) -> Result<AppState, OrchestratorError> {
        self.read(&format!("{}/state", self.dir()))
            .map(Option::unwrap_or_default)
    }

    pub fn save_state(&self, s: &AppState) -> Result<(), OrchestratorError> {
        self.write(&format!("{}/state", self.dir()), s)
    }

    /// Asks a scheduled `backup --plan` of the app that holds its lock to give way to `by` (a
    /// failover or failback waiting for the lock); see [`Store::preempted`].
    pub fn request_preemption(&self, by: &str) -> Result<(), OrchestratorError> {
        let p = Preemption {
            by: by.to_string(),
            time: OffsetDateTime::now_utc(),
        };
        self.write(&format!("{}/preempt", self.dir()), &p)
    }

    /// Withdraws the request of [`Store::request_preemption`].
    pub fn clear_preemption(&self) -> Result<(), OrchestratorError> {
        Ok(self.repo.remove_state(&format!("{}/preempt", self.dir()))?)
    }

    /// A request to give way that is still current: made less than [`PREEMPTION_TTL`] ago (by the
    /// reader's clock: a request left by a failover that died is ignored after that). A request
    /// that cannot be read is honoured (a failover asked; giving way is the safe side).
    pub fn preempted(&self) -> Option<Preemption> {
        match self.read::<Preemption>(&format!("{}/preempt", self.dir())) {
            Ok(Some(p)) => {
                let age = OffsetDateTime::now_utc() - p.time;
                (age.unsigned_abs() < PREEMPTION_TTL).then_some(p)
            }
            Ok(None) => None,
            Err(e) => Some(Preemption {
                by: format!("an unreadable request ({e})"),
                time: OffsetDateTime::now_utc(),
            }),
        }
    }

    pub fn operation(&self, id: &str) -> Result<Option<Operation>, OrchestratorError> {
        self.read(&format!("{}/ops/{id}", self.dir()))
    }

    pub fn save_operation(&self, op: &Operation) -> Result<(), OrchestratorError> {
        self.write(&format!("{}/ops/{}", self.dir(), op.id), op)
    }

    /// Every operation of the app, oldest first.
    pub fn operations(&self) -> Result<Vec<Operation>, OrchestratorError> {
        let mut ids = self.repo.list_state(&format!("{}/ops", self.dir()))?;
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            if let Some(op) = self.operation(&id)? {
                out.push(op);
            }
        }
        Ok(out)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, OrchestratorError> {
        match self.repo.read_state(path)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| OrchestratorError::Journal {
                    path: format!("dr/{path}"),
                    reason: e.to_string(),
                }),
        }
    }

    fn write<T: Serialize>(&self, path: &str, v: &T) -> Result<(), OrchestratorError> {
        let bytes = serde_json::to_vec_pretty(v).expect("serialisable");
        Ok(self.repo.write_state(path, &bytes)?)
    }
}

/// A new operation id: UTC time and 4 hex digits from the nanoseconds and the process id (sorts
/// by time; two operations of one app never start in the same process and nanosecond).
pub fn new_id(now: OffsetDateTime) -> String {
    let r = (now.nanosecond() ^ std::process::id()) & 0xffff;
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{r:04x}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
    )
}

/// Every snapshot the DR state of any plan in the repository references: each app's staged
/// snapshot (what a hot standby holds) and the recovery point of its unfinished operation. No
/// retention command may remove these (`forget` keeps them whatever its rules say).
pub fn referenced_snapshots(
    repo: &Repository,
) -> Result<std::collections::HashSet<lifeboat_model::Id>, OrchestratorError> {
    let mut out = std::collections::HashSet::new();
    for name in repo.list_state("")? {
        let parts: Vec<&str> = name.split('/').collect();
        let [plan, app, "state"] = parts.as_slice() else {
            continue;
        };
        let store = Store {
            repo,
            plan: plan.to_string(),
            app: app.to_string(),
        };
        let state = store.state()?;
        let mut ids: Vec<String> = state.staged.map(|s| s.snapshot).into_iter().collect();
        if let Some(op) = state.running.as_deref() {
            if let Some(rp) = store.operation(op)?.and_then(|o| o.recovery_point) {
                ids.push(rp.snapshot);
            }
        }
        out.extend(ids.iter().filter_map(|s| s.parse::<lifeboat_model::Id>().ok()));
    }
    Ok(out)
}
