//! What a failover or failback checks before the side being left is fenced.
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::App;

use super::points::latest_recovery_point;
use super::{Env, Options};
use crate::journal::Kind;
use crate::platform::Platform;
use crate::OrchestratorError;

/// The longest wait for the repository's shared lock before a failover or failback fences
/// anything (a prune holds it exclusively for as long as it runs).
pub const PREFLIGHT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// What the preflight found.
pub(super) struct Preflight {
    /// The side being left, or why it cannot be used (the fence step decides what that means).
    pub(super) source: Result<Arc<dyn Platform>, OrchestratorError>,
    /// The side taking over.
    pub(super) target: Arc<dyn Platform>,
    pub(super) lines: Vec<String>,
}

/// Everything that can be checked before the side being left is fenced: the side taking over
/// answers, and the recovery point can be read when no final backup will be taken (the side
/// being left cannot be used, or final backups are off). (The repository lock is taken by the
/// caller.) A failure changes nothing.
pub(super) fn preflight(
    env: &Env,
    app: &App,
    kind: Kind,
    from: &str,
    to: &str,
    opts: &Options,
) -> Result<Preflight, OrchestratorError> {
    let nothing_done = |what: String| OrchestratorError::Refused {
        reason: format!(
            "{what}: the {} cannot finish, so nothing was fenced or changed ({from} is left as it is)",
            kind.as_str()
        ),
    };
    let mut lines = vec!["repository lockable".to_string()];
    let target = (env.connect)(to, app)
        .map_err(|e| nothing_done(format!("{to}, which is to take over, cannot be used: {e}")))?;
    lines.push(format!("{to} answers"));
    let source = (env.connect)(from, app);
    match &source {
        Ok(_) => lines.push(format!("{from} answers")),
        Err(e) => lines.push(format!("{from} cannot be used ({e})")),
    }
    if let Ok(source) = &source {
        lines.push(fits(source.as_ref(), target.as_ref(), from, to, opts.ignore_capacity).map_err(nothing_done)?);
    }
    if source.is_err() || !opts.final_backup {
        let plan = &env.plan.metadata.name;
        let rp = latest_recovery_point(env.repo, plan, &app.name.value)?
            .ok_or_else(|| nothing_done(format!("app {} has no backup to recover from", app.name.value)))?;
        let (_, snap) = env
            .repo
            .find_snapshot(&rp.snapshot.to_hex())
            .map_err(|e| nothing_done(format!("recovery point {} cannot be read: {e}", rp.snapshot.short())))?;
        env.repo
            .load_tree(&snap.tree)
            .map_err(|e| nothing_done(format!("recovery point {} cannot be read: {e}", rp.snapshot.short())))?;
        lines.push(format!("recovery point {} readable", rp.snapshot.short()));
    }
    Ok(Preflight { source, target, lines })
}

/// Whether `target` has the CPUs and memory that the app's workloads on `source` ask for: the
/// preflight's line, or why it does not fit (unless `ignore` says to go on). Workloads that ask
/// for nothing cannot be judged and pass with a line saying so; a site that cannot tell its
/// capacity passes with the reason (the fit is unknown, not failed).
pub(super) fn fits(
    source: &dyn Platform,
    target: &dyn Platform,
    from: &str,
    to: &str,
    ignore: bool,
) -> Result<String, String> {
    let workloads = match source.workloads() {
        Ok(w) => w,
        Err(e) => {
            return Ok(format!(
                "fit on {to} unknown: the workloads of {from} cannot be listed ({e})"
            ))
        }
    };
    let cpus: f64 = workloads.iter().map(|w| w.cpus).sum();
    let memory: u64 = workloads.iter().map(|w| w.memory).sum();
    if cpus == 0.0 && memory == 0 {
        return Ok(format!(
            "fit on {to} not judged (no workload sets CPU or memory requests or limits)"
        ));
    }
    let (have_cpus, have_memory) = match target.capacity() {
        Ok(c) => c,
        Err(e) => return Ok(format!("fit on {to} unknown: its capacity cannot be read ({e})")),
    };
    let need = format!("{cpus:.2} CPUs and {} MiB", memory >> 20);
    let have = format!("{have_cpus:.2} CPUs and {} MiB", have_memory >> 20);
    if cpus <= have_cpus && memory <= have_memory {
        Ok(format!("{to} fits the app ({need} of {have})"))
    } else if ignore {
        Ok(format!(
            "{to} does not fit the app ({need} asked for, {have} there): going on, --ignore-capacity"
        ))
    } else {
        Err(format!(
            "{to} does not fit the app: its workloads ask for {need}, {to} has {have} \
             (free capacity there, or run again with --ignore-capacity to start it degraded)"
        ))
    }
}
