//! Drills: the app recovered into an isolated copy on a site, checked, measured and removed.
use std::time::Duration;

use time::OffsetDateTime;

use super::points::latest_recovery_point;
use super::runner::Runner;
use super::steps::{verify_step, wait_healthy};
use super::{app, site_address, standby, store, summary, Env, Options};
use crate::journal::{new_id, new_prefix, Kind, OpStatus, Operation, Step, StepOutcome};
use crate::{verify, OrchestratorError};

/// Recovers `app` into an isolated copy (names prefixed `drill-ID-`) on the drill site (default:
/// `drill.site`, else the standby), checks it, measures RTO and RPO, and removes the copy. Never touches the
/// primary, the production workloads of the drill site, or traffic.
pub fn drill(env: &Env, app_name: &str, opts: &Options) -> Result<Operation, OrchestratorError> {
    let app = app(env.plan, app_name)?;
    let site = match (&opts.drill_site, &app.drill.site) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s.value.clone(),
        (None, None) => standby(app)?.to_string(),
    };
    if !env.plan.sites.contains_key(&site) {
        return Err(OrchestratorError::Refused {
            reason: format!("no site {site:?} in the plan"),
        });
    }
    let st = store(env, app);
    let _lock = env.repo.lock_state(&st.dir(), "drill", Duration::ZERO)?;
    let platform = (env.connect)(&site, app)?;
    let running = platform.running(None)?;
    if !running.is_empty() {
        return Err(OrchestratorError::Refused {
            reason: format!(
                "the app runs on {site} ({}): a drill there would compete with production; drill on another site with --site",
                running.join(", ")
            ),
        });
    }
    // A drill is not resumed after a crash (its copy is removed by the next drill's prefix
    // cleanup or by hand); it never changes the app's state.
    let now = OffsetDateTime::now_utc();
    let id = format!("{}-drill", new_id(now));
    let op = Operation {
        prefix: Some(new_prefix(&id)),
        id,
        plan: env.plan.metadata.name.clone(),
        app: app.name.value.clone(),
        kind: Kind::Drill,
        from: site.clone(),
        to: site.clone(),
        trigger: opts.trigger.unwrap_or(now),
        reason: "drill".into(),
        detected: None,
        recovery_point: None,
        steps: Vec::new(),
        status: OpStatus::Running,
        error: None,
        resumed: 0,
    };
    st.save_operation(&op)?;
    let mut run = Runner { env, store: st, op };
    let prefix = run.op.copy_prefix();
    let address = site_address(env.plan, &site)?;
    let result = (|| {
        run.step(Step::Data, |op| {
            let rp = latest_recovery_point(env.repo, &op.plan, &op.app)?
                .ok_or_else(|| OrchestratorError::NoRecoveryPoint { app: op.app.clone() })?;
            // A drill proves the newest recovery point: a damaged one fails it.
            let v = verify::recovery_point(env.repo, &rp.snapshot)?;
            let done = platform.stage(env.repo, &rp.snapshot.to_hex(), &prefix, None)?;
            op.recovery_point = Some(rp);
            Ok((
                StepOutcome::Done,
                format!(
                    "snapshot verified ({} blobs, {} bytes read); {done} under the prefix {prefix}",
                    v.blobs, v.bytes
                ),
            ))
        })?;
        run.step(Step::Start, |_| {
            let changes = platform.start(Some(&prefix))?;
            Ok((StepOutcome::Done, summary("drill copy started", &changes)))
        })?;
        run.step(Step::Health, |_| wait_healthy(app, &address, opts.health_timeout))?;
        run.post_restore_hooks(app, &site, &prefix, || Ok(platform.clone()))?;
        run.step(Step::Verify, |_| verify_step(app, &address))
    })();
    // Tear down whatever happened.
    let teardown = run.step(Step::Teardown, |_| {
        let removed = platform.remove(&prefix)?;
        Ok((StepOutcome::Done, format!("{} objects removed", removed.len())))
    });
    let mut op = run.op;
    op.status = if result.is_ok() && teardown.is_ok() {
        OpStatus::Done
    } else {
        OpStatus::Failed
    };
    if let Err(e) = result.and(teardown) {
        op.error = Some(e.to_string());
    }
    run.store.save_operation(&op)?;
    // The reports past `drill.keep`; a failure to remove them fails nothing.
    match crate::drills::prune(env.repo, env.plan, app) {
        Ok(gone) if !gone.is_empty() => {
            (env.log)(&format!("drill reports past drill.keep removed: {}", gone.join(", ")))
        }
        Ok(_) => {}
        Err(e) => (env.log)(&format!("old drill reports not removed: {e}")),
    }
    Ok(op)
}
