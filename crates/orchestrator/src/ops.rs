//! Failover, failback and drills as journaled state machines, and backups by plan.
//!
//! Every step is journaled before it starts and after it ends (see [`crate::journal`]). A step
//! that finished is never run again; the step a crash interrupted is run again, which is safe
//! because each step is idempotent: stopping what is stopped, restoring over what exists,
//! starting what runs, pointing traffic where it points. The one step that adds something, the
//! final backup, looks for a snapshot tagged with the operation's id before taking another.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_model::{Id, QUARANTINE_TAG, SPLIT_BRAIN_TAG};
use lifeboat_plan::{App, Plan, Profile, StandbyMode};
use lifeboat_repo::{RepoError, Repository};
use lifeboat_traffic::{Router, Side, SwitchContext};
use time::OffsetDateTime;

use crate::hooks;
use crate::journal::{
    new_id, new_prefix, AppState, Fence, FencedBy, Kind, OpStatus, Operation, RecoveryPoint, Staged, Step, StepOutcome,
    StepRecord, Store,
};
use crate::platform::{Connector, Platform};
use crate::{probe, verify, OrchestratorError};

pub use crate::journal::{DRILL_STEPS, FAILOVER_STEPS};

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
    /// Drill only: the site to recover on (default: the standby).
    pub drill_site: Option<String>,
    /// The operator's word that the site being left is off (`--fenced-by-hand SITE`): the fence
    /// step goes on when Lifeboat cannot stop that site itself.
    pub fenced_by_hand: Option<ManualFence>,
    /// Go on although the site taking over has fewer CPUs or less memory than the app's workloads
    /// ask for (it then runs degraded, or some of them stay pending).
    pub ignore_capacity: bool,
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
const RECOVERY_POINTS_TRIED: usize = 5;

fn tags(plan: &str, app: &str, site: &str) -> Vec<String> {
    vec![format!("plan={plan}"), format!("app={app}"), format!("site={site}")]
}

/// Runs steps of `op`, journaling each.
struct Runner<'a, 'e> {
    env: &'a Env<'e>,
    store: Store<'e>,
    op: Operation,
}

/// How a step finished: its outcome, a line for people, and the facts later steps read.
struct Finished {
    outcome: StepOutcome,
    detail: String,
    fenced_by: Option<FencedBy>,
}

impl From<(StepOutcome, String)> for Finished {
    fn from((outcome, detail): (StepOutcome, String)) -> Finished {
        Finished {
            outcome,
            detail,
            fenced_by: None,
        }
    }
}

/// A fence step that finished: `by` established that the site is off.
fn fenced(by: FencedBy, detail: String) -> Finished {
    Finished {
        outcome: StepOutcome::Done,
        detail,
        fenced_by: Some(by),
    }
}

impl Runner<'_, '_> {
    fn step<R: Into<Finished>>(
        &mut self,
        name: Step,
        f: impl FnOnce(&mut Operation) -> Result<R, OrchestratorError>,
    ) -> Result<(), OrchestratorError> {
        if let Some(done) = self.op.finished(name) {
            (self.env.log)(&format!("{name}: finished before ({}), not repeated", done.outcome));
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        match self.op.steps.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.attempts += 1;
                s.started = now;
            }
            None => self.op.steps.push(StepRecord {
                name,
                started: now,
                finished: None,
                outcome: StepOutcome::Pending,
                detail: String::new(),
                attempts: 1,
                fenced_by: None,
            }),
        }
        self.store.save_operation(&self.op)?;
        (self.env.log)(&format!("{name}: started"));
        let result = f(&mut self.op).map(Into::into);
        let rec = self.op.steps.iter_mut().find(|s| s.name == name).expect("pushed above");
        match result {
            Ok(Finished {
                outcome,
                detail,
                fenced_by,
            }) => {
                rec.finished = Some(OffsetDateTime::now_utc());
                rec.outcome = outcome;
                rec.detail = detail;
                rec.fenced_by = fenced_by;
                (self.env.log)(&format!("{name}: {outcome}: {}", rec.detail));
                self.store.save_operation(&self.op)?;
                #[cfg(feature = "fault-injection")]
                if std::env::var(FAULT_ENV).is_ok_and(|v| v == name.to_string()) {
                    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
                }
                Ok(())
            }
            Err(e) => {
                rec.outcome = StepOutcome::Failed;
                rec.detail = e.to_string();
                self.op.error = Some(format!("{name}: {e}"));
                self.store.save_operation(&self.op)?;
                Err(OrchestratorError::Step {
                    kind: self.op.kind.as_str(),
                    app: self.op.app.clone(),
                    step: name.to_string(),
                    id: self.op.id.clone(),
                    cause: Box::new(e),
                })
            }
        }
    }
}

