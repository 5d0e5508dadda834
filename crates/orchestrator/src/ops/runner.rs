//! Runs the steps of one operation, journaling each before it starts and after it ends.
use std::sync::Arc;

use lifeboat_plan::App;
use time::OffsetDateTime;

#[cfg(feature = "fault-injection")]
use super::FAULT_ENV;
use super::{store, Env, Options};
use crate::hooks;
use crate::journal::{
    new_id, AppState, FencedBy, Kind, OpStatus, Operation, Step, StepOutcome, StepRecord, Store, DRILL_STEPS,
    FAILOVER_STEPS,
};
use crate::platform::Platform;
use crate::OrchestratorError;

/// Runs steps of `op`, journaling each.
pub(super) struct Runner<'a, 'e> {
    pub(super) env: &'a Env<'e>,
    pub(super) store: Store<'e>,
    pub(super) op: Operation,
}

/// How a step finished: its outcome, a line for people, and the facts later steps read.
pub(super) struct Finished {
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
pub(super) fn fenced(by: FencedBy, detail: String) -> Finished {
    Finished {
        outcome: StepOutcome::Done,
        detail,
        fenced_by: Some(by),
    }
}

impl Runner<'_, '_> {
    pub(super) fn step<R: Into<Finished>>(
        &mut self,
        name: Step,
        f: impl FnOnce(&mut Operation) -> Result<R, OrchestratorError>,
    ) -> Result<(), OrchestratorError> {
        if let Some(done) = self.op.finished(name) {
            (self.env.log)(&format!("{name}: finished before ({}), not repeated", done.outcome));
            return Ok(());
        }
        // A deposed leader stops here, before it writes anything (the journal included).
        let term = self.env.term()?;
        let now = OffsetDateTime::now_utc();
        match self.op.steps.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.attempts += 1;
                s.started = now;
                s.term = term;
            }
            None => self.op.steps.push(StepRecord {
                name,
                started: now,
                finished: None,
                outcome: StepOutcome::Pending,
                detail: String::new(),
                attempts: 1,
                fenced_by: None,
                term,
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
            // Deposed during the step: the new leader owns the journal now.
            Err(e @ OrchestratorError::Deposed { .. }) => Err(e),
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
    pub(super) fn post_restore_hooks(
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
pub(super) fn begin<'a, 'e>(
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
