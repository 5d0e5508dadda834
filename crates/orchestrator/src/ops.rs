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

use lifeboat_plan::{App, Plan, Profile, StandbyMode};
use lifeboat_repo::Repository;
use lifeboat_traffic::{Router, Side, SwitchContext};
use time::OffsetDateTime;

use crate::hooks;
use crate::journal::{new_id, AppState, Fence, Kind, Operation, RecoveryPoint, Staged, StepRecord, Store};
use crate::platform::{Connector, Platform};
use crate::{probe, OrchestratorError};

/// The steps of a failover or failback, in order.
/// (`hooks` comes after `health` when the app has `post_restore` hooks.)
pub const FAILOVER_STEPS: [&str; 7] = ["fence", "final-backup", "data", "start", "health", "traffic", "verify"];
/// The steps of a drill, in order.
pub const DRILL_STEPS: [&str; 5] = ["data", "start", "health", "verify", "teardown"];

/// Environment variable for fault-injection tests: the process kills itself with SIGKILL right
/// after the named step is journaled as finished (`fence`, `data`, ...).
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
    /// Failback only: go on when the active site cannot be reached, losing what was written there
    /// since the last backup.
    pub accept_data_loss: bool,
    /// Drill only: the site to recover on (default: the standby).
    pub drill_site: Option<String>,
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
            drill_site: None,
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

/// The newest snapshot of `app` in the repository (tags `plan=` and `app=`).
pub fn latest_recovery_point(
    repo: &Repository,
    plan: &str,
    app: &str,
) -> Result<Option<RecoveryPoint>, OrchestratorError> {
    let (p, a) = (format!("plan={plan}"), format!("app={app}"));
    Ok(repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.tags.contains(&p) && s.tags.contains(&a))
        .max_by_key(|(_, s)| s.time)
        .map(|(id, s)| RecoveryPoint {
            snapshot: id.to_hex(),
            time: s.time,
            final_backup: s.tags.iter().any(|t| t.starts_with("op=")),
        }))
}

fn tags(plan: &str, app: &str, site: &str) -> Vec<String> {
    vec![format!("plan={plan}"), format!("app={app}"), format!("site={site}")]
}

/// Runs steps of `op`, journaling each.
struct Runner<'a, 'e> {
    env: &'a Env<'e>,
    store: Store<'e>,
    op: Operation,
}

impl Runner<'_, '_> {
    fn step(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Operation) -> Result<(&'static str, String), OrchestratorError>,
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
                name: name.to_string(),
                started: now,
                finished: None,
                outcome: String::new(),
                detail: String::new(),
                attempts: 1,
            }),
        }
        self.store.save_operation(&self.op)?;
        (self.env.log)(&format!("{name}: started"));
        let result = f(&mut self.op);
        let rec = self.op.steps.iter_mut().find(|s| s.name == name).expect("pushed above");
        match result {
            Ok((outcome, detail)) => {
                rec.finished = Some(OffsetDateTime::now_utc());
                rec.outcome = outcome.to_string();
                rec.detail = detail;
                (self.env.log)(&format!("{name}: {outcome}: {}", rec.detail));
                self.store.save_operation(&self.op)?;
                if std::env::var(FAULT_ENV).is_ok_and(|v| v == name) {
                    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
                }
                Ok(())
            }
            Err(e) => {
                rec.outcome = "failed".into();
                rec.detail = e.to_string();
                self.op.error = Some(format!("{name}: {e}"));
                self.store.save_operation(&self.op)?;
                Err(OrchestratorError::Step {
                    kind: self.op.kind.as_str(),
                    app: self.op.app.clone(),
                    step: name.to_string(),
                    id: self.op.id.clone(),
                    reason: e.to_string(),
                })
            }
        }
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
        status: "running".into(),
        error: None,
        resumed: 0,
    };
    store.save_operation(&op)?;
    state.running = Some(op.id.clone());
    store.save_state(state)?;
    Ok(Runner { env, store, op })
}

