//! Failover and failback: the app moves to the other side in journaled steps.
use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_model::{QUARANTINE_TAG, SPLIT_BRAIN_TAG};
use lifeboat_plan::{App, StandbyMode};
use lifeboat_repo::RepoError;
use lifeboat_traffic::{Side, SwitchContext};
use time::OffsetDateTime;

use super::backup::stage_on;
use super::fence::{hold_and_stop, refence_on_resume, unconfirmed, witness_verdict, WitnessSays};
use super::points::{recovery_points, RECOVERY_POINTS_TRIED};
use super::preflight::preflight;
use super::runner::{begin, fenced, Finished};
use super::steps::{verify_step, wait_healthy};
use super::{app, join_notes, site_address, standby, store, summary, tags, Env, Options, Outcome};
use crate::journal::{
    AppState, Fence, FencedBy, Kind, OpStatus, Operation, RecoveryPoint, Staged, Step, StepOutcome, Store,
};
use crate::platform::Platform;
use crate::{verify, OrchestratorError};

/// The longest a failover or failback waits for a scheduled backup of the same app to give way
/// (it gives way before its data is read and before it stages; a stream it is reading is not cut).
pub const PREEMPT_WAIT: Duration = Duration::from_secs(300);

/// The app's lock for a failover or failback. Held by a scheduled `backup --plan`: that backup is
/// asked to give way ([`Store::request_preemption`]) and the lock is waited for up to
/// [`PREEMPT_WAIT`]; held by anything else (another operation, a drill, a sync): refused at once,
/// naming the holder.
pub(super) fn app_lock(env: &Env, st: &Store, kind: Kind) -> Result<lifeboat_repo::lock::LockGuard, OrchestratorError> {
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
///
/// The steps, each journaled: fence the side being left, a final backup of it, a quarantine
/// snapshot of the side taking over when it may hold writes of its own, data onto it, start,
/// health, the plan's `post_restore` hooks, traffic, verify.
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
            .lock(false, kind.as_str(), opts.repo_lock_wait)
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
    let mut sw = Switch {
        env,
        app,
        kind,
        opts,
        st,
        state,
        from,
        to,
        source: None,
        source_conn: None,
        target: OnceCell::new(),
        touched: false,
    };
    if !fence_done {
        let pre = preflight(env, app, kind, &sw.from, &sw.to, opts)?;
        let _ = sw.target.set(pre.target);
        sw.source_conn = Some(pre.source);
        (env.log)(&format!("preflight: {}", pre.lines.join("; ")));
    }
    let mut run = match resumed.take() {
        Some(r) => r,
        None => begin(env, app, kind, &sw.from, &sw.to, opts, &mut sw.state)?,
    };

    // 1. Fence the side being left: stopped by Lifeboat, or confirmed by the witness or the
    // operator. Anything else fails the operation here, before the other side is touched.
    if let Err(e) = run.step(Step::Fence, |_| sw.fence()) {
        if !sw.touched && run.op.resumed == 0 {
            // Nothing was changed anywhere: the operation is over, failed. Another attempt (with
            // evidence, or once the site answers) starts afresh; backups and sync go on meanwhile.
            run.op.status = OpStatus::Failed;
            sw.st.save_operation(&run.op)?;
            sw.state.running = None;
            sw.st.save_state(&sw.state)?;
        }
        return Err(e);
    }
    if fence_done {
        refence_on_resume(&sw.st, &mut sw.state, &mut run, env, app, &sw.from, &mut sw.source)?;
    }
    let fenced_unreachable = sw.record_fence(&run.op)?;

    // 2. A last backup of the fenced side, when it can be reached: nothing written is lost.
    run.step(Step::FinalBackup, |op| sw.final_backup(op, fenced_unreachable))?;

    // 3. Data onto the side taking over, after a quarantine snapshot of what it may hold.
    // A site fenced while it could not be reached may hold writes that no snapshot has (what it
    // wrote after its last backup, or while it ran cut off): keep a copy before overwriting it.
    let unreachable_fence = sw
        .state
        .fenced
        .iter()
        .find(|f| f.site == sw.to && f.unreachable)
        .cloned();
    if unreachable_fence.is_some() || run.op.steps.iter().any(|s| s.name == Step::Quarantine) {
        run.step(Step::Quarantine, |op| sw.quarantine(op, unreachable_fence.as_ref()))?;
    }
    run.step(Step::Data, |op| sw.data(op))?;

    // 4. Start.
    run.step(Step::Start, |_| sw.start())?;

    // 5. Health, then the plan's post_restore hooks, each its own step (`hook N`), so that a
    // resume runs again only the hook that was under way when the process died, never one that
    // finished.
    let address = site_address(env.plan, &sw.to)?;
    run.step(Step::Health, |_| wait_healthy(app, &address, opts.health_timeout))?;
    run.post_restore_hooks(app, &sw.to.clone(), "", || sw.target())?;

    // 6. Traffic.
    run.step(Step::Traffic, |op| sw.traffic(op))?;

    // 7. Verify.
    run.step(Step::Verify, |_| verify_step(app, &address))?;

    let mut op = run.op;
    op.status = OpStatus::Done;
    sw.st.save_operation(&op)?;
    sw.finish(&op)?;
    Ok(Outcome::Done(Box::new(op)))
}

