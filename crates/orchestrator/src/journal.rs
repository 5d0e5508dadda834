//! What the orchestrator remembers, kept in the repository (sealed like everything else there):
//! each app's state (`dr/PLAN/APP/state`) and one journal per operation (`dr/PLAN/APP/ops/ID`).
//!
//! A journal is rewritten after every step starts and after it ends, so after a crash it tells
//! which steps finished (never repeated) and which one was under way (repeated: every step is
//! idempotent). See docs/dr.md.
use lifeboat_model::Id;
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
    pub snapshot: Id,
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
    pub snapshot: Id,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Taken by this operation after fencing (nothing was written after it).
    pub final_backup: bool,
}

/// A step of an operation. A journal names it by its text (`fence`, `final-backup`, `hook 2`),
/// which is the on-disk form; a name this version does not know makes the journal unreadable
/// ([`OrchestratorError::Journal`]) rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Stop the side being left, or record the evidence that it is off.
    Fence,
    /// A last backup of the side being left, after the fence.
    FinalBackup,
    /// A backup of the target before a recovery point is written over it.
    Quarantine,
    /// The recovery point's data written on the target.
    Data,
    Start,
    Health,
    /// The app's `post_restore` hook number N (from 1).
    Hook(u32),
    Traffic,
    Verify,
    /// A drill's copy removed.
    Teardown,
}

/// The steps of a failover or failback, in order (`hook N` after `health` when the app has
/// `post_restore` hooks; `quarantine` before `data` when the target may hold writes).
pub const FAILOVER_STEPS: &[Step] = &[
    Step::Fence,
    Step::FinalBackup,
    Step::Data,
    Step::Start,
    Step::Health,
    Step::Traffic,
    Step::Verify,
];
/// The steps of a drill, in order.
pub const DRILL_STEPS: &[Step] = &[Step::Data, Step::Start, Step::Health, Step::Verify, Step::Teardown];

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Step::Fence => "fence",
            Step::FinalBackup => "final-backup",
            Step::Quarantine => "quarantine",
            Step::Data => "data",
            Step::Start => "start",
            Step::Health => "health",
            Step::Hook(n) => return f.pad(&format!("hook {n}")),
            Step::Traffic => "traffic",
            Step::Verify => "verify",
            Step::Teardown => "teardown",
        };
        f.pad(s)
    }
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Step, String> {
        Ok(match s {
            "fence" => Step::Fence,
            "final-backup" => Step::FinalBackup,
            "quarantine" => Step::Quarantine,
            "data" => Step::Data,
            "start" => Step::Start,
            "health" => Step::Health,
            "traffic" => Step::Traffic,
            "verify" => Step::Verify,
            "teardown" => Step::Teardown,
            other => match other.strip_prefix("hook ").map(str::parse::<u32>) {
                Some(Ok(n)) if n > 0 => Step::Hook(n),
                _ => return Err(format!("unknown step {other:?}")),
            },
        })
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// How a step ended; `Pending` (written `""`) while it runs or after a crash cut it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    #[default]
    #[serde(rename = "")]
    Pending,
    Done,
    Skipped,
    Failed,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Pending => "",
            StepOutcome::Done => "done",
            StepOutcome::Skipped => "skipped",
            StepOutcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Who established that a fenced site is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FencedBy {
    /// Lifeboat stopped it (and saw it stopped).
    Lifeboat,
    /// It could not be reached, and a fresh witness report says it is down.
    Witness,
    /// The operator said so (`--fenced-by-hand`).
    Hand,
    /// It could not be reached, a majority of the plan's `serve` instances saw it down, and the
    /// instance on that site lost its lease: it stopped the app there before the lease ended
    /// (its self-fence).
    Quorum,
}

/// One step of an operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub name: Step,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished: Option<OffsetDateTime>,
    #[serde(default)]
    pub outcome: StepOutcome,
    #[serde(default)]
    pub detail: String,
    /// How many times the step was started (more than 1 after a resume).
    #[serde(default = "one")]
    pub attempts: u32,
    /// For a finished fence: who established that the site is off. Journals written before this
    /// field have it only in the detail's words ([`Operation::fenced_by`] reads those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<FencedBy>,
    /// The leader's term the step last ran under, when several instances run the plan
    /// ([`crate::leadership`]); none for a single process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
}

