//! Failover, failback and drills as journaled state machines, and backups by plan.
//!
//! Every step is journaled before it starts and after it ends (see [`crate::journal`]). A step
//! that finished is never run again; the step a crash interrupted is run again, which is safe
//! because each step is idempotent: stopping what is stopped, restoring over what exists,
//! starting what runs, pointing traffic where it points. The one step that adds something, the
//! final backup, looks for a snapshot tagged with the operation's id before taking another.
//!
//! The files: [`runner`] journals the steps of one operation; [`switch`] is the failover and
//! failback (fence, final backup, quarantine, data, start, health, hooks, traffic, verify), with
//! [`preflight`] (what is checked before anything is fenced) and [`fence`] (what counts as
//! evidence that a site is off); [`drill`] recovers an isolated copy; [`backup`] backs up by plan
//! and stages hot standbys; [`points`] picks recovery points; [`steps`] holds the probe steps
//! shared by operations and drills.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::{App, Plan, Profile};
use lifeboat_repo::Repository;
use lifeboat_traffic::Router;
use time::OffsetDateTime;

use crate::journal::{Operation, Store};
use crate::leadership::Leadership;
use crate::platform::Connector;
use crate::OrchestratorError;

mod backup;
mod drill;
mod fence;
mod points;
mod preflight;
mod runner;
mod steps;
mod switch;

pub use crate::journal::{DRILL_STEPS, FAILOVER_STEPS};
pub use backup::{backup_plan, PlanBackup};
pub use drill::drill;
pub(crate) use fence::hold_and_stop;
pub use fence::self_fence;
pub use points::{latest_recovery_point, recovery_points, CLOCK_SKEW};
pub use preflight::PREFLIGHT_LOCK_WAIT;
pub use switch::{switch_over, PREEMPT_WAIT};

/// Environment variable for fault-injection tests: the process kills itself with SIGKILL right
/// after the named step is journaled as finished (`fence`, `data`, ...). Only in builds with the
/// `fault-injection` feature (the lab tests turn it on); a release build has no such hook.
#[cfg(feature = "fault-injection")]
pub const FAULT_ENV: &str = "LIFEBOAT_FAULT_KILL_AFTER";

/// Builds an app's traffic router (`None`: the app has no traffic section).
pub type RouterFn<'a> = dyn Fn(&App) -> Result<Option<Box<dyn Router>>, OrchestratorError> + Sync + 'a;

/// What an operation needs from its caller.
pub struct Env<'a> {
    pub plan: &'a Plan,
    /// The plan file's directory: relative key and secret files are found from there.
    pub plan_dir: PathBuf,
    pub repo: &'a Repository,
    pub connect: Arc<Connector>,
    /// Builds the app's traffic router (`None`: the app has no traffic section).
    pub router: &'a RouterFn<'a>,
    /// Called with one line per event (step started, finished).
    pub log: &'a (dyn Fn(&str) + Sync),
    /// The leadership this process acts under when several instances run the plan: checked
    /// before every side effect (see [`crate::leadership`]). `None`: a single process.
    pub leadership: Option<Arc<dyn Leadership>>,
}

impl Env<'_> {
    /// The term to act under: `None` for a single process; [`OrchestratorError::Deposed`] when
    /// this process no longer leads.
    pub fn term(&self) -> Result<Option<i64>, OrchestratorError> {
        self.leadership.as_ref().map(|l| l.check()).transpose()
    }
}

