//! DR plans carried out: backups by plan, journaled failover and failback, the health watch with
//! its hysteresis and witness, drills with their reports, runbooks and the preflight check.
//!
//! Guarantees: every failover, failback and drill step is journaled in the repository before and
//! after it runs, so a crash at any point is resumed by running the same command again, without
//! repeating a step that finished ([`ops`]); two operations on one app never run at once (a lock
//! per app in the repository); a fence is positive or the failover stops: a primary that cannot
//! be reached is fenced only on evidence (the witness agrees, or the operator's
//! `--fenced-by-hand`), and is then never started by Lifeboat on its own. Assumes: the
//! repository is shared by every Lifeboat process that acts on the plan. Platforms: Docker
//! engines (and Swarm) and Kubernetes clusters, behind [`platform::Platform`]; the long-running
//! loops that drive these operations (schedule, sync rounds, watch, witness) are in
//! `lifeboat-server`.
#![forbid(unsafe_code)]

pub mod check;
pub mod drills;
pub mod hooks;
pub mod journal;
pub mod leadership;
pub mod ops;
pub mod platform;
pub mod probe;
pub mod records;
pub mod report;
pub mod runbook;
pub mod schedule;
pub mod status;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod verify;
pub mod watch;

use std::time::Duration;

pub use lifeboat_model::reach::AccessProblem;

/// The cause of a site's error as the adapter gave it (its own error type, or a line).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Errors of DR operations. Each names the app, site or step concerned.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The plan has no such app.
    #[error("plan {plan} has no app {app:?} (apps: {})", known.join(", "))]
    NoApp {
        plan: String,
        app: String,
        known: Vec<String>,
    },
    /// The app's profile is not `dr` (or it has no standby): it cannot fail over.
    #[error("app {app} has no standby (profile dr with a standby site is needed to fail over)")]
    NotDr { app: String },
    /// A site could not be reached: refused, no route, or no answer after several tries. Says
    /// nothing about whether its workloads still run. Retrying makes sense once it is reachable.
    #[error("site {site} cannot be reached: {source}")]
    Unreachable {
        site: String,
        /// What the adapter saw (refused, no route, no answer).
        #[source]
        source: Cause,
    },
    /// A site's endpoint could not be used although it may be up: configuration, credentials,
    /// TLS or an error answer ([`AccessProblem`]). Never taken for "down".
    #[error("site {site}: {problem}: {source}")]
    Access {
        site: String,
        problem: AccessProblem,
        #[source]
        source: Cause,
    },
    /// A site answered, but refused or failed an action.
    #[error("site {site}: {source}")]
    Site {
        site: String,
        /// The adapter's class of the failure (a refused request needs a fix; an engine that failed
        /// in passing may not).
        retry: Retry,
        #[source]
        source: Cause,
    },
    /// This kind of site cannot do this yet.
    #[error("site {site}: {what} is not supported yet")]
    Unsupported { site: String, what: String },
    /// The repository failed (this includes "locked": another operation on the app is running).
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::RepoError),
    /// A journal or state file is damaged.
    #[error("{path}: {reason}")]
    Journal { path: String, reason: String },
    /// There is no snapshot of the app to recover from.
    #[error("app {app} has no backup in the repository (run `lifeboat backup --plan PLAN --app {app}` first)")]
    NoRecoveryPoint { app: String },
    /// A blob of a recovery point is missing or damaged: restoring it would stop half way.
    /// Nothing was written with it.
    #[error("recovery point {snapshot} cannot be restored: {path}: {source}")]
    Damaged {
        snapshot: String,
        /// Where in the snapshot the blob is used.
        path: String,
        #[source]
        source: Box<lifeboat_repo::RepoError>,
    },
    /// The recovered app did not pass its health probes in time. Traffic was not switched.
    #[error("app {app} at {address} was not healthy within {waited:?}; last failure: {last}")]
    Unhealthy {
        app: String,
        address: String,
        waited: Duration,
        last: String,
    },
    /// Switching traffic failed (or its router cannot be built); the message says where traffic
    /// is.
    #[error("app {app}: traffic switch failed: {source}")]
    Traffic {
        app: String,
        #[source]
        source: Box<lifeboat_traffic::TrafficError>,
    },
    /// Verification checks failed after the switch.
    #[error("app {app}: verification failed: {}", failures.join("; "))]
    Verify { app: String, failures: Vec<String> },
    /// A plan hook failed and its policy is `fail`. Not retried: fix the hook or its container.
    #[error("app {app}: {phase} hook in container {container} on {site} failed: {reason}")]
    Hook {
        app: String,
        phase: &'static str,
        site: String,
        container: String,
        reason: String,
    },
    /// This process is no longer the leader of the plan's instances (another was elected since
    /// `term`): it did nothing more. Not retried here: the leader carries on.
    #[error("not the leader any more (term {term}): {reason}; nothing more was done here")]
    Deposed { term: i64, reason: String },
    /// The operation cannot go on as asked; nothing further was changed.
    #[error("{reason}")]
    Refused { reason: String },
    /// A step failed; the operation stays open and the same command resumes it from that step.
    #[error("{kind} of {app} stopped at step {step} (operation {id}): {cause}\n(fix the cause and run the same command again: it resumes from this step)")]
    Step {
        kind: &'static str,
        app: String,
        step: String,
        id: String,
        /// Why the step failed; its [`OrchestratorError::retry`] is the step's.
        #[source]
        cause: Box<OrchestratorError>,
    },
}

pub use lifeboat_model::Retry;

impl OrchestratorError {
    /// Whether running the same command again may succeed without a change: a site that cannot
    /// be reached, a site's failed action, an app not healthy yet, a repository lock held or a
    /// passing store error, a traffic server's passing failure are [`Retry::Later`]; a wrong
    /// plan, credential or TLS setting, a failed hook or verification, damaged data, a refusal
    /// need a fix first ([`Retry::AfterFix`]). A failed step has its cause's class.
    pub fn retry(&self) -> Retry {
        match self {
            OrchestratorError::Unreachable { .. } | OrchestratorError::Unhealthy { .. } => Retry::Later,
            OrchestratorError::Site { retry, .. } => *retry,
            OrchestratorError::Repo(e) => e.retry(),
            OrchestratorError::Traffic { source, .. } => source.retry(),
            OrchestratorError::Step { cause, .. } => cause.retry(),
            OrchestratorError::NoApp { .. }
            | OrchestratorError::NotDr { .. }
            | OrchestratorError::Access { .. }
            | OrchestratorError::Unsupported { .. }
            | OrchestratorError::Journal { .. }
            | OrchestratorError::NoRecoveryPoint { .. }
            | OrchestratorError::Damaged { .. }
            | OrchestratorError::Verify { .. }
            | OrchestratorError::Hook { .. }
            | OrchestratorError::Refused { .. }
            | OrchestratorError::Deposed { .. } => Retry::AfterFix,
        }
    }
}