fn one() -> u32 {
    1
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpStatus {
    Running,
    Done,
    Failed,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Running => "running",
            OpStatus::Done => "done",
            OpStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for OpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
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
    pub status: OpStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times the operation was resumed after an interruption.
    #[serde(default)]
    pub resumed: u32,
    /// A drill's name prefix for its copy (`drill-...-`), chosen when it began. Journals written
    /// before this field derive it from the id ([`Operation::copy_prefix`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl Operation {
    /// The finished step `name`, if any.
    pub fn finished(&self, name: Step) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name && s.finished.is_some())
    }

    /// Who established that the side being left is off, once the fence finished. A journal
    /// written before [`StepRecord::fenced_by`] existed says it only in the detail: Lifeboat's own
    /// fence began with "SITE fenced", anything else was evidence (the witness's or the
    /// operator's); this is the one place those words are read.
    pub fn fenced_by(&self) -> Option<FencedBy> {
        let rec = self.finished(Step::Fence)?;
        Some(match rec.fenced_by {
            Some(by) => by,
            None if rec.detail.starts_with(&format!("{} fenced", self.from)) => FencedBy::Lifeboat,
            None if rec.detail.contains("--fenced-by-hand") => FencedBy::Hand,
            None => FencedBy::Witness,
        })
    }

    /// The drill copy's name prefix: recorded when the drill began, or (journals written before
    /// it was) made from the id's time and suffix as those versions did.
    pub fn copy_prefix(&self) -> String {
        match &self.prefix {
            Some(p) => p.clone(),
            None => legacy_prefix(&self.id),
        }
    }

    /// Seconds from the trigger to the end of step `name`.
    pub fn seconds_to(&self, name: Step) -> Option<f64> {
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

    /// The app's last witness report (`dr/PLAN/APP/witness`); `None` when there is none or it
    /// does not parse (a report is evidence only when it reads whole).
    pub fn witness_report(&self) -> Result<Option<crate::watch::WitnessReport>, OrchestratorError> {
        let bytes = self.repo.read_state(&format!("{}/witness", self.dir()))?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Writes the app's witness report (the witness, after each probe round).
    pub fn save_witness_report(&self, r: &crate::watch::WitnessReport) -> Result<(), OrchestratorError> {
        self.write(&format!("{}/witness", self.dir()), r)
    }

    pub fn operation(&self, id: &str) -> Result<Option<Operation>, OrchestratorError> {
        self.read(&format!("{}/ops/{id}", self.dir()))
    }

    pub fn save_operation(&self, op: &Operation) -> Result<(), OrchestratorError> {
        self.write(&format!("{}/ops/{}", self.dir(), op.id), op)
    }

    /// Removes an operation's record (a drill report past `drill.keep`).
    pub fn remove_operation(&self, id: &str) -> Result<(), OrchestratorError> {
        Ok(self.repo.remove_state(&format!("{}/ops/{id}", self.dir()))?)
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

/// The drill prefix of versions that did not record it: `drill-HHMMSS` and the id's 4 hex digits.
fn legacy_prefix(id: &str) -> String {
    let time = id.get(9..15).unwrap_or_default();
    let suffix = id.get(17..21).unwrap_or_default();
    format!("drill-{time}{suffix}-")
}

/// A drill copy's name prefix for a new operation `id`: short (names have length limits on
/// both platforms), unique per operation, and telling when it ran.
pub fn new_prefix(id: &str) -> String {
    legacy_prefix(id)
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
        out.extend(state.staged.map(|s| s.snapshot));
        if let Some(op) = state.running.as_deref() {
            if let Some(rp) = store.operation(op)?.and_then(|o| o.recovery_point) {
                out.insert(rp.snapshot);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn time() -> impl Strategy<Value = OffsetDateTime> {
        (0i64..4_000_000_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| OffsetDateTime::from_unix_timestamp(s).unwrap() + time::Duration::nanoseconds(n as i64))
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Fence),
            Just(Step::FinalBackup),
            Just(Step::Quarantine),
            Just(Step::Data),
            Just(Step::Start),
            Just(Step::Health),
            (1u32..1000).prop_map(Step::Hook),
            Just(Step::Traffic),
            Just(Step::Verify),
            Just(Step::Teardown),
        ]
    }

    fn record() -> impl Strategy<Value = StepRecord> {
        (
            step(),
            time(),
            proptest::option::of(time()),
            prop_oneof![
                Just(StepOutcome::Pending),
                Just(StepOutcome::Done),
                Just(StepOutcome::Skipped),
                Just(StepOutcome::Failed)
            ],
            ".*",
            1u32..5,
            proptest::option::of(prop_oneof![
                Just(FencedBy::Lifeboat),
                Just(FencedBy::Witness),
                Just(FencedBy::Hand)
            ]),
            proptest::option::of(1i64..i64::MAX),
        )
            .prop_map(
                |(name, started, finished, outcome, detail, attempts, fenced_by, term)| StepRecord {
                    name,
                    started,
                    finished,
                    outcome,
                    detail,
                    attempts,
                    fenced_by,
                    term,
                },
            )
    }

    fn operation() -> impl Strategy<Value = Operation> {
        (
            "[a-z0-9-]{1,30}",
            prop_oneof![Just(Kind::Failover), Just(Kind::Failback), Just(Kind::Drill)],
            time(),
            proptest::option::of(time()),
            proptest::option::of((any::<[u8; 32]>(), time(), any::<bool>())),
            proptest::collection::vec(record(), 0..12),
            prop_oneof![Just(OpStatus::Running), Just(OpStatus::Done), Just(OpStatus::Failed)],
            proptest::option::of(".*"),
            0u32..4,
            proptest::option::of("drill-[a-z0-9]{1,10}-"),
        )
            .prop_map(
                |(id, kind, trigger, detected, rp, steps, status, error, resumed, prefix)| Operation {
                    id,
                    plan: "p".into(),
                    app: "web".into(),
                    kind,
                    from: "a".into(),
                    to: "b".into(),
                    trigger,
                    reason: "manual".into(),
                    detected,
                    recovery_point: rp.map(|(id, time, final_backup)| RecoveryPoint {
                        snapshot: Id(id),
                        time,
                        final_backup,
                    }),
                    steps,
                    status,
                    error,
                    resumed,
                    prefix,
                },
            )
    }

    proptest! {
        #[test]
        fn an_operation_reads_back_as_it_was_written(op in operation()) {
            let json = serde_json::to_vec_pretty(&op).unwrap();
            let back: Operation = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, op);
        }

        #[test]
        fn a_step_name_reads_back_as_the_step(s in step()) {
            prop_assert_eq!(s.to_string().parse::<Step>(), Ok(s));
        }
    }

    #[test]
    fn names_that_are_not_steps_are_refused() {
        for bad in [
            "",
            "hook",
            "hook 0",
            "hook -1",
            "hook 1x",
            "Fence",
            "final_backup",
            "hook  1",
        ] {
            assert!(bad.parse::<Step>().is_err(), "{bad:?}");
        }
        assert_eq!(
            format!("{:<8}|", Step::Hook(2)),
            "hook 2  |",
            "padding works for tables"
        );
    }
}