impl Runner<'_, '_> {
    /// The app's `post_restore` hooks on `site` (container names prefixed by `prefix`), each its
    /// own journaled step `hook N`: a resume runs again only the hook that was under way when the
    /// process died, never one that finished.
    fn post_restore_hooks(
        &mut self,
        app: &App,
        site: &str,
        prefix: &str,
        platform: impl Fn() -> Result<Arc<dyn Platform>, OrchestratorError>,
    ) -> Result<(), OrchestratorError> {
        for (i, hook) in app.hooks.post_restore.iter().enumerate() {
            self.step(Step::Hook(i as u32 + 1), |_| {
                let lines = hooks::run(
                    &*platform()?,
                    app,
                    site,
                    "post_restore",
                    std::slice::from_ref(hook),
                    prefix,
                )?;
                Ok((StepOutcome::Done, lines.join("; ")))
            })?;
        }
        Ok(())
    }
}

/// Begins or resumes an operation of `kind` on `app`, from `from` to `to`.
fn begin<'a, 'e>(
    env: &'a Env<'e>,
    app: &App,
    kind: Kind,
    from: &str,
    to: &str,
    opts: &Options,
    state: &mut AppState,
) -> Result<Runner<'a, 'e>, OrchestratorError> {
    let store = store(env, app);
    if let Some(id) = state.running.clone() {
        let op = store.operation(&id)?.ok_or_else(|| OrchestratorError::Journal {
            path: format!("dr/{}/ops/{id}", store.dir()),
            reason: "the app's state names this operation, but its journal is missing".into(),
        })?;
        if op.kind != kind {
            return Err(OrchestratorError::Refused {
                reason: format!(
                    "a {} of app {} ({}) is unfinished; run `lifeboat {}` again to complete it first",
                    op.kind.as_str(),
                    op.app,
                    op.id,
                    op.kind.as_str()
                ),
            });
        }
        let mut op = op;
        op.resumed += 1;
        op.error = None;
        (env.log)(&format!(
            "resuming {} {} ({} of {} steps finished before)",
            kind.as_str(),
            op.id,
            op.steps.iter().filter(|s| s.finished.is_some()).count(),
            if kind == Kind::Drill {
                DRILL_STEPS.len()
            } else {
                FAILOVER_STEPS.len()
            } + usize::from(!app.hooks.post_restore.is_empty())
        ));
        store.save_operation(&op)?;
        return Ok(Runner { env, store, op });
    }
    let now = OffsetDateTime::now_utc();
    let op = Operation {
        id: new_id(now),
        plan: env.plan.metadata.name.clone(),
        app: app.name.value.clone(),
        kind,
        from: from.to_string(),
        to: to.to_string(),
        trigger: opts.trigger.unwrap_or(now),
        reason: opts.reason.clone(),
        detected: opts.detected,
        recovery_point: None,
        steps: Vec::new(),
        status: OpStatus::Running,
        error: None,
        resumed: 0,
        prefix: None,
    };
    store.save_operation(&op)?;
    state.running = Some(op.id.clone());
    store.save_state(state)?;
    Ok(Runner { env, store, op })
}

/// The longest a failover or failback waits for a scheduled backup of the same app to give way
/// (it gives way before its data is read and before it stages; a stream it is reading is not cut).
pub const PREEMPT_WAIT: Duration = Duration::from_secs(300);

