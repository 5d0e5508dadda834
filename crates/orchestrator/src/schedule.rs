//! The plan's backup schedule (`backup.every`) and retention (`backup.keep`), as `serve` runs them.
//!
//! Each app's backups are due every `every`, counted from its newest recovery point: a server
//! restarted 40 s after a backup with `every: 1m` backs up 20 s later, not at once. A backup that
//! overruns its slot is followed by one backup at once, not by one per slot it missed. Runs on
//! tokio's clock, so it is tested on a paused one.
use std::future::Future;
use std::time::Duration;

use lifeboat_plan::{App, Keep};
use lifeboat_repo::forget::Policy;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::journal::AppState;
use crate::ops::{latest_recovery_point, store, Env};
use crate::OrchestratorError;

/// How long until the first backup of a schedule of `every`, when the newest one is `since_last` old.
pub fn first_delay(every: Duration, since_last: Option<Duration>) -> Duration {
    since_last.map_or(Duration::ZERO, |s| every.saturating_sub(s))
}

/// Runs `backup` every `every`, first after `first`; never returns. When a backup overran, the
/// next one starts as soon as it ends, and the slots it missed are not made up.
pub async fn every<F, Fut>(every: Duration, first: Duration, mut backup: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = interval_at(Instant::now() + first, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        backup().await;
    }
}

/// The retention policy of a plan's `keep`; `None` when it keeps everything.
pub fn policy(keep: &Keep) -> Option<Policy> {
    let p = Policy {
        last: keep.last.unwrap_or(0),
        hourly: keep.hourly.unwrap_or(0),
        daily: keep.daily.unwrap_or(0),
        weekly: keep.weekly.unwrap_or(0),
        monthly: keep.monthly.unwrap_or(0),
        yearly: 0,
    };
    (!p.is_empty()).then_some(p)
}