/// Moves `app` to its standby (`Kind::Failover`) or back to its primary (`Kind::Failback`).
/// Holds the app's lock for the whole run: a second call for the same app fails at once, naming
/// the holder. A call after a crash resumes the unfinished operation.
pub fn switch_over(env: &Env, app_name: &str, kind: Kind, opts: &Options) -> Result<Outcome, OrchestratorError> {
    let app = app(env.plan, app_name)?;
    let standby = standby(app)?.to_string();
    let primary = app.primary.value.clone();
    let st = store(env, app);
    let _lock = env.repo.lock_state(&st.dir(), kind.as_str(), Duration::ZERO)?;
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
    let mut run = begin(env, app, kind, &from, &to, opts, &mut state)?;
    let (from, to) = (run.op.from.clone(), run.op.to.clone());
    let hot = app.standby_mode == StandbyMode::Hot;

    // 1. Fence the side being left.
    let mut source: Option<Arc<dyn Platform>> = None;
    run.step("fence", |_| match (env.connect)(&from, app) {
        Ok(p) => {
            let changes = p.stop(None)?;
            source = Some(p);
            Ok(("done", summary(&format!("{from} fenced"), &changes)))
        }
        Err(OrchestratorError::Unreachable { reason, .. }) => {
            if kind == Kind::Failback && !opts.accept_data_loss {
                return Err(OrchestratorError::Refused {
                    reason: format!(
                        "{from} cannot be reached ({reason}): failing back now would lose what was written there since \
                         its last backup; retry when it is reachable, or pass --accept-data-loss"
                    ),
                });
            }
            Ok((
                "done",
                format!("{from} cannot be reached ({reason}): recorded as fenced; it is never started automatically"),
            ))
        }
        Err(e) => Err(e),
    })?;
    let fenced_unreachable = run
        .op
        .finished("fence")
        .is_some_and(|s| s.detail.contains("cannot be reached"));
    if !state.fenced.iter().any(|f| f.site == from) {
        state.fenced.push(Fence {
            site: from.clone(),
            at: run
                .op
                .finished("fence")
                .and_then(|s| s.finished)
                .unwrap_or_else(OffsetDateTime::now_utc),
            unreachable: fenced_unreachable,
        });
        st.save_state(&state)?;
    }

    // 2. A last backup of the fenced side, when it can be reached: nothing written is lost.
    let op_tag = format!("op={}", run.op.id);
    run.step("final-backup", |op| {
        if fenced_unreachable {
            return Ok((
                "skipped",
                format!("{from} cannot be reached: the latest backup is the recovery point"),
            ));
        }
        if !opts.final_backup {
            return Ok(("skipped", "turned off: the latest backup is the recovery point".into()));
        }
        // A crash after the snapshot was written but before this step was journaled left it.
        if let Some((id, s)) = env
            .repo
            .snapshots()?
            .into_iter()
            .find(|(_, s)| s.tags.contains(&op_tag))
        {
            op.recovery_point = Some(RecoveryPoint {
                snapshot: id.to_hex(),
                time: s.time,
                final_backup: true,
            });
            return Ok((
                "done",
                format!("snapshot {} (taken before an interruption)", id.short()),
            ));
        }
        let p = match source.take() {
            Some(p) => p,
            None => (env.connect)(&from, app)?,
        };
        let mut t = tags(&op.plan, &op.app, &from);
        t.push(op_tag.clone());
        let (id, time) = p.backup(env.repo, t)?;
        op.recovery_point = Some(RecoveryPoint {
            snapshot: id.clone(),
            time,
            final_backup: true,
        });
        Ok(("done", format!("snapshot {} of {from} after fencing", &id[..8])))
    })?;

    // 3. Data onto the side taking over.
    let target = std::cell::OnceCell::new();
    let connect_target = || -> Result<Arc<dyn Platform>, OrchestratorError> {
        if let Some(p) = target.get() {
            return Ok(Arc::clone(p));
        }
        let p = (env.connect)(&to, app)?;
        let _ = target.set(Arc::clone(&p));
        Ok(p)
    };
    run.step("data", |op| {
        if op.recovery_point.is_none() {
            op.recovery_point = Some(
                latest_recovery_point(env.repo, &op.plan, &op.app)?
                    .ok_or_else(|| OrchestratorError::NoRecoveryPoint { app: op.app.clone() })?,
            );
        }
        let rp = op.recovery_point.clone().expect("set above");
        if hot
            && state.staged
                == Some(Staged {
                    site: to.clone(),
                    snapshot: rp.snapshot.clone(),
                })
        {
            return Ok((
                "skipped",
                format!("hot standby: snapshot {} is already staged on {to}", &rp.snapshot[..8]),
            ));
        }
        let done = stage_on(&st, &mut state, &*connect_target()?, env.repo, &to, &rp.snapshot)?;
        Ok(("done", done))
    })?;

    // 4. Start.
    run.step("start", |_| {
        let changes = connect_target()?.start(None)?;
        // The app writes there from now on: what was staged is no longer what the site holds.
        if state.staged.as_ref().is_some_and(|s| s.site == to) {
            state.staged = None;
            st.save_state(&state)?;
        }
        Ok(("done", summary(&format!("{to} started"), &changes)))
    })?;

    // 5. Health, then the plan's post_restore hooks (their own step, so a finished one is never
    // run again on resume).
    let address = site_address(env.plan, &to)?;
    run.step("health", |_| wait_healthy(app, &address, opts.health_timeout))?;
    if !app.hooks.post_restore.is_empty() {
        run.step("hooks", |_| {
            let lines = hooks::run(
                &*connect_target()?,
                app,
                &to,
                "post_restore",
                &app.hooks.post_restore,
                "",
            )?;
            Ok(("done", lines.join("; ")))
        })?;
    }

    // 6. Traffic.
    run.step("traffic", |op| match (env.router)(app)? {
        None => Ok(("skipped", "the plan has no traffic section for this app".into())),
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
                reason: e.to_string(),
            })?;
            Ok(("done", format!("{} now sends traffic to {to}", r.describe())))
        }
    })?;

    // 7. Verify.
    run.step("verify", |_| verify(app, &address))?;

    let mut op = run.op;
    op.status = "done".into();
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
    let op = Operation {
        id: format!("{}-drill", new_id(now)),
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
        status: "running".into(),
        error: None,
        resumed: 0,
    };
    st.save_operation(&op)?;
    let mut run = Runner { env, store: st, op };
    let prefix = format!("drill-{}-", run.op.id[9..15].to_string() + &run.op.id[17..21]);
    let address = site_address(env.plan, &site)?;
    let result = (|| {
        run.step("data", |op| {
            let rp = latest_recovery_point(env.repo, &op.plan, &op.app)?
                .ok_or_else(|| OrchestratorError::NoRecoveryPoint { app: op.app.clone() })?;
            let done = platform.stage(env.repo, &rp.snapshot, &prefix, None)?;
            op.recovery_point = Some(rp);
            Ok(("done", format!("{done} under the prefix {prefix}")))
        })?;
        run.step("start", |_| {
            let changes = platform.start(Some(&prefix))?;
            Ok(("done", summary("drill copy started", &changes)))
        })?;
        run.step("health", |_| wait_healthy(app, &address, opts.health_timeout))?;
        if !app.hooks.post_restore.is_empty() {
            run.step("hooks", |_| {
                let lines = hooks::run(&*platform, app, &site, "post_restore", &app.hooks.post_restore, &prefix)?;
                Ok(("done", lines.join("; ")))
            })?;
        }
        run.step("verify", |_| verify(app, &address))
    })();
    // Tear down whatever happened.
    let teardown = run.step("teardown", |_| {
        let removed = platform.remove(&prefix)?;
        Ok(("done", format!("{} objects removed", removed.len())))
    });
    let mut op = run.op;
    op.status = if result.is_ok() && teardown.is_ok() {
        "done"
    } else {
        "failed"
    }
    .into();
    if let Err(e) = result.and(teardown) {
        op.error = Some(e.to_string());
    }
    run.store.save_operation(&op)?;
    Ok(op)
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
    snapshot: &str,
) -> Result<String, OrchestratorError> {
    let base = state.staged.take().filter(|s| s.site == site).map(|s| s.snapshot);
    if base.is_some() {
        st.save_state(state)?;
    }
    let done = platform.stage(repo, snapshot, "", base.as_deref())?;
    state.staged = Some(Staged {
        site: site.to_string(),
        snapshot: snapshot.to_string(),
    });
    st.save_state(state)?;
    Ok(done)
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
fn wait_healthy(app: &App, address: &str, limit: Duration) -> Result<(&'static str, String), OrchestratorError> {
    let Some(first) = app.health.first() else {
        return Ok(("skipped", "the plan has no health probes for this app".into()));
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
                        "done",
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

fn verify(app: &App, address: &str) -> Result<(&'static str, String), OrchestratorError> {
    if app.verify.is_empty() {
        return Ok(("skipped", "the plan has no verify checks for this app".into()));
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
        Ok(("done", seen.join("; ")))
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
            (env.log)(&format!("{}: snapshot {} of {active}", app.name.value, &id[..8]));
            item.snapshot = Some(id.clone());
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
                let t = (env.connect)(&other, app)?;
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
