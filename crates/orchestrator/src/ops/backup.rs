//! Backups by plan, and staging a snapshot on a hot standby.
use std::time::Duration;

use lifeboat_model::Id;
use lifeboat_plan::{Profile, StandbyMode};
use lifeboat_repo::Repository;

use super::{app, standby, store, tags, Env};
use crate::journal::{AppState, Staged, Store};
use crate::platform::Platform;
use crate::records::{self, BackupAttempt};
use crate::{hooks, verify, OrchestratorError};
use time::OffsetDateTime;

/// The result of backing up one app by plan.
#[derive(Debug, serde::Serialize)]
pub struct PlanBackup {
    pub app: String,
    pub site: String,
    pub snapshot: Option<String>,
    /// For a hot standby: where the data was staged, or why not.
    pub staged: Option<String>,
    /// One line per plan hook run (`pre_backup`, `post_backup`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    pub error: Option<String>,
}

/// Backs up each app of the plan (or `only`) from its active site; for a hot standby, then
/// stages the snapshot on the standby (workloads created stopped, volume data written). Each
/// app's attempt is recorded in the repository ([`crate::records`]) as started `by` (`cli`,
/// `schedule`, `api:NAME`); one that fails to record is told in the item's error.
pub fn backup_plan(
    env: &Env,
    only: Option<&str>,
    lock_wait: Duration,
    by: &str,
) -> Result<Vec<PlanBackup>, OrchestratorError> {
    if let Some(a) = only {
        app(env.plan, a)?;
    }
    let mut out = Vec::new();
    for app in env.plan.apps.iter().filter(|a| only.is_none_or(|o| a.name.value == o)) {
        let st = store(env, app);
        let active = st.state()?.active.unwrap_or_else(|| app.primary.value.clone());
        let mut item = PlanBackup {
            app: app.name.value.clone(),
            site: active.clone(),
            snapshot: None,
            staged: None,
            hooks: Vec::new(),
            error: None,
        };
        let started = OffsetDateTime::now_utc();
        let clock = std::time::Instant::now();
        let result = (|| -> Result<(), OrchestratorError> {
            // Only the leader backs up (the others would take the same backup again).
            env.term()?;
            let _lock = env.repo.lock_state(&st.dir(), "backup --plan", lock_wait)?;
            let mut state = st.state()?;
            if let Some(r) = &state.running {
                return Err(OrchestratorError::Refused {
                    reason: format!("operation {r} is unfinished; finish it before backing up by plan"),
                });
            }
            // A failover or failback of the app waits for this lock: it goes first.
            if let Some(p) = st.preempted() {
                return Err(OrchestratorError::Refused {
                    reason: format!("not backed up: a {} of the app is waiting, and goes first", p.by),
                });
            }
            let p = (env.connect)(&active, app)?;
            // The post hooks run whatever happened after the pre hooks began (they undo them).
            let pre = hooks::run(&*p, app, &active, "pre_backup", &app.hooks.pre_backup, "");
            let backup = match &pre {
                Ok(_) => Some(p.backup(env.repo, tags(&env.plan.metadata.name, &app.name.value, &active))),
                Err(_) => None,
            };
            let post = hooks::run(&*p, app, &active, "post_backup", &app.hooks.post_backup, "");
            item.hooks.extend(pre?);
            let (id, _) = backup.expect("ran when the pre hooks passed")?;
            item.hooks.extend(post?);
            (env.log)(&format!("{}: snapshot {} of {active}", app.name.value, id.short()));
            item.snapshot = Some(id.to_hex());
            if app.profile == Profile::Dr && app.standby_mode == StandbyMode::Hot {
                let other = if active == app.primary.value {
                    standby(app)?.to_string()
                } else {
                    app.primary.value.clone()
                };
                if state.fenced.iter().any(|f| f.site == other && f.unreachable) {
                    item.staged = Some(format!("not staged: {other} is fenced (unreachable at failover)"));
                    return Ok(());
                }
                // Staging can take as long as the backup: a failover that now waits goes first
                // (it stages what it needs itself).
                if let Some(p) = st.preempted() {
                    item.staged = Some(format!("not staged: a {} of the app is waiting, and goes first", p.by));
                    return Ok(());
                }
                let t = (env.connect)(&other, app)?;
                // Never over a standby that runs the app: it may have writes of its own.
                let running = t.running(None)?;
                if !running.is_empty() {
                    return Err(OrchestratorError::Refused {
                        reason: format!(
                            "snapshot {} not staged: the app runs on the standby {other} ({}), which may hold writes \
                             of its own; stop it there (`lifeboat sync` fences it again) or fail over to it",
                            id.short(),
                            running.join(", ")
                        ),
                    });
                }
                // Read whole before the standby is touched: a damaged snapshot leaves the staged
                // copy (and its record) as they are.
                verify::recovery_point(env.repo, &id).map_err(|e| OrchestratorError::Refused {
                    reason: format!(
                        "not staged on {other}, which keeps{}: {e}",
                        match &state.staged {
                            Some(s) if s.site == other => format!(" snapshot {}", s.snapshot.short()),
                            _ => " what it had".into(),
                        }
                    ),
                })?;
                // A stage overwrites the standby: only the leader does it.
                env.term()?;
                let done = stage_on(&st, &mut state, &*t, env.repo, &other, &id)?;
                item.staged = Some(format!("{other}: {done}"));
            }
            Ok(())
        })();
        // A follower's refusal is no attempt: the leader backs up.
        let deposed = matches!(result, Err(OrchestratorError::Deposed { .. }));
        if let Err(e) = result {
            item.error = Some(e.to_string());
        }
        if !deposed {
            let bytes_added = item
                .snapshot
                .as_deref()
                .and_then(|h| h.parse::<Id>().ok())
                .and_then(|id| env.repo.load_snapshot(&id).ok())
                .map_or(0, |s| s.summary.bytes_added);
            let attempt = BackupAttempt {
                started,
                seconds: clock.elapsed().as_secs_f64(),
                site: active.clone(),
                snapshot: item.snapshot.clone(),
                bytes_added,
                error: item.snapshot.is_none().then(|| item.error.clone()).flatten(),
                by: by.to_string(),
            };
            if let Err(e) = records::record_attempt(env.repo, &env.plan.metadata.name, &app.name.value, &attempt) {
                let line = format!("the attempt was not recorded: {e}");
                item.error = Some(match item.error.take() {
                    Some(err) => format!("{err}; {line}"),
                    None => line,
                });
            }
        }
        out.push(item);
    }
    Ok(out)
}

/// Stages `snapshot` on `site` (production names) and records it in `state`. What the site holds
/// now is passed on as the base when `state` knows it (only what changed since is written); the
/// record is cleared while the stage runs, so an interrupted stage is never taken as a base.
pub(super) fn stage_on(
    st: &Store,
    state: &mut AppState,
    platform: &dyn Platform,
    repo: &Repository,
    site: &str,
    snapshot: &Id,
) -> Result<String, OrchestratorError> {
    let base = state
        .staged
        .take()
        .filter(|s| s.site == site)
        .map(|s| s.snapshot.to_hex());
    if base.is_some() {
        st.save_state(state)?;
    }
    let done = platform.stage(repo, &snapshot.to_hex(), "", base.as_deref())?;
    state.staged = Some(Staged {
        site: site.to_string(),
        snapshot: *snapshot,
    });
    st.save_state(state)?;
    Ok(done)
}
