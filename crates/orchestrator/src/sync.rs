//! `sync PLAN`: keeps a hot standby's workload definitions in step with the active site.
//!
//! For each app, first: the side that is not active must run nothing. Workloads running there
//! (a primary that came back after a failover, its engine having restarted its containers) are
//! stopped and reported: this re-fences it, so a returning site never serves next to the active
//! one for longer than a sync round.
//!
//! Then, for each app with a hot standby: the definitions on the active site (the primary, or the
//! standby after a failover) are compared with those on the other side ([`drift`]); what is
//! missing or different there is created or replaced from the live definitions, at zero replicas
//! with nothing started, and reported. Volume data is left as it is (the next `backup --plan`
//! stages it); workloads that exist only on the standby are reported, never removed; secret
//! values cannot be read from a live engine, so a secret missing on the standby is reported as a
//! failure of the workload that needs it. A cold standby holds nothing until failover: beyond the
//! first check, nothing to sync. Guarantees: one sync, backup or operation on an app at a time (the
//! app's lock), and none while an operation is unfinished; the active side is never touched; a site
//! fenced because it could not be reached is only stopped, never given new definitions.
use std::collections::BTreeSet;
use std::time::Duration;

use lifeboat_plan::{Profile, StandbyMode};
use serde::Serialize;

use crate::ops::{app, hold_and_stop, standby, store, Env};
use crate::platform::{drift, Drift};
use crate::OrchestratorError;

/// What a sync did for one app.
#[derive(Debug, Serialize)]
pub struct SyncResult {
    pub app: String,
    /// The active site the definitions came from.
    pub from: String,
    /// The standby they were written to.
    pub to: String,
    /// Every difference found before correcting.
    pub drift: Vec<Drift>,
    /// What was created or replaced, one line per object (empty with `dry_run`).
    pub corrected: Vec<String>,
    /// Why nothing was done, when nothing was (cold standby, fenced site, dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Syncs each app of the plan (or `only`); with `dry_run` only reports the drift.
pub fn sync_plan(
    env: &Env,
    only: Option<&str>,
    dry_run: bool,
    lock_wait: Duration,
) -> Result<Vec<SyncResult>, OrchestratorError> {
    if let Some(a) = only {
        app(env.plan, a)?;
    }
    let mut out = Vec::new();
    for app in env.plan.apps.iter().filter(|a| only.is_none_or(|o| a.name.value == o)) {
        if app.profile != Profile::Dr {
            continue;
        }
        let st = store(env, app);
        let mut r = SyncResult {
            app: app.name.value.clone(),
            from: String::new(),
            to: String::new(),
            drift: Vec::new(),
            corrected: Vec::new(),
            note: None,
            error: None,
        };
        let result = (|| -> Result<(), OrchestratorError> {
            let sb = standby(app)?;
            let _lock = env.repo.lock_state(&st.dir(), "sync", lock_wait)?;
            let state = st.state()?;
            if let Some(op) = &state.running {
                return Err(OrchestratorError::Refused {
                    reason: format!("operation {op} is unfinished; finish it before syncing"),
                });
            }
            r.from = state.active.clone().unwrap_or_else(|| app.primary.value.clone());
            r.to = if r.from == app.primary.value {
                sb.to_string()
            } else {
                app.primary.value.clone()
            };
            let fenced_unreachable = state.fenced.iter().any(|f| f.site == r.to && f.unreachable);
            let target = match (env.connect)(&r.to, app) {
                Err(OrchestratorError::Unreachable { .. }) if fenced_unreachable => {
                    r.note = Some(format!("{} is fenced and still cannot be reached", r.to));
                    return Ok(());
                }
                t => t?,
            };
            // The side that is not active runs nothing: a primary that came back after a failover
            // (its engine restarted its containers) is fenced again.
            let running = target.running(None)?;
            if !running.is_empty() {
                r.drift
                    .extend(running.iter().map(|w| Drift::Running { object: w.clone() }));
                if !dry_run {
                    let mut state = state.clone();
                    for line in hold_and_stop(&st, &mut state, &*target, &r.to)? {
                        (env.log)(&format!("{}: fenced again on {}: {line}", app.name.value, r.to));
                        r.corrected.push(format!("fenced again: {line}"));
                    }
                }
            }
            if app.standby_mode == StandbyMode::Cold {
                r.note = Some("cold standby: nothing is deployed there until failover".into());
                return Ok(());
            }
            if fenced_unreachable {
                r.note = Some(format!(
                    "{} is fenced (unreachable at failover): its definitions are left alone",
                    r.to
                ));
                return Ok(());
            }
            let source = (env.connect)(&r.from, app)?;
            let defs = source.definitions()?;
            let here = target.definitions()?;
            r.drift.extend(drift(defs.essence(), here.essence()));
            let fix: BTreeSet<String> = r
                .drift
                .iter()
                .filter(|d| matches!(d, Drift::Missing { .. } | Drift::Differs { .. }))
                .map(|d| d.object().to_string())
                .collect();
            if dry_run {
                r.note = Some("dry run: nothing changed".into());
            } else if !fix.is_empty() {
                r.corrected = target.apply_definitions(env.repo, defs, &here, &fix)?;
                for line in &r.corrected {
                    (env.log)(&format!("{}: {} on {}", app.name.value, line, r.to));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            r.error = Some(e.to_string());
        }
        out.push(r);
    }
    Ok(out)
}