/// The app's lock for a failover or failback. Held by a scheduled `backup --plan`: that backup is
/// asked to give way ([`Store::request_preemption`]) and the lock is waited for up to
/// [`PREEMPT_WAIT`]; held by anything else (another operation, a drill, a sync): refused at once,
/// naming the holder.
fn app_lock(env: &Env, st: &Store, kind: Kind) -> Result<lifeboat_repo::lock::LockGuard, OrchestratorError> {
    match env.repo.lock_state(&st.dir(), kind.as_str(), Duration::ZERO) {
        Ok(l) => Ok(l),
        Err(RepoError::Locked { holder, .. }) if holder.contains("`backup --plan`") => {
            st.request_preemption(kind.as_str())?;
            (env.log)(&format!(
                "waiting up to {} s for the scheduled backup of {} to give way ({holder})",
                PREEMPT_WAIT.as_secs(),
                st.app
            ));
            let lock = env.repo.lock_state(&st.dir(), kind.as_str(), PREEMPT_WAIT);
            st.clear_preemption()?;
            Ok(lock?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Moves `app` to its standby (`Kind::Failover`) or back to its primary (`Kind::Failback`).
/// Holds the app's lock for the whole run: a second call for the same app fails at once, naming
/// the holder. A call after a crash resumes the unfinished operation.
pub fn switch_over(env: &Env, app_name: &str, kind: Kind, opts: &Options) -> Result<Outcome, OrchestratorError> {
    let app = app(env.plan, app_name)?;
    let standby = standby(app)?.to_string();
    let primary = app.primary.value.clone();
    let st = store(env, app);
    let _lock = app_lock(env, &st, kind)?;
    let mut state = st.state()?;
    let active = state.active.clone().unwrap_or_else(|| primary.clone());
    let (from, to) = match kind {
        Kind::Failover => (primary.clone(), standby.clone()),
        _ => (standby.clone(), primary.clone()),
    };
    if state.running.is_none() && active == to {
        return Ok(Outcome::AlreadyThere {
            site: to,
            last: state.last.clone(),
        });
    }
    if let Some(m) = &opts.fenced_by_hand {
        if m.site != from {
            return Err(OrchestratorError::Refused {
                reason: format!(
                    "--fenced-by-hand names {}, but this {} of {} leaves {from}: name the site being left",
                    m.site,
                    kind.as_str(),
                    app.name.value
                ),
            });
        }
    }
    // Held for the whole operation: a prune cannot take the repository between the checks below
    // and the steps that read or write it.
    let _repo_lock =
        env.repo
            .lock(false, kind.as_str(), PREFLIGHT_LOCK_WAIT)
            .map_err(|e| OrchestratorError::Refused {
                reason: format!(
                    "the repository cannot be locked for the {} ({e}); nothing was fenced or changed",
                    kind.as_str()
                ),
            })?;
    // A resumed operation is taken up first (it names its own sides); a new one is begun only
    // once the preflight passed, so a failover that cannot finish leaves no trace but the error.
    let mut resumed = match state.running {
        Some(_) => Some(begin(env, app, kind, &from, &to, opts, &mut state)?),
        None => None,
    };
    let fence_done = resumed.as_ref().is_some_and(|r| r.op.finished(Step::Fence).is_some());
    let (from, to) = match &resumed {
        Some(r) => (r.op.from.clone(), r.op.to.clone()),
        None => (from, to),
    };
    let target = std::cell::OnceCell::new();
    let mut source_conn = None;
    if !fence_done {
        let pre = preflight(env, app, kind, &from, &to, opts)?;
        let _ = target.set(pre.target);
        source_conn = Some(pre.source);
        (env.log)(&format!("preflight: {}", pre.lines.join("; ")));
    }
    let mut run = match resumed.take() {
        Some(r) => r,
        None => begin(env, app, kind, &from, &to, opts, &mut state)?,
    };
    let hot = app.standby_mode == StandbyMode::Hot;

    // 1. Fence the side being left: stopped by Lifeboat, or confirmed by the witness or the
    // operator. Anything else fails the operation here, before the other side is touched.
    let mut source: Option<Arc<dyn Platform>> = None;
    let mut touched = false;
    let fenced = run.step(Step::Fence, |_| {
        let conn = match source_conn.take() {
            Some(c) => c,
            None => (env.connect)(&from, app),
        };
        let failure = match conn {
            Ok(p) => {
                touched = true;
                match hold_and_stop(&st, &mut state, &*p, &from) {
                    Ok(changes) => {
                        source = Some(p);
                        let mut detail = summary(&format!("{from} fenced"), &changes);
                        if let Some(m) = &opts.fenced_by_hand {
                            detail += &format!(" (also confirmed by hand by {})", m.by);
                        }
                        return Ok(fenced(FencedBy::Lifeboat, detail));
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        let reachable_problem = matches!(
            failure,
            OrchestratorError::Unreachable { .. } | OrchestratorError::Access { .. }
        );
        if kind == Kind::Failback && !opts.accept_data_loss && reachable_problem {
            return Err(OrchestratorError::Refused {
                reason: format!(
                    "{failure}: failing back now would lose what was written on {from} since its last backup; \
                     retry when it is reachable, or pass --accept-data-loss"
                ),
            });
        }
        if let Some(m) = &opts.fenced_by_hand {
            return Ok(fenced(
                FencedBy::Hand,
                format!(
                    "{from} could not be fenced by Lifeboat ({failure}); {} confirmed by hand that it is off \
                     (--fenced-by-hand {from}); it is never started automatically",
                    m.by
                ),
            ));
        }
        let witness = witness_verdict(env, app, &from);
        if let (OrchestratorError::Unreachable { reason, .. }, Some(WitnessSays::Agrees(report))) = (&failure, &witness)
        {
            return Ok(fenced(
                FencedBy::Witness,
                format!(
                    "{from} cannot be reached ({reason}); the witness confirms it is down ({report}): recorded as \
                     fenced; it is never started automatically"
                ),
            ));
        }
        Err(unconfirmed(kind, &from, &to, &failure, witness))
    });
    if let Err(e) = fenced {
        if !touched && run.op.resumed == 0 {
            // Nothing was changed anywhere: the operation is over, failed. Another attempt (with
            // evidence, or once the site answers) starts afresh; backups and sync go on meanwhile.
            run.op.status = OpStatus::Failed;
            st.save_operation(&run.op)?;
            state.running = None;
            st.save_state(&state)?;
        }
        return Err(e);
    }
    if fence_done {
        refence_on_resume(&st, &mut state, &mut run, env, app, &from, &mut source)?;
    }
    let fence_rec = run.op.finished(Step::Fence).expect("finished above");
    let positive = run.op.fenced_by() == Some(FencedBy::Lifeboat);
    let fenced_unreachable = !positive;
    if !state.fenced.iter().any(|f| f.site == from) {
        state.fenced.push(Fence {
            site: from.clone(),
            at: fence_rec.finished.unwrap_or_else(OffsetDateTime::now_utc),
            unreachable: fenced_unreachable,
            evidence: (!positive).then(|| fence_rec.detail.clone()),
        });
        st.save_state(&state)?;
    }

    // 2. A last backup of the fenced side, when it can be reached: nothing written is lost.
    let op_tag = format!("op={}", run.op.id);
    run.step(Step::FinalBackup, |op| {
        if fenced_unreachable {
            return Ok((StepOutcome::Skipped,
                format!("{from} was not stopped by Lifeboat: the latest backup is the recovery point"),
            ));
        }
        if !opts.final_backup {
            return Ok((StepOutcome::Skipped, "turned off: the latest backup is the recovery point".into()));
        }
        // A crash after the snapshot was written but before this step was journaled left it. An
        // incomplete one (an item could not be read) is never taken unless the operator accepts it.
        let tagged = |incomplete: bool| -> Result<_, OrchestratorError> {
            Ok(env
                .repo
                .snapshots()?
                .into_iter()
                .filter(|(_, s)| s.tags.contains(&op_tag) && (incomplete || s.is_complete()))
                .max_by_key(|(_, s)| s.time))
        };
        if let Some((id, s)) = tagged(opts.accept_incomplete)? {
            op.recovery_point = Some(RecoveryPoint {
                snapshot: id,
                time: s.time,
                final_backup: true,
            });
            let note = if s.is_complete() {
                ""
            } else {
                "; incomplete, accepted with --accept-incomplete"
            };
            return Ok((StepOutcome::Done,
                format!("snapshot {} (taken before an interruption){note}", id.short()),
            ));
        }
        let p = match source.take() {
            Some(p) => p,
            None => (env.connect)(&from, app)?,
        };
        let mut t = tags(&op.plan, &op.app, &from);
        t.push(op_tag.clone());
        let (id, time) = match p.backup(env.repo, t) {
            Ok(done) => done,
            Err(e) => {
                // The snapshot may have been written, marked incomplete: accepted only when asked.
                if let Some((id, s)) = tagged(true)? {
                    if opts.accept_incomplete {
                        op.recovery_point = Some(RecoveryPoint {
                            snapshot: id,
                            time: s.time,
                            final_backup: true,
                        });
                        return Ok((StepOutcome::Done,
                            format!(
                                "snapshot {} of {from} after fencing; incomplete ({e}), accepted with --accept-incomplete",
                                id.short()
                            ),
                        ));
                    }
                    return Err(OrchestratorError::Refused {
                        reason: format!(
                            "the final backup {} of {from} is incomplete and is not used as the recovery point: {e}; fix \
                             the cause and run again, or run again with --no-final-backup (recover from the latest \
                             complete backup) or --accept-incomplete (recover from this one)",
                            id.short()
                        ),
                    });
                }
                return Err(e);
            }
        };
        op.recovery_point = Some(RecoveryPoint {
            snapshot: id,
            time,
            final_backup: true,
        });
        Ok((StepOutcome::Done, format!("snapshot {} of {from} after fencing", id.short())))
    })?;

    // 3. Data onto the side taking over.
    let connect_target = || -> Result<Arc<dyn Platform>, OrchestratorError> {
        if let Some(p) = target.get() {
            return Ok(Arc::clone(p));
        }
        let p = (env.connect)(&to, app)?;
        let _ = target.set(Arc::clone(&p));
        Ok(p)
    };
    // A site fenced while it could not be reached may hold writes that no snapshot has (what it
    // wrote after its last backup, or while it ran cut off): keep a copy before overwriting it.
    let unreachable_fence = state.fenced.iter().find(|f| f.site == to && f.unreachable).cloned();
    if unreachable_fence.is_some() || run.op.steps.iter().any(|s| s.name == Step::Quarantine) {
        run.step(Step::Quarantine, |op| {
            let t = connect_target()?;
            let running = t.running(None)?;
            let stopped = summary(&format!("{to} stopped before it is overwritten"), &t.stop(None)?);
            let why = match &unreachable_fence {
                Some(f) => format!(
                    "it was fenced at {} while it could not be reached{}",
                    f.at,
                    if running.is_empty() {
                        String::new()
                    } else {
                        format!(", and it ran {}", running.join(", "))
                    }
                ),
                None => "an interrupted quarantine step is repeated".into(),
            };
            let q = quarantine(env, &*t, op, &to, !running.is_empty(), &why, opts.accept_data_loss)?;
            if !running.is_empty() && state.staged.as_ref().is_some_and(|s| s.site == to) {
                state.staged = None;
                st.save_state(&state)?;
            }
            Ok((StepOutcome::Done, format!("{q}; {stopped}")))
        })?;
    }
    run.step(Step::Data, |op| {
        let t = connect_target()?;
        // The target is fenced before its volumes are written: nothing may write there meanwhile.
        // If it ran the app, both sites were active (split brain): its data is kept first.
        let running = t.running(None)?;
        let stopped = t.stop(None)?;
        let mut notes = Vec::new();
        if !running.is_empty() {
            notes.push(summary(
                &format!(
                    "{to} ran the app ({}) while {from} was active: stopped",
                    running.join(", ")
                ),
                &stopped,
            ));
            let why = format!("it ran {} while {from} was active (split brain)", running.join(", "));
            notes.push(quarantine(env, &*t, op, &to, true, &why, opts.accept_data_loss)?);
            if state.staged.as_ref().is_some_and(|s| s.site == to) {
                state.staged = None;
                st.save_state(&state)?;
            }
        }
        // The recovery point: the final backup, else the newest complete snapshot; each read
        // whole before the target is touched; a damaged one gives way to the one before it.
        let mut candidates: Vec<RecoveryPoint> = op.recovery_point.clone().into_iter().collect();
        for rp in recovery_points(env.repo, &op.plan, &op.app, opts.accept_incomplete)? {
            if !candidates.iter().any(|c| c.snapshot == rp.snapshot) {
                candidates.push(rp);
            }
        }
        let newest = candidates
            .first()
            .cloned()
            .ok_or_else(|| OrchestratorError::NoRecoveryPoint { app: op.app.clone() })?;
        let mut damaged = Vec::new();
        for rp in candidates.iter().take(RECOVERY_POINTS_TRIED) {
            let fallback = if rp.snapshot == newest.snapshot {
                String::new()
            } else {
                format!(
                    "{}; recovering from the one before it, {} of {} ({} s older: the achieved RPO grows by that)",
                    damaged.join("; "),
                    rp.snapshot.short(),
                    rp.time,
                    (newest.time - rp.time).whole_seconds()
                )
            };
            if hot
                && state.staged
                    == Some(Staged {
                        site: to.clone(),
                        snapshot: rp.snapshot,
                    })
            {
                op.recovery_point = Some(rp.clone());
                notes.push(fallback);
                notes.push(format!(
                    "hot standby: snapshot {} is already staged on {to}",
                    rp.snapshot.short()
                ));
                return Ok((StepOutcome::Skipped, join_notes(&notes)));
            }
            match verify::recovery_point(env.repo, &rp.snapshot) {
                Ok(v) => {
                    op.recovery_point = Some(rp.clone());
                    notes.push(fallback);
                    notes.push(format!(
                        "snapshot {} verified ({} blobs, {} bytes read)",
                        rp.snapshot.short(),
                        v.blobs,
                        v.bytes
                    ));
                    notes.push(stage_on(&st, &mut state, &*t, env.repo, &to, &rp.snapshot)?);
                    return Ok((StepOutcome::Done, join_notes(&notes)));
                }
                Err(e @ OrchestratorError::Damaged { .. }) => {
                    (env.log)(&format!("data: {e}"));
                    damaged.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Err(OrchestratorError::Refused {
            reason: format!(
                "no recovery point of {} could be read whole ({} tried, newest first; nothing was written on {to}): {}",
                op.app,
                damaged.len(),
                damaged.join("; ")
            ),
        })
    })?;

    // 4. Start.
    run.step(Step::Start, |_| {
        let t = connect_target()?;
        let mut changes = t.start(None)?;
        // What the fence of this site cleared (restart policies) is given back now.
        if let Some(policies) = state.restart_policies.get(&to).cloned() {
            changes.extend(t.set_restart_policies(&policies)?);
            state.restart_policies.remove(&to);
            st.save_state(&state)?;
        }
        // The app writes there from now on: what was staged is no longer what the site holds.
        if state.staged.as_ref().is_some_and(|s| s.site == to) {
            state.staged = None;
            st.save_state(&state)?;
        }
        Ok((StepOutcome::Done, summary(&format!("{to} started"), &changes)))
    })?;

    // 5. Health, then the plan's post_restore hooks, each its own step (`hook N`), so that a
    // resume runs again only the hook that was under way when the process died, never one that
    // finished.
    let address = site_address(env.plan, &to)?;
    run.step(Step::Health, |_| wait_healthy(app, &address, opts.health_timeout))?;
    run.post_restore_hooks(app, &to, "", connect_target)?;

    // 6. Traffic.
    run.step(Step::Traffic, |op| match (env.router)(app)? {
        None => Ok((
            StepOutcome::Skipped,
            "the plan has no traffic section for this app".into(),
        )),
        Some(r) => {
            let side = if to == primary { Side::Primary } else { Side::Standby };
            // Every request gets a new number, saved before it is sent, so none is ever reused
            // (a webhook receiver refuses a sequence it has seen: replays, late deliveries).
            state.traffic_sequence += 1;
            st.save_state(&state)?;
            r.switch(
                side,
                &SwitchContext {
                    plan: op.plan.clone(),
                    app: op.app.clone(),
                    reason: op.kind.as_str().into(),
                    operation: op.id.clone(),
                    sequence: state.traffic_sequence,
                },
            )
            .map_err(|e| OrchestratorError::Traffic {
                app: op.app.clone(),
                source: Box::new(e),
            })?;
            Ok((StepOutcome::Done, format!("{} now sends traffic to {to}", r.describe())))
        }
    })?;

    // 7. Verify.
    run.step(Step::Verify, |_| verify(app, &address))?;

    let mut op = run.op;
    op.status = OpStatus::Done;
    st.save_operation(&op)?;
    state.active = Some(to.clone());
    state.running = None;
    state.last = Some(op.id.clone());
    state.fenced.retain(|f| f.site != to);
    if kind == Kind::Failback {
        // The standby is stopped again: that is its normal state, not a fence.
        state.fenced.retain(|f| f.site != from || f.unreachable);
    }
    st.save_state(&state)?;
    Ok(Outcome::Done(Box::new(op)))
}

/// Recovers `app` into an isolated copy (names prefixed `drill-ID-`) on the drill site (default:
/// the standby), checks it, measures RTO and RPO, and removes the copy. Never touches the
/// primary, the production workloads of the drill site, or traffic.
pub fn drill(env: &Env, app_name: &str, opts: &Options) -> Result<Operation, OrchestratorError> {
    let app = app(env.plan, app_name)?;
    let site = match &opts.drill_site {
        Some(s) => s.clone(),
        None => standby(app)?.to_string(),
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
        run.step(Step::Verify, |_| verify(app, &address))
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
    Ok(op)
}

/// The longest wait for the repository's shared lock before a failover or failback fences
/// anything (a prune holds it exclusively for as long as it runs).
pub const PREFLIGHT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// What the preflight found.
struct Preflight {
    /// The side being left, or why it cannot be used (the fence step decides what that means).
    source: Result<Arc<dyn Platform>, OrchestratorError>,
    /// The side taking over.
    target: Arc<dyn Platform>,
    lines: Vec<String>,
}

/// Everything that can be checked before the side being left is fenced: the side taking over
/// answers, and the recovery point can be read when no final backup will be taken (the side
/// being left cannot be used, or final backups are off). (The repository lock is taken by the
/// caller.) A failure changes nothing.
fn preflight(
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
fn fits(source: &dyn Platform, target: &dyn Platform, from: &str, to: &str, ignore: bool) -> Result<String, String> {
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

/// What the witness says about `site` now, when the plan has one: [`WitnessSays::Agrees`] carries
/// the report that agrees, as a line for the journal.
enum WitnessSays {
    Agrees(String),
    Not(String),
}

fn witness_verdict(env: &Env, app: &App, site: &str) -> Option<WitnessSays> {
    use crate::watch::{Freshness, Verdict, WitnessReport};
    let rule = env.plan.witness.as_ref()?;
    let st = store(env, app);
    // Fresh means: seen to change on this process's clock within max_age (the witness writes a
    // report every probe interval). So read until the report changes, for up to max_age.
    let mut freshness = Freshness::default();
    let started = std::time::Instant::now();
    (env.log)(&format!(
        "fence: waiting for a new report of the witness (up to {:?})",
        rule.max_age.0
    ));
    let (report, ago) = loop {
        let report = match st.witness_report() {
            Ok(r) => r,
            Err(e) => return Some(WitnessSays::Not(format!("the witness's report cannot be read: {e}"))),
        };
        let ago = freshness.observe(report.as_ref(), std::time::Instant::now());
        if ago.is_some() || started.elapsed() > rule.max_age.0 {
            break (report, ago);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    Some(
        match WitnessReport::verdict(report.as_ref(), site, ago, rule.max_age.0) {
            Verdict::Agrees => {
                let r = report.expect("a verdict that agrees has a report");
                WitnessSays::Agrees(format!(
                    "report {} (witness clock {}): {} failed probes in a row{}",
                    r.sequence,
                    r.time
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    r.failures,
                    r.error.map(|e| format!(", last: {e}")).unwrap_or_default()
                ))
            }
            Verdict::Disagrees(why) | Verdict::Silent(why) => WitnessSays::Not(why),
        },
    )
}

/// The error of a fence that is not confirmed: what failed, that nothing changed, how to go on.
fn unconfirmed(
    kind: Kind,
    from: &str,
    to: &str,
    failure: &OrchestratorError,
    witness: Option<WitnessSays>,
) -> OrchestratorError {
    let witness = match witness {
        None => "the plan has no witness".to_string(),
        Some(WitnessSays::Not(why)) | Some(WitnessSays::Agrees(why)) => {
            format!("the witness does not confirm it: {why}")
        }
    };
    let cause = match failure {
        OrchestratorError::Unreachable { .. } => format!(
            "{from} cannot be reached, which does not show that it stopped (a hung engine or a partition leaves \
             the app running) and {witness}"
        ),
        OrchestratorError::Access { .. } => format!(
            "{from} answers but cannot be used (fix the plan's address or credentials for {from}, then run the {} again)",
            kind.as_str()
        ),
        _ => format!("stopping the app on {from} was not confirmed"),
    };
    OrchestratorError::Refused {
        reason: format!(
            "{from} is not fenced: {failure}. {cause}. Nothing was started on {to}. If {from} is really off, make \
             sure it stays off (power it off, or cut it from the network and its storage), then run `lifeboat {} PLAN \
             --fenced-by-hand {from}`",
            kind.as_str(),
        ),
    }
}

/// Stops the app on `site` for good: its restart policies are recorded in `state` (saved) first,
/// then cleared by the stop. A policy recorded earlier is never overwritten by the "none" that a
/// second stop sees.
/// On a resume whose fence finished before: a fenced side that runs the app again (started by
/// hand, by an orchestrator, by a restart Lifeboat did not hold) is stopped again before the
/// operation goes on, as Pacemaker fences a node that rejoins with resources. A side that cannot
/// be reached now keeps the evidence it was fenced on. What was found and done is added to the
/// fence step's record.
fn refence_on_resume(
    st: &Store,
    state: &mut AppState,
    run: &mut Runner,
    env: &Env,
    app: &App,
    from: &str,
    source: &mut Option<Arc<dyn Platform>>,
) -> Result<(), OrchestratorError> {
    let Ok(p) = (env.connect)(from, app) else {
        return Ok(());
    };
    let live = p.running(None)?;
    if !live.is_empty() {
        let changes = hold_and_stop(st, state, &*p, from).map_err(|e| OrchestratorError::Step {
            kind: run.op.kind.as_str(),
            app: run.op.app.clone(),
            step: "fence".into(),
            id: run.op.id.clone(),
            cause: Box::new(OrchestratorError::Site {
                site: from.to_string(),
                reason: format!("runs the app again ({}) and cannot be stopped: {e}", live.join(", ")),
            }),
        })?;
        let line = summary(
            &format!(
                "on resume, {from} ran the app again ({}): fenced again",
                live.join(", ")
            ),
            &changes,
        );
        (env.log)(&format!("fence: {line}"));
        if let Some(rec) = run.op.steps.iter_mut().find(|s| s.name == Step::Fence) {
            rec.detail = format!("{}; {line}", rec.detail);
        }
        st.save_operation(&run.op)?;
    }
    *source = Some(p);
    Ok(())
}

pub(crate) fn hold_and_stop(
    st: &Store,
    state: &mut AppState,
    platform: &dyn Platform,
    site: &str,
) -> Result<Vec<String>, OrchestratorError> {
    let policies = platform.restart_policies()?;
    if !policies.is_empty() {
        let held = state.restart_policies.entry(site.to_string()).or_default();
        let before = held.len();
        for (name, policy) in policies {
            held.entry(name).or_insert(policy);
        }
        if held.len() != before || before == 0 {
            st.save_state(state)?;
        }
    }
    platform.stop(None)
}

/// Stages `snapshot` on `site` (production names) and records it in `state`. What the site holds
/// now is passed on as the base when `state` knows it (only what changed since is written); the
/// record is cleared while the stage runs, so an interrupted stage is never taken as a base.
fn stage_on(
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

/// Backs up `site` (stopped) as a quarantine snapshot before a recovery point is written over it:
/// tagged `quarantine` (and `split-brain` when it ran the app) with the plan, app and site, never
/// a recovery point, never removed by retention. `why` says what it may hold. When the site cannot
/// be read, the operation is refused unless `accept_data_loss`.
fn quarantine(
    env: &Env,
    p: &dyn Platform,
    op: &Operation,
    site: &str,
    split_brain: bool,
    why: &str,
    accept_data_loss: bool,
) -> Result<String, OrchestratorError> {
    let mut t = tags(&op.plan, &op.app, site);
    t.push(QUARANTINE_TAG.to_string());
    if split_brain {
        t.push(SPLIT_BRAIN_TAG.to_string());
    }
    match p.backup(env.repo, t) {
        Ok((id, _)) => Ok(format!(
            "quarantine snapshot {} of {site} ({why}): kept, never a recovery point; restore it by hand to recover \
             what only {site} had",
            id.short()
        )),
        Err(e) if accept_data_loss => Ok(format!(
            "{site} could not be read whole for a quarantine snapshot ({e}): overwritten without a full copy, as \
             --accept-data-loss allows"
        )),
        Err(e) => Err(OrchestratorError::Refused {
            reason: format!(
                "{site} may hold writes no snapshot has ({why}) and could not be read whole for a quarantine snapshot: \
                 {e}; nothing was written there. Fix the cause and run again, or pass --accept-data-loss to overwrite \
                 it without a copy"
            ),
        }),
    }
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

/// Probes until every probe passed `success_threshold` times in a row (that of the first probe).
fn wait_healthy(app: &App, address: &str, limit: Duration) -> Result<(StepOutcome, String), OrchestratorError> {
    let Some(first) = app.health.first() else {
        return Ok((
            StepOutcome::Skipped,
            "the plan has no health probes for this app".into(),
        ));
    };
    let need = first.success_threshold.value.max(1);
    let every = first.interval.value.0.min(Duration::from_secs(1));
    let start = Instant::now();
    let mut streak = 0;
    let mut last = String::new();
    loop {
        let t = Instant::now();
        match probe::healthy(app, address) {
            Ok(()) => {
                streak += 1;
                if streak >= need {
                    return Ok((
                        StepOutcome::Done,
                        format!(
                            "healthy after {:.1} s ({need} passing probe rounds)",
                            start.elapsed().as_secs_f64()
                        ),
                    ));
                }
            }
            Err(e) => {
                streak = 0;
                last = e;
            }
        }
        if start.elapsed() >= limit {
            return Err(OrchestratorError::Unhealthy {
                app: app.name.value.clone(),
                address: address.to_string(),
                waited: limit,
                last,
            });
        }
        // Probe faster than the plan's interval while waiting: the RTO is measured here.
        std::thread::sleep(every.min(Duration::from_millis(250)).saturating_sub(t.elapsed()));
    }
}

fn verify(app: &App, address: &str) -> Result<(StepOutcome, String), OrchestratorError> {
    if app.verify.is_empty() {
        return Ok((
            StepOutcome::Skipped,
            "the plan has no verify checks for this app".into(),
        ));
    }
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for c in &app.verify {
        match probe::verify(c, address) {
            Ok(s) => seen.push(s),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok((StepOutcome::Done, seen.join("; ")))
    } else {
        Err(OrchestratorError::Verify {
            app: app.name.value.clone(),
            failures: failed,
        })
    }
}

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
/// stages the snapshot on the standby (workloads created stopped, volume data written).
pub fn backup_plan(env: &Env, only: Option<&str>, lock_wait: Duration) -> Result<Vec<PlanBackup>, OrchestratorError> {
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
        let result = (|| -> Result<(), OrchestratorError> {
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
                let done = stage_on(&st, &mut state, &*t, env.repo, &other, &id)?;
                item.staged = Some(format!("{other}: {done}"));
            }
            Ok(())
        })();
        if let Err(e) = result {
            item.error = Some(e.to_string());
        }
        out.push(item);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "ops_fence_tests.rs"]
mod fence_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn the_latest_recovery_point_is_the_newest_complete_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let repo = testing::repo(d.path());
        let tags = ["plan=p", "app=web", "site=a"];
        let complete = testing::snapshot(&repo, b"1", 300, &tags, 0);
        let older = testing::snapshot(&repo, b"0", 600, &tags, 0);
        let with_errors = testing::snapshot(&repo, b"2", 200, &tags, 1);
        let tagged = testing::snapshot(&repo, b"3", 100, &["plan=p", "app=web", "incomplete"], 0);
        testing::snapshot(&repo, b"4", 50, &["plan=p", "app=web", "site=a", "quarantine"], 0);
        testing::snapshot(
            &repo,
            b"5",
            40,
            &["plan=p", "app=web", "site=a", "quarantine", "split-brain"],
            0,
        );
        testing::snapshot(&repo, b"6", 10, &["plan=p", "app=other"], 0);
        let rp = latest_recovery_point(&repo, "p", "web").unwrap().unwrap();
        assert_eq!(rp.snapshot, complete);
        let all: Vec<Id> = recovery_points(&repo, "p", "web", false)
            .unwrap()
            .into_iter()
            .map(|r| r.snapshot)
            .collect();
        assert_eq!(all, [complete, older], "newest first, complete only");
        let accepted: Vec<Id> = recovery_points(&repo, "p", "web", true)
            .unwrap()
            .into_iter()
            .map(|r| r.snapshot)
            .collect();
        assert_eq!(
            accepted,
            [tagged, with_errors, complete, older],
            "accepted incomplete ones, never a quarantine snapshot"
        );
    }

    /// Regression (review finding 19): one snapshot from a host whose clock ran a day ahead was
    /// the "latest" recovery point until that day came.
    #[test]
    fn a_snapshot_dated_in_the_future_is_not_the_latest_recovery_point() {
        let d = tempfile::tempdir().unwrap();
        let repo = testing::repo(d.path());
        let tags = ["plan=p", "app=web", "site=a"];
        // testing::snapshot dates snapshots AGE seconds before 1_800_000_000.
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let ahead = testing::snapshot(&repo, b"ahead", -86_400, &tags, 0);
        let newest = testing::snapshot(&repo, b"new", 60, &tags, 0);
        let skewed_a_little = testing::snapshot(&repo, b"skew", -120, &tags, 0);
        let order: Vec<Id> = recovery_points_at(&repo, "p", "web", false, now)
            .unwrap()
            .into_iter()
            .map(|r| r.snapshot)
            .collect();
        assert_eq!(
            order,
            [skewed_a_little, newest, ahead],
            "within the tolerance a snapshot keeps its place; a day ahead comes last"
        );
    }
}
