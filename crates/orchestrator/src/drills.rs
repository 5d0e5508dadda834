//! An app's drill record: the drills journaled in the repository (each drill is an operation of
//! kind `drill` under `dr/PLAN/APP/ops/`), each judged as the drill report judges it, their
//! retention (`drill.keep`), and when the next scheduled drill (`drill.every`) is due.
//!
//! Guarantees: a drill counts as passed only when it finished with every step done and within
//! the app's objectives; a drill that never finished (interrupted, or still running) is listed but
//! judges nothing; retention removes only finished drills, oldest first.
use std::time::Duration;

use lifeboat_plan::{App, Plan};
use lifeboat_repo::Repository;
use serde::Serialize;
use time::OffsetDateTime;

use crate::journal::{Kind, OpStatus, Operation, Store};
use crate::report::{drill_problems, objectives, rto_seconds};
use crate::OrchestratorError;

/// One drill of an app, as the repository holds it.
#[derive(Debug, Clone)]
pub struct DrillRecord {
    pub op: Operation,
    /// What failed or missed an objective; empty when the drill passed.
    pub problems: Vec<String>,
}

/// A drill's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    /// Still running, or interrupted (its copy is removed by the next drill).
    Unfinished,
}

impl DrillRecord {
    /// When the drill started.
    pub fn time(&self) -> OffsetDateTime {
        self.op.trigger
    }

    pub fn outcome(&self) -> Outcome {
        match self.op.status {
            OpStatus::Running => Outcome::Unfinished,
            OpStatus::Done if self.problems.is_empty() => Outcome::Passed,
            _ => Outcome::Failed,
        }
    }

    /// The line `lifeboat drills` prints and the JSON it gives.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.op.id,
            "app": self.op.app,
            "site": self.op.to,
            "started": self.time().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "outcome": self.outcome(),
            "rto_seconds": rto_seconds(&self.op),
            "rpo_seconds": self.op.rpo_seconds(),
            "problems": self.problems,
        })
    }
}

/// The drills of `app`, newest first.
pub fn history(repo: &Repository, plan: &Plan, app: &App) -> Result<Vec<DrillRecord>, OrchestratorError> {
    let st = Store {
        repo,
        plan: plan.metadata.name.clone(),
        app: app.name.value.clone(),
    };
    Ok(history_of(app, st.operations()?))
}

/// The drills among `ops` (the app's operations, as [`Store::operations`] reads them), newest
/// first.
pub fn history_of(app: &App, ops: Vec<Operation>) -> Vec<DrillRecord> {
    let (rto, rpo) = objectives(app);
    let mut out: Vec<DrillRecord> = ops
        .into_iter()
        .filter(|op| op.kind == Kind::Drill)
        .map(|op| {
            let problems = match op.status {
                OpStatus::Running => Vec::new(),
                _ => {
                    let mut p = drill_problems(&op, rto, rpo);
                    if op.status != OpStatus::Done && p.is_empty() {
                        p.push(op.error.clone().unwrap_or_else(|| "the drill failed".into()));
                    }
                    p
                }
            };
            DrillRecord { op, problems }
        })
        .collect();
    out.sort_by(|a, b| b.op.trigger.cmp(&a.op.trigger).then_with(|| b.op.id.cmp(&a.op.id)));
    out
}

/// The newest drill that finished (passed or failed), from a [`history`].
pub fn last_finished(history: &[DrillRecord]) -> Option<&DrillRecord> {
    history.iter().find(|d| d.outcome() != Outcome::Unfinished)
}

/// Removes the app's oldest finished drills past `drill.keep` (nothing without it); the ids removed.
pub fn prune(repo: &Repository, plan: &Plan, app: &App) -> Result<Vec<String>, OrchestratorError> {
    let Some(keep) = app.drill.keep.as_ref().map(|k| k.value as usize) else {
        return Ok(Vec::new());
    };
    let st = Store {
        repo,
        plan: plan.metadata.name.clone(),
        app: app.name.value.clone(),
    };
    let mut removed = Vec::new();
    let finished = history(repo, plan, app)?
        .into_iter()
        .filter(|d| d.outcome() != Outcome::Unfinished);
    for d in finished.skip(keep) {
        st.remove_operation(&d.op.id)?;
        removed.push(d.op.id);
    }
    Ok(removed)
}

/// How long ago the app's newest drill started (`None`: never drilled), to place the schedule
/// with [`crate::schedule::first_delay`]: a new leader keeps the old one's rhythm.
pub fn since_last(history: &[DrillRecord], now: OffsetDateTime) -> Option<Duration> {
    history.first().map(|d| (now - d.time()).unsigned_abs())
}