/// A failover or failback under way: what its steps share.
struct Switch<'a, 'e> {
    env: &'a Env<'e>,
    app: &'a App,
    kind: Kind,
    opts: &'a Options,
    st: Store<'e>,
    state: AppState,
    /// The side being left.
    from: String,
    /// The side taking over.
    to: String,
    /// The side being left, once the fence stopped it (the final backup reads it).
    source: Option<Arc<dyn Platform>>,
    /// The preflight's connection to the side being left, or why there is none.
    source_conn: Option<Result<Arc<dyn Platform>, OrchestratorError>>,
    /// The side taking over, connected once.
    target: OnceCell<Arc<dyn Platform>>,
    /// The fence changed something (a failed fence that touched nothing leaves no operation open).
    touched: bool,
}

impl Switch<'_, '_> {
    fn target(&self) -> Result<Arc<dyn Platform>, OrchestratorError> {
        if let Some(p) = self.target.get() {
            return Ok(Arc::clone(p));
        }
        let p = (self.env.connect)(&self.to, self.app)?;
        let _ = self.target.set(Arc::clone(&p));
        Ok(p)
    }

    /// Stops the side being left, or finds the evidence that it is off (the operator's word, the
    /// witness); anything else is an unconfirmed fence, which is a failed one.
    fn fence(&mut self) -> Result<Finished, OrchestratorError> {
        let (from, to, opts, kind) = (self.from.clone(), self.to.clone(), self.opts, self.kind);
        let conn = match self.source_conn.take() {
            Some(c) => c,
            None => (self.env.connect)(&from, self.app),
        };
        let failure = match conn {
            Ok(p) => {
                self.touched = true;
                match hold_and_stop(&self.st, &mut self.state, &*p, &from) {
                    Ok(changes) => {
                        self.source = Some(p);
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
        if let (OrchestratorError::Unreachable { source: reason, .. }, Some(l)) = (&failure, &self.env.leadership) {
            match l.site_fenced(&from) {
                Some(Ok(evidence)) => {
                    return Ok(fenced(
                        FencedBy::Quorum,
                        format!(
                            "{from} cannot be reached ({reason}); {evidence}: recorded as fenced; it is never started \
                             automatically"
                        ),
                    ))
                }
                Some(Err(why)) => {
                    return Err(unconfirmed(
                        kind,
                        &from,
                        &to,
                        &failure,
                        Some(WitnessSays::QuorumNot(why)),
                    ));
                }
                None => {}
            }
        }
        let witness = witness_verdict(self.env, self.app, &from);
        if let (OrchestratorError::Unreachable { source: reason, .. }, Some(WitnessSays::Agrees(report))) =
            (&failure, &witness)
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
    }

    /// Records the finished fence in the app's state; whether it was fenced without being
    /// stopped by Lifeboat (then it is never started automatically, and never backed up).
    fn record_fence(&mut self, op: &Operation) -> Result<bool, OrchestratorError> {
        let fence_rec = op.finished(Step::Fence).expect("finished above");
        let fenced_unreachable = op.fenced_by() != Some(FencedBy::Lifeboat);
        if !self.state.fenced.iter().any(|f| f.site == self.from) {
            self.state.fenced.push(Fence {
                site: self.from.clone(),
                at: fence_rec.finished.unwrap_or_else(OffsetDateTime::now_utc),
                unreachable: fenced_unreachable,
                evidence: fenced_unreachable.then(|| fence_rec.detail.clone()),
            });
            self.st.save_state(&self.state)?;
        }
        Ok(fenced_unreachable)
    }

    /// A last backup of the fenced side; taken once per operation (a snapshot tagged with the
    /// operation's id is taken up again after a crash).
    fn final_backup(
        &mut self,
        op: &mut Operation,
        fenced_unreachable: bool,
    ) -> Result<(StepOutcome, String), OrchestratorError> {
        let (env, opts, from) = (self.env, self.opts, self.from.clone());
        if fenced_unreachable {
            return Ok((
                StepOutcome::Skipped,
                format!("{from} was not stopped by Lifeboat: the latest backup is the recovery point"),
            ));
        }
        if !opts.final_backup {
            return Ok((
                StepOutcome::Skipped,
                "turned off: the latest backup is the recovery point".into(),
            ));
        }
        let op_tag = format!("op={}", op.id);
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
        let final_point = |id, time| RecoveryPoint {
            snapshot: id,
            time,
            final_backup: true,
        };
        if let Some((id, s)) = tagged(opts.accept_incomplete)? {
            op.recovery_point = Some(final_point(id, s.time));
            let note = if s.is_complete() {
                ""
            } else {
                "; incomplete, accepted with --accept-incomplete"
            };
            return Ok((
                StepOutcome::Done,
                format!("snapshot {} (taken before an interruption){note}", id.short()),
            ));
        }
        let p = match self.source.take() {
            Some(p) => p,
            None => (env.connect)(&from, self.app)?,
        };
        let mut t = tags(&op.plan, &op.app, &from);
        t.push(op_tag.clone());
        let (id, time) = match p.backup(env.repo, t) {
            Ok(done) => done,
            Err(e) => {
                // The snapshot may have been written, marked incomplete: accepted only when asked.
                let Some((id, s)) = tagged(true)? else {
                    return Err(e);
                };
                if !opts.accept_incomplete {
                    return Err(OrchestratorError::Refused {
                        reason: format!(
                            "the final backup {} of {from} is incomplete and is not used as the recovery point: {e}; \
                             fix the cause and run again, or run again with --no-final-backup (recover from the \
                             latest complete backup) or --accept-incomplete (recover from this one)",
                            id.short()
                        ),
                    });
                }
                op.recovery_point = Some(final_point(id, s.time));
                return Ok((
                    StepOutcome::Done,
                    format!(
                        "snapshot {} of {from} after fencing; incomplete ({e}), accepted with --accept-incomplete",
                        id.short()
                    ),
                ));
            }
        };
        op.recovery_point = Some(final_point(id, time));
        Ok((
            StepOutcome::Done,
            format!("snapshot {} of {from} after fencing", id.short()),
        ))
    }

    /// Stops the side taking over and keeps a quarantine snapshot of it before it is overwritten.
    fn quarantine(
        &mut self,
        op: &mut Operation,
        unreachable_fence: Option<&Fence>,
    ) -> Result<(StepOutcome, String), OrchestratorError> {
        let to = self.to.clone();
        let t = self.target()?;
        let running = t.running(None)?;
        let stopped = summary(&format!("{to} stopped before it is overwritten"), &t.stop(None)?);
        let why = match unreachable_fence {
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
        let q = quarantine(
            self.env,
            &*t,
            op,
            &to,
            !running.is_empty(),
            &why,
            self.opts.accept_data_loss,
        )?;
        if !running.is_empty() {
            self.forget_staged()?;
        }
        Ok((StepOutcome::Done, format!("{q}; {stopped}")))
    }

    /// The side taking over is stopped (its own writes kept first when it ran the app), then given
    /// the recovery point: the final backup, else the newest complete snapshot; each read whole
    /// before the target is touched; a damaged one gives way to the one before it.
    fn data(&mut self, op: &mut Operation) -> Result<(StepOutcome, String), OrchestratorError> {
        let (env, from, to) = (self.env, self.from.clone(), self.to.clone());
        let t = self.target()?;
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
            notes.push(quarantine(env, &*t, op, &to, true, &why, self.opts.accept_data_loss)?);
            self.forget_staged()?;
        }
        let mut candidates: Vec<RecoveryPoint> = op.recovery_point.clone().into_iter().collect();
        for rp in recovery_points(env.repo, &op.plan, &op.app, self.opts.accept_incomplete)? {
            if !candidates.iter().any(|c| c.snapshot == rp.snapshot) {
                candidates.push(rp);
            }
        }
        let newest = candidates
            .first()
            .cloned()
            .ok_or_else(|| OrchestratorError::NoRecoveryPoint { app: op.app.clone() })?;
        let hot = self.app.standby_mode == StandbyMode::Hot;
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
            let staged_here = Staged {
                site: to.clone(),
                snapshot: rp.snapshot,
            };
            if hot && self.state.staged.as_ref() == Some(&staged_here) {
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
                    notes.push(stage_on(&self.st, &mut self.state, &*t, env.repo, &to, &rp.snapshot)?);
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
    }

    /// Starts the app on the side taking over and gives back the restart policies its own fence
    /// had cleared.
    fn start(&mut self) -> Result<(StepOutcome, String), OrchestratorError> {
        let to = self.to.clone();
        let t = self.target()?;
        let mut changes = t.start(None)?;
        if let Some(policies) = self.state.restart_policies.get(&to).cloned() {
            changes.extend(t.set_restart_policies(&policies)?);
            self.state.restart_policies.remove(&to);
            self.st.save_state(&self.state)?;
        }
        // The app writes there from now on: what was staged is no longer what the site holds.
        self.forget_staged()?;
        Ok((StepOutcome::Done, summary(&format!("{to} started"), &changes)))
    }

    /// Points the app's traffic at the side taking over.
    fn traffic(&mut self, op: &mut Operation) -> Result<(StepOutcome, String), OrchestratorError> {
        let Some(r) = (self.env.router)(self.app)? else {
            return Ok((
                StepOutcome::Skipped,
                "the plan has no traffic section for this app".into(),
            ));
        };
        let side = if self.to == self.app.primary.value {
            Side::Primary
        } else {
            Side::Standby
        };
        // Checked again right before the request: the switch is the side effect clients see.
        self.env.term()?;
        // Every request gets a new number, saved before it is sent, so none is ever reused
        // (a webhook receiver refuses a sequence it has seen: replays, late deliveries).
        self.state.traffic_sequence += 1;
        self.st.save_state(&self.state)?;
        r.switch(
            side,
            &SwitchContext {
                plan: op.plan.clone(),
                app: op.app.clone(),
                reason: op.kind.as_str().into(),
                operation: op.id.clone(),
                sequence: self.state.traffic_sequence,
            },
        )
        .map_err(|e| OrchestratorError::Traffic {
            app: op.app.clone(),
            source: Box::new(e),
        })?;
        Ok((
            StepOutcome::Done,
            format!("{} now sends traffic to {}", r.describe(), self.to),
        ))
    }

    /// The record of what was staged on the side taking over is dropped: it no longer holds it.
    fn forget_staged(&mut self) -> Result<(), OrchestratorError> {
        if self.state.staged.as_ref().is_some_and(|s| s.site == self.to) {
            self.state.staged = None;
            self.st.save_state(&self.state)?;
        }
        Ok(())
    }

    /// The operation `op` finished: the app is active on the side that took over.
    fn finish(mut self, op: &Operation) -> Result<(), OrchestratorError> {
        self.state.active = Some(self.to.clone());
        self.state.running = None;
        self.state.last = Some(op.id.clone());
        self.state.fenced.retain(|f| f.site != self.to);
        if self.kind == Kind::Failback {
            // The standby is stopped again: that is its normal state, not a fence.
            let from = &self.from;
            self.state.fenced.retain(|f| &f.site != from || f.unreachable);
        }
        self.st.save_state(&self.state)
    }
}

/// Backs up `site` (stopped) as a quarantine snapshot before a recovery point is written over it:
/// tagged `quarantine` (and `split-brain` when it ran the app) with the plan, app and site, never
/// a recovery point, never removed by retention. `why` says what it may hold. When the site cannot
/// be read, the operation is refused unless `accept_data_loss`.
pub(super) fn quarantine(
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