/// How to run an operation.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest wait for the recovered app to pass its health probes.
    pub health_timeout: Duration,
    /// When the need arose; default: now.
    pub trigger: Option<OffsetDateTime>,
    /// When `watch` decided, if it did.
    pub detected: Option<OffsetDateTime>,
    /// `manual`, `health`, ...
    pub reason: String,
    /// Take a last backup of the side being left when it can be reached (after fencing, so
    /// nothing is lost). Off: recover from the latest scheduled backup.
    pub final_backup: bool,
    /// Go on although data may be lost: on failback, when the active site cannot be reached
    /// (what was written there since the last backup is lost); on failover and failback, when the
    /// site taken over may hold writes no snapshot has and cannot be read for its quarantine
    /// snapshot.
    pub accept_data_loss: bool,
    /// Accept an incomplete snapshot (one listing items that could not be backed up) as the
    /// recovery point: the final backup when it is incomplete, else the newest snapshot whether
    /// complete or not.
    pub accept_incomplete: bool,
    /// Drill only: the site to recover on (default: the app's `drill.site`, else the standby).
    pub drill_site: Option<String>,
    /// The operator's word that the site being left is off (`--fenced-by-hand SITE`): the fence
    /// step goes on when Lifeboat cannot stop that site itself.
    pub fenced_by_hand: Option<ManualFence>,
    /// Go on although the site taking over has fewer CPUs or less memory than the app's workloads
    /// ask for (it then runs degraded, or some of them stay pending).
    pub ignore_capacity: bool,
    /// The longest wait for the repository's shared lock before a failover or failback fences
    /// anything (default [`PREFLIGHT_LOCK_WAIT`]; a prune holds it exclusively while it runs).
    pub repo_lock_wait: Duration,
}

/// An operator's acknowledgment that a site is fenced (the `fence_ack_manual` of Lifeboat).
#[derive(Debug, Clone, PartialEq)]
pub struct ManualFence {
    /// The site the operator made sure is off.
    pub site: String,
    /// Who says so (user and host), for the journal.
    pub by: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            health_timeout: Duration::from_secs(300),
            trigger: None,
            detected: None,
            reason: "manual".into(),
            final_backup: true,
            accept_data_loss: false,
            accept_incomplete: false,
            drill_site: None,
            fenced_by_hand: None,
            ignore_capacity: false,
            repo_lock_wait: PREFLIGHT_LOCK_WAIT,
        }
    }
}

/// What a failover or failback call did.
#[derive(Debug)]
pub enum Outcome {
    /// The app already runs where it was to go; nothing was done.
    AlreadyThere { site: String, last: Option<String> },
    /// The operation ran (or was resumed) to its end.
    Done(Box<Operation>),
}

pub(crate) fn app<'p>(plan: &'p Plan, name: &str) -> Result<&'p App, OrchestratorError> {
    plan.app(name).ok_or_else(|| OrchestratorError::NoApp {
        plan: plan.metadata.name.clone(),
        app: name.to_string(),
        known: plan.apps.iter().map(|a| a.name.value.clone()).collect(),
    })
}

pub(crate) fn standby(app: &App) -> Result<&str, OrchestratorError> {
    match (&app.profile, &app.standby) {
        (Profile::Dr, Some(s)) => Ok(&s.value),
        _ => Err(OrchestratorError::NotDr {
            app: app.name.value.clone(),
        }),
    }
}

pub(crate) fn store<'a>(env: &Env<'a>, app: &App) -> Store<'a> {
    Store {
        repo: env.repo,
        plan: env.plan.metadata.name.clone(),
        app: app.name.value.clone(),
    }
}

/// The tags of a snapshot of `app` on `site`.
fn tags(plan: &str, app: &str, site: &str) -> Vec<String> {
    vec![format!("plan={plan}"), format!("app={app}"), format!("site={site}")]
}

/// Step details joined, without the empty ones.
fn join_notes(notes: &[String]) -> String {
    notes
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("; ")
}

/// The address `{site}` stands for on `site`.
pub fn site_address(plan: &Plan, site: &str) -> Result<String, OrchestratorError> {
    plan.sites
        .get(site)
        .and_then(|s| s.address())
        .ok_or_else(|| OrchestratorError::Refused {
            reason: format!("site {site} has no address for probes (sites.{site}.address)"),
        })
}

fn summary(head: &str, changes: &[String]) -> String {
    if changes.is_empty() {
        format!("{head}: nothing of the app found there")
    } else {
        format!("{head}: {}", changes.join("; "))
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod tests;
