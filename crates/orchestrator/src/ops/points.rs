//! Which snapshots can be recovery points, newest first.
use std::time::Duration;

use lifeboat_repo::Repository;
use time::OffsetDateTime;

use crate::journal::RecoveryPoint;
use crate::OrchestratorError;

/// The newest complete snapshot of `app` in the repository (tags `plan=` and `app=`), leaving out
/// incomplete and quarantine snapshots: see [`recovery_points`].
pub fn latest_recovery_point(
    repo: &Repository,
    plan: &str,
    app: &str,
) -> Result<Option<RecoveryPoint>, OrchestratorError> {
    Ok(recovery_points(repo, plan, app, false)?.into_iter().next())
}

/// How far ahead of this host's clock a snapshot's time may be (clock differences between the
/// hosts that back up) before the time counts as wrong.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The snapshots of `app` that can be recovery points, newest first: tagged `plan=` and `app=`,
/// never a quarantine snapshot (it holds what a site had before it was overwritten), and only
/// complete ones unless `incomplete` (an operator's explicit choice). A snapshot dated more than
/// [`CLOCK_SKEW`] ahead of now (written by a host whose clock runs ahead) comes after all the
/// others: otherwise it would stay "newest" for as long as the clock was ahead.
pub fn recovery_points(
    repo: &Repository,
    plan: &str,
    app: &str,
    incomplete: bool,
) -> Result<Vec<RecoveryPoint>, OrchestratorError> {
    recovery_points_at(repo, plan, app, incomplete, OffsetDateTime::now_utc())
}

fn recovery_points_at(
    repo: &Repository,
    plan: &str,
    app: &str,
    incomplete: bool,
    now: OffsetDateTime,
) -> Result<Vec<RecoveryPoint>, OrchestratorError> {
    let (p, a) = (format!("plan={plan}"), format!("app={app}"));
    let mut snaps: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| {
            s.tags.contains(&p) && s.tags.contains(&a) && !s.is_quarantine() && (incomplete || s.is_complete())
        })
        .collect();
    let future = |t: OffsetDateTime| t > now + CLOCK_SKEW;
    snaps.sort_by(|x, y| {
        future(x.1.time)
            .cmp(&future(y.1.time))
            .then(y.1.time.cmp(&x.1.time))
            .then(y.0.cmp(&x.0))
    });
    Ok(snaps
        .into_iter()
        .map(|(id, s)| RecoveryPoint {
            snapshot: id,
            time: s.time,
            final_backup: s.tags.iter().any(|t| t.starts_with("op=")),
        })
        .collect())
}

/// How many recovery points a failover reads in full, newest first, before it gives up: each is
/// verified before the target is touched.
pub(super) const RECOVERY_POINTS_TRIED: usize = 5;

#[cfg(test)]
#[path = "points_tests.rs"]
mod tests;