/// Whether the app counts as drilled at `now`: its newest finished drill passed and started
/// within the drill interval (`drill.every`, else [`lifeboat_plan::DEFAULT_DRILL_INTERVAL`]).
/// The reason when not.
pub fn drilled(app: &App, history: &[DrillRecord], now: OffsetDateTime) -> Result<(), String> {
    let interval = app.drill.interval();
    let Some(last) = last_finished(history) else {
        return Err("never drilled".into());
    };
    let age = (now - last.time()).unsigned_abs();
    if last.outcome() == Outcome::Failed {
        return Err(format!(
            "the last drill {} failed: {}",
            last.op.id,
            last.problems.join("; ")
        ));
    }
    if age > interval {
        return Err(format!(
            "the last passed drill {} is {} old, more than the drill interval {}",
            last.op.id,
            human(age),
            human(interval)
        ));
    }
    Ok(())
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `45s`: the two largest units of a duration.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d_}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Step, StepOutcome};
    use crate::ops::fake::World;
    use crate::ops::{drill, Options};

    #[test]
    fn a_failed_drill_judges_the_app_and_keep_removes_only_the_oldest_finished_reports() {
        let w = World::with_app_lines(false, "    drill: {keep: 2}\n").backed_up();
        let app = &w.plan.apps[0];
        let now = || OffsetDateTime::now_utc();
        assert_eq!(drilled(app, &[], now()), Err("never drilled".into()));
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(drill(&w.env(), "web", &Options::default()).unwrap().id);
        }
        let h = history(&w.repo, &w.plan, app).unwrap();
        let listed: Vec<&str> = h.iter().map(|d| d.op.id.as_str()).collect();
        assert_eq!(
            listed,
            [ids[2].as_str(), ids[1].as_str()],
            "newest first, the oldest past keep removed"
        );
        assert!(h.iter().all(|d| d.outcome() == Outcome::Passed), "{:?}", h[0].problems);
        assert_eq!(drilled(app, &h, now()), Ok(()));
        assert!(since_last(&h, now()).unwrap() < Duration::from_secs(60));
        let later = now() + Duration::from_secs(31 * 86_400);
        let why = drilled(app, &h, later).unwrap_err();
        assert!(why.contains("more than the drill interval 30d 0h"), "{why}");

        // A drill whose copy did not start (its record as a failed drill leaves it).
        let mut failed = h[0].op.clone();
        failed.id = format!("{}-drill", crate::journal::new_id(now()));
        failed.trigger = now();
        failed.status = OpStatus::Failed;
        let start = failed.steps.iter_mut().find(|s| s.name == Step::Start).unwrap();
        start.outcome = StepOutcome::Failed;
        start.detail = "start failed (injected)".into();
        failed.error = Some("step start failed".into());
        w.store().save_operation(&failed).unwrap();
        let h = history(&w.repo, &w.plan, app).unwrap();
        assert_eq!(h[0].op.id, failed.id);
        assert_eq!(h[0].outcome(), Outcome::Failed);
        let why = drilled(app, &h, now()).unwrap_err();
        assert!(
            why.starts_with(&format!(
                "the last drill {} failed: step start failed: start failed (injected)",
                failed.id
            )),
            "{why}"
        );

        // An interrupted drill is listed, judges nothing and is never removed by retention.
        let mut interrupted = failed.clone();
        interrupted.id = format!("{}-x", failed.id);
        interrupted.trigger = now();
        interrupted.status = OpStatus::Running;
        interrupted.steps.clear();
        w.store().save_operation(&interrupted).unwrap();
        drill(&w.env(), "web", &Options::default()).unwrap();
        let h = history(&w.repo, &w.plan, app).unwrap();
        let outcomes: Vec<Outcome> = h.iter().map(DrillRecord::outcome).collect();
        assert_eq!(outcomes, [Outcome::Passed, Outcome::Unfinished, Outcome::Failed]);
        assert_eq!(drilled(app, &h, now()), Ok(()), "the newest finished drill passed");
    }

    #[test]
    fn durations_read_in_their_two_largest_units() {
        let s = Duration::from_secs;
        assert_eq!(human(s(45)), "45s");
        assert_eq!(human(s(7 * 60 + 3)), "7m 3s");
        assert_eq!(human(s(2 * 3600 + 5 * 60 + 9)), "2h 5m");
        assert_eq!(human(s(7 * 86_400 + 3600)), "7d 1h");
    }
}