/// Applies the app's `backup.keep` to its complete snapshots (tags `plan=` and `app=`). Never
/// removes the newest recovery point, the snapshot staged on a hot standby, the recovery point and
/// the final backup of an unfinished operation, or a quarantine snapshot (tag `quarantine` or
/// `split-brain`: what a site held before a recovery point was written over it). Incomplete
/// snapshots take no place in the policy's slots: of those newer than the newest complete one the
/// newest is kept (an operator may accept it with `--accept-incomplete`), the others are removed.
/// The short ids removed.
pub fn apply_retention(env: &Env, app: &App, lock_wait: Duration) -> Result<Vec<String>, OrchestratorError> {
    let Some(policy) = app.backup.as_ref().and_then(|b| policy(&b.keep)) else {
        return Ok(Vec::new());
    };
    let (plan, name) = (&env.plan.metadata.name, &app.name.value);
    let st = store(env, app);
    let _lock = env.repo.lock(true, "retention (serve)", lock_wait)?;
    let state: AppState = st.state()?;
    let mut protected: Vec<lifeboat_model::Id> = latest_recovery_point(env.repo, plan, name)?
        .map(|r| r.snapshot)
        .into_iter()
        .chain(state.staged.map(|s| s.snapshot))
        .collect();
    let mut running_tag = None;
    if let Some(op) = state.running.as_deref() {
        running_tag = Some(format!("op={op}"));
        if let Some(rp) = st.operation(op)?.and_then(|o| o.recovery_point) {
            protected.push(rp.snapshot);
        }
    }
    let (p, a) = (format!("plan={plan}"), format!("app={name}"));
    let (complete, incomplete): (Vec<_>, Vec<_>) = env
        .repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.tags.contains(&p) && s.tags.contains(&a) && !s.is_quarantine())
        .filter(|(_, s)| running_tag.as_ref().is_none_or(|t| !s.tags.contains(t)))
        .partition(|(_, s)| s.is_complete());
    let newest_complete = complete.iter().map(|(_, s)| s.time).max();
    let newest_incomplete = incomplete
        .iter()
        .filter(|(_, s)| newest_complete.is_none_or(|t| s.time > t))
        .max_by_key(|(_, s)| s.time)
        .map(|(id, _)| *id);
    let mut remove: Vec<lifeboat_model::Id> = policy
        .apply(&complete)?
        .into_iter()
        .filter(|d| !d.keep)
        .map(|d| d.id)
        .collect();
    remove.extend(
        incomplete
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| Some(*id) != newest_incomplete),
    );
    let mut removed = Vec::new();
    for id in remove {
        if !protected.contains(&id) {
            env.repo.remove_snapshot(&id)?;
            removed.push(id.short());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_backup_is_due_every_after_the_last_one() {
        let m = Duration::from_secs(60);
        assert_eq!(first_delay(m, None), Duration::ZERO, "never backed up: now");
        assert_eq!(first_delay(m, Some(Duration::from_secs(40))), Duration::from_secs(20));
        assert_eq!(
            first_delay(m, Some(Duration::from_secs(600))),
            Duration::ZERO,
            "overdue: now"
        );
    }

    /// Backups at `first`, then every `every`, counted on a paused clock; each takes `takes`.
    async fn count_runs(first: Duration, takes: Duration, after: Duration) -> Vec<u64> {
        let start = Instant::now();
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = runs.clone();
        let task = tokio::spawn(every(Duration::from_secs(60), first, move || {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(start.elapsed().as_secs());
                tokio::time::sleep(takes).await;
            }
        }));
        tokio::time::sleep(after).await;
        task.abort();
        let out = runs.lock().unwrap().clone();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn backups_run_every_interval_from_the_first_slot() {
        let runs = count_runs(
            Duration::from_secs(20),
            Duration::from_secs(5),
            Duration::from_secs(201),
        )
        .await;
        assert_eq!(runs, [20, 80, 140, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backup_that_overruns_is_followed_by_one_not_by_one_per_missed_slot() {
        let runs = count_runs(Duration::ZERO, Duration::from_secs(150), Duration::from_secs(401)).await;
        // The first runs until 150 (slots 60 and 120 missed): one more at once, until 300 (slot
        // 180 and 240 missed): one more at once. Never two for one gap.
        assert_eq!(runs, [0, 150, 300]);
    }

    #[test]
    fn retention_never_removes_a_quarantine_snapshot_and_keeps_incomplete_ones_out_of_its_slots() {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::testing::repo(d.path());
        let plan = lifeboat_plan::Plan::parse(
            "p.yaml",
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {name: p}\nrepository: r\nsites:\n  a: {docker: \
             {address: 10.0.0.1}}\n  b: {docker: {address: 10.0.0.2}}\napps:\n  - {name: web, primary: a, standby: b, \
             backup: {every: 1m, keep: {last: 1}}}\n",
        )
        .unwrap();
        let tags = ["plan=p", "app=web", "site=a"];
        let snap = |age, extra: &[&str], errors| {
            let mut t = tags.to_vec();
            t.extend_from_slice(extra);
            crate::testing::snapshot(&repo, format!("{age}").as_bytes(), age, &t, errors)
        };
        let quarantined = snap(1000, &["quarantine"], 0);
        let split = snap(900, &["quarantine", "split-brain"], 0);
        let old = snap(300, &[], 0);
        let superseded = snap(250, &["incomplete"], 1);
        let newest = snap(200, &[], 0);
        let older_incomplete = snap(150, &["incomplete"], 1);
        let newest_incomplete = snap(100, &[], 2);
        let other_app = crate::testing::snapshot(&repo, b"x", 5000, &["plan=p", "app=other"], 0);
        let router = |_: &App| Ok(None);
        let log = |_: &str| {};
        let env = Env {
            plan: &plan,
            plan_dir: d.path().to_path_buf(),
            repo: &repo,
            connect: Arc::new(|_: &str, _: &App| {
                Err(OrchestratorError::Refused {
                    reason: "no sites".into(),
                })
            }),
            router: &router,
            log: &log,
            leadership: None,
        };
        let removed = apply_retention(&env, &plan.apps[0], Duration::ZERO).unwrap();
        let mut want = vec![old.short(), superseded.short(), older_incomplete.short()];
        want.sort();
        let mut got = removed.clone();
        got.sort();
        assert_eq!(got, want);
        let left: Vec<_> = repo.snapshots().unwrap().into_iter().map(|(id, _)| id).collect();
        for kept in [quarantined, split, newest, newest_incomplete, other_app] {
            assert!(left.contains(&kept), "{} was removed", kept.short());
        }
    }

    #[test]
    fn keep_maps_to_a_policy_and_no_keep_keeps_everything() {
        assert_eq!(policy(&Keep::default()), None);
        let p = policy(&Keep {
            hourly: Some(24),
            daily: Some(7),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((p.last, p.hourly, p.daily, p.weekly), (0, 24, 7, 0));
    }
}
