//! The long-running control plane of a DR plan: [`Server::serve`] (the plan's backup schedule with
//! its retention, sync rounds and the health watch in one process), [`Server::watch`] and
//! [`Server::witness`], with what they share: where each app is active now ([`ActiveSites`]) and
//! the repository read on the blocking pool within a deadline.
//!
//! Guarantees: every job (a backup round, a sync round, a failover) runs on the blocking pool, so
//! a slow site or repository never stops the other apps' schedules or the watch; a `shutdown`
//! future that completes stops every loop at once, and a job under way is not cut: the runtime
//! that ran the server waits for it when it is dropped (a job not yet started does not start).
//! What happens is told through [`Event`]s, one call each, never printed here.
//!
//! With the plan's `coordination`, several `serve` instances run one plan (one per site and a
//! witness): they elect one leader through etcd, and only the leader backs up, syncs and fails
//! over, each side effect checked against its term; every instance probes and publishes its
//! verdict, and the one on the active site fences the app there when cut off (see [`coord`]).
//!
//! Assumes: a validated plan; a tokio runtime with the blocking pool (any multi-thread runtime).
//! Breaks: without `coordination`, one process per plan: two `serve` of one plan on two machines
//! both back up on the schedule (the repository's locks keep their work apart, not their
//! decisions).
#![forbid(unsafe_code)]

mod active;
mod by_hand;
pub mod coord;
mod trigger;
mod witness;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_orchestrator::ops::{self, Env};
use lifeboat_orchestrator::platform::Connector;
use lifeboat_orchestrator::watch::{self, Watched, WitnessReport};
use lifeboat_orchestrator::{drills, platform, report, schedule, sync, OrchestratorError};
use lifeboat_plan::{App, Plan, Profile};
use lifeboat_repo::Repository;
use lifeboat_traffic::Router;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

pub use active::{ActiveProbe, ActiveSites, REPO_DEADLINE};
pub use by_hand::ByHand;
pub use coord::{Coordination, Instance, QuorumWitness};
pub use trigger::Failover;
pub use witness::{repo_sink, report_loop, RepoWitness, Shared, Sink};

/// How long a scheduled backup or a sync round waits for an app's lock (a failover or a prune
/// holds it) before that round fails.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);

/// Builds an app's traffic router (`None`: the app has no traffic section).
pub type Routers = dyn Fn(&App) -> Result<Option<Box<dyn Router>>, OrchestratorError> + Send + Sync;

/// The traffic routers of the plan's apps, their key and secret files found from `plan_dir`.
pub fn routers(plan_dir: PathBuf) -> Arc<Routers> {
    Arc::new(move |app: &App| match &app.traffic {
        None => Ok(None),
        Some(t) => lifeboat_traffic::router(t, &plan_dir)
            .map(Some)
            .map_err(|e| OrchestratorError::Traffic {
                app: app.name.value.clone(),
                source: Box::new(e),
            }),
    })
}

/// The apps a command works on: `only`, or every app of profile `dr`.
pub fn apps<'p>(plan: &'p Plan, only: Option<&str>) -> Result<Vec<&'p App>, ServerError> {
    if let Some(a) = only {
        return plan.app(a).map(|app| vec![app]).ok_or_else(|| ServerError::NoApp {
            plan: plan.metadata.name.clone(),
            app: a.to_string(),
            known: plan.apps.iter().map(|a| a.name.value.clone()).collect(),
        });
    }
    Ok(plan.apps.iter().filter(|a| a.profile == Profile::Dr).collect())
}

/// Why the server cannot start. Once it runs, failures of single rounds are [`Event`]s.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The plan has no such app.
    #[error("plan {plan} has no app {app:?} (apps: {})", known.join(", "))]
    NoApp {
        plan: String,
        app: String,
        known: Vec<String>,
    },
    /// No app has a backup or drill schedule, sync is off and nothing is watched.
    #[error(
        "nothing to serve for plan {plan}: no app has a backup or drill schedule, sync is off and nothing is watched"
    )]
    NothingToServe { plan: String },
    /// No app in scope has health probes.
    #[error("no app of plan {plan} has health probes to watch")]
    NothingToWatch { plan: String },
    /// The plan has no `coordination` section, so there is nothing to join.
    #[error("plan {plan} has no coordination section: serve runs as a single process")]
    NoCoordination { plan: String },
    /// An instance name is empty or holds a '/'.
    #[error("{name:?} cannot name a serve instance: give --instance a plain name")]
    InstanceName { name: String },
    /// The coordination service cannot be used (unreachable, refusing, bad TLS files).
    #[error("{source}; serve did not start and did nothing (check the plan's coordination endpoints)")]
    Coordination {
        #[source]
        source: lifeboat_etcd::coord::CoordError,
    },
    /// Another plan of the same name already runs on this etcd.
    #[error("another plan named {plan} runs on this etcd (instance {instance}, with other sites or apps); give each plan its own metadata.name; serve did not start")]
    TwoPlans { plan: String, instance: String },
    /// An instance of this name already runs.
    #[error("a serve instance named {name} already runs for this plan; give each instance its own --instance name; serve did not start")]
    InstanceRunning { name: String },
    /// A command run by hand on a coordinated plan could not take its leadership from etcd.
    #[error(
        "{source}; nothing was done: a command on plan {plan} acts only while it leads (when no etcd endpoint \
         answers, `--without-coordination` acts without it)"
    )]
    ByHand {
        plan: String,
        #[source]
        source: lifeboat_etcd::coord::CoordError,
    },
    /// A command run by hand while another holds the plan's leadership (a `serve` instance, or
    /// another command).
    #[error(
        "{leader} leads plan {plan} (term {term}) and only the leader acts: nothing was done here; ask the leading \
         serve instance through its API (POST /api/v1/apps/APP/backup, drill, failover or failback), or stop the \
         plan's serve instances first"
    )]
    Led { plan: String, leader: String, term: i64 },
    /// `--without-coordination` while etcd answers: there is a leadership to take or a leader to ask.
    #[error(
        "the etcd of plan {plan} answers ({}): --without-coordination is only for when no etcd endpoint answers; \
         nothing was done",
        leader.as_deref().map_or("nobody leads".to_string(), |l| format!("{l} leads"))
    )]
    CoordinationAnswers { plan: String, leader: Option<String> },
    /// `watch` or `watch --witness` of a plan whose instances coordinate: only their leader may act.
    #[error("plan {plan} has a coordination section: run `lifeboat serve` on each site instead (its instances probe, vote and elect the one that fails over)")]
    Coordinated { plan: String },
    /// The time of an app's last backup cannot be read, so its schedule cannot be placed.
    #[error("the recovery points of app {app} cannot be read")]
    RecoveryPoints {
        app: String,
        #[source]
        source: Box<OrchestratorError>,
    },
    /// The app's drill reports cannot be read, so its drill schedule cannot be placed.
    #[error("the drill reports of app {app} cannot be read")]
    DrillReports {
        app: String,
        #[source]
        source: Box<OrchestratorError>,
    },
}

/// What the server reports as it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `app` is backed up every `every`, the first time in `first`.
    Scheduled {
        app: String,
        every: Duration,
        first: Duration,
    },
    /// A scheduled backup of `app` (with its retention) ended: what it did, in one line.
    BackedUp { app: String, summary: String },
    /// A sync round corrected something or failed: what, in one line.
    Synced { summary: String },
    /// The watch started for `apps` apps, with or without a witness to agree.
    Watching { apps: usize, witness: bool },
    /// The watch could not start (serve goes on with the rest).
    NotWatching { why: String },
    /// The witness started reporting for `apps` apps.
    Witnessing { apps: usize },
    /// The witness wrote no report for `app` this round.
    WitnessSkipped { app: String, why: String },
    /// What the watch of one app saw or did.
    Watch(watch::Event),
    /// A line of a failover or resumption under way (a step started or ended).
    Progress { line: String },
    /// The shutdown future completed: no new rounds; jobs under way finish.
    Stopping,
    /// This instance leads (coordination), in this term: it backs up, syncs and fails over.
    Leading { term: i64 },
    /// Another instance leads: this one probes and reports.
    Following { leader: String, term: i64 },
    /// This instance cannot confirm its lease: it does not lead (and fences its site if this lasts).
    CutOff { why: String },
    /// This instance stopped leading: its leader's rounds stopped.
    StandingBy,
    /// Cut off for longer than `self_fence_after`: the app was stopped on this instance's site.
    SelfFenced { app: String, site: String, detail: String },
    /// The self-fence of an app failed (it may still run there).
    SelfFenceFailed { app: String, site: String, error: String },
    /// The backup or drill schedule of an app could not be placed (its recovery points or drill
    /// reports cannot be read).
    NotScheduled { app: String, why: String },
    /// `app` is drilled every `every`, the first time in `first`.
    DrillScheduled {
        app: String,
        every: Duration,
        first: Duration,
    },
    /// A scheduled drill of `app` ended, passed or not: what it found, in one line.
    Drilled { app: String, passed: bool, summary: String },
    /// This process's own probes of `app` on `site` crossed a threshold: the verdict it reports
    /// (to etcd or the repository) is now down, or up again.
    Verdict { app: String, site: String, down: bool },
}

impl Event {
    /// The event's kind, for structured logs (`--log-format json`).
    pub fn kind(&self) -> &'static str {
        use watch::Event as W;
        match self {
            Event::Scheduled { .. } => "scheduled",
            Event::BackedUp { .. } => "backed_up",
            Event::Synced { .. } => "synced",
            Event::Watching { .. } => "watching",
            Event::NotWatching { .. } => "not_watching",
            Event::Witnessing { .. } => "witnessing",
            Event::WitnessSkipped { .. } => "witness_skipped",
            Event::Watch(W::Failing { .. }) => "probe_failed",
            Event::Watch(W::Down { .. }) => "down",
            Event::Watch(W::Up { .. }) => "up",
            Event::Watch(W::WitnessRefused { .. }) => "failover_refused",
            Event::Watch(W::FailedOver { .. }) => "failed_over",
            Event::Watch(W::FailoverFailed { .. }) => "failover_failed",
            Event::Watch(W::Resumed { .. }) => "resumed",
            Event::Progress { .. } => "progress",
            Event::Stopping => "stopping",
            Event::Leading { .. } => "leading",
            Event::Following { .. } => "following",
            Event::CutOff { .. } => "cut_off",
            Event::StandingBy => "standing_by",
            Event::SelfFenced { .. } => "self_fenced",
            Event::SelfFenceFailed { .. } => "self_fence_failed",
            Event::NotScheduled { .. } => "not_scheduled",
            Event::DrillScheduled { .. } => "drill_scheduled",
            Event::Drilled { passed: true, .. } => "drill_passed",
            Event::Drilled { passed: false, .. } => "drill_failed",
            Event::Verdict { down: true, .. } => "verdict_down",
            Event::Verdict { down: false, .. } => "verdict_up",
        }
    }

    /// The app it is about, if one.
    pub fn app(&self) -> Option<&str> {
        use watch::Event as W;
        match self {
            Event::Scheduled { app, .. }
            | Event::BackedUp { app, .. }
            | Event::WitnessSkipped { app, .. }
            | Event::SelfFenced { app, .. }
            | Event::SelfFenceFailed { app, .. }
            | Event::NotScheduled { app, .. }
            | Event::DrillScheduled { app, .. }
            | Event::Drilled { app, .. }
            | Event::Verdict { app, .. }
            | Event::Watch(
                W::Failing { app, .. }
                | W::Down { app }
                | W::Up { app }
                | W::WitnessRefused { app, .. }
                | W::FailedOver { app, .. }
                | W::FailoverFailed { app, .. }
                | W::Resumed { app, .. },
            ) => Some(app),
            _ => None,
        }
    }

    /// Whether it reports a failure (logged as a warning).
    pub fn is_failure(&self) -> bool {
        use watch::Event as W;
        matches!(
            self,
            Event::NotWatching { .. }
                | Event::CutOff { .. }
                | Event::SelfFenceFailed { .. }
                | Event::NotScheduled { .. }
                | Event::Drilled { passed: false, .. }
                | Event::Verdict { down: true, .. }
                | Event::Watch(W::FailoverFailed { .. } | W::Failing { .. })
        ) || matches!(self, Event::BackedUp { summary, .. } | Event::Synced { summary } if summary.contains("FAILED"))
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use watch::Event as W;
        match self {
            Event::Scheduled { app, every, first } => write!(f, "{app}: backup every {every:?}, next in {first:?}"),
            Event::BackedUp { summary, .. } | Event::Synced { summary } => f.write_str(summary),
            Event::Watching { apps, witness: true } => {
                write!(f, "watching {apps} apps (a witness must agree before a failover)")
            }
            Event::Watching { apps, witness: false } => write!(
                f,
                "watching {apps} apps (no witness: a primary that cannot be reached stays active until \
                 `failover --fenced-by-hand`)"
            ),
            Event::NotWatching { why } => write!(f, "not watching: {why}"),
            Event::Witnessing { apps } => write!(f, "witness for {apps} apps: reporting to the repository"),
            Event::WitnessSkipped { app, why } => write!(f, "witness: {app}: {why}"),
            Event::Watch(e) => match e {
                W::Failing { app, failures, error } => write!(f, "{app}: probe failed ({failures} in a row): {error}"),
                W::Down { app } => write!(f, "{app}: DOWN (failure threshold reached)"),
                W::Up { app } => write!(f, "{app}: up again"),
                W::WitnessRefused { app, why } => write!(f, "{app}: no failover: {why}"),
                W::FailedOver { app, detail } => write!(f, "{app}: failed over\n{detail}"),
                W::FailoverFailed { app, error } => write!(f, "{app}: failover failed: {error}"),
                W::Resumed { app, kind, detail } => {
                    write!(f, "{app}: unfinished {} resumed and finished\n{detail}", kind.as_str())
                }
            },
            Event::Progress { line } => f.write_str(line),
            Event::Stopping => f.write_str("stopping: no new rounds; jobs under way finish first"),
            Event::Leading { term } => write!(f, "leading (term {term}): backups, sync and failover run here"),
            Event::Following { leader, term } => {
                write!(
                    f,
                    "following {leader} (term {term}): probing and reporting, standing by"
                )
            }
            Event::CutOff { why } => write!(f, "not leading: {why}"),
            Event::StandingBy => f.write_str("standing by: this instance's leader rounds stopped"),
            Event::SelfFenced { app, site, detail } => {
                write!(f, "{app}: SELF-FENCED on {site} (cut off from the quorum): {detail}")
            }
            Event::SelfFenceFailed { app, site, error } => {
                write!(
                    f,
                    "{app}: self-fence on {site} FAILED (it may still run there): {error}"
                )
            }
            Event::NotScheduled { app, why } => write!(f, "{app}: not scheduled: {why}"),
            Event::DrillScheduled { app, every, first } => {
                write!(
                    f,
                    "{app}: drill every {}, next in {}",
                    drills::human(*every),
                    drills::human(*first)
                )
            }
            Event::Drilled { summary, .. } => f.write_str(summary),
            Event::Verdict { app, site, down: true } => {
                write!(f, "{app}: verdict: {site} DOWN (this instance's probes)")
            }
            Event::Verdict { app, site, down: false } => write!(f, "{app}: verdict: {site} up again"),
        }
    }
}

/// What [`Server::serve`] runs.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Only this app (default: every app of profile `dr`).
    pub only: Option<String>,
    /// Watch the apps' health and fail over.
    pub watch: bool,
    /// A sync round this often; zero: none.
    pub sync_every: Duration,
}

/// One plan's control plane: its sites, repository and traffic routers, and where its events go.
pub struct Server {
    pub plan: Arc<Plan>,
    /// The plan file's directory: relative key and secret files are found from there.
    pub plan_dir: PathBuf,
    pub repo: Arc<Repository>,
    pub connect: Arc<Connector>,
    pub routers: Arc<Routers>,
    pub events: Arc<dyn Fn(Event) + Send + Sync>,
    /// This instance's part in the plan's coordination (none: a single process).
    pub coordination: Option<Arc<Coordination>>,
    /// The leadership of a command run by hand on a coordinated plan (see [`ByHand`]).
    pub by_hand: Option<Arc<ByHand>>,
}

impl Server {
    /// A server of the plan's real sites and traffic routers.
    pub fn new(
        plan: Plan,
        plan_dir: PathBuf,
        repo: Repository,
        events: Arc<dyn Fn(Event) + Send + Sync>,
    ) -> Arc<Server> {
        Arc::new(Server {
            connect: platform::connector(&plan),
            routers: routers(plan_dir.clone()),
            plan: Arc::new(plan),
            plan_dir,
            repo: Arc::new(repo),
            events,
            coordination: None,
            by_hand: None,
        })
    }

    fn say(&self, e: Event) {
        (self.events)(e)
    }

    /// Runs `f` with an [`Env`] of this server; with `progress`, the operation's lines go out as
    /// [`Event::Progress`], else nowhere (a round reports in one line of its own).
    pub fn with_env<R>(&self, progress: bool, f: impl FnOnce(&Env) -> R) -> R {
        let events = self.events.clone();
        let log = move |line: &str| {
            if progress {
                events(Event::Progress { line: line.to_string() })
            }
        };
        let env = Env {
            plan: &self.plan,
            plan_dir: self.plan_dir.clone(),
            repo: &self.repo,
            connect: self.connect.clone(),
            router: &*self.routers,
            log: &log,
            leadership: match (&self.coordination, &self.by_hand) {
                (Some(c), _) => Some(c.clone() as Arc<dyn lifeboat_orchestrator::leadership::Leadership>),
                (None, Some(h)) => Some(h.clone() as Arc<dyn lifeboat_orchestrator::leadership::Leadership>),
                (None, None) => None,
            },
        };
        f(&env)
    }

    /// Runs `f` on the blocking pool (the platforms block on runtimes of their own).
    fn blocking<R: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&Env) -> R + Send + 'static) -> JoinHandle<R> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.with_env(false, f))
    }

    /// `serve`: each app's backup schedule with its retention, a sync round every
    /// `opts.sync_every`, and (with `opts.watch`) the watch, until `shutdown` completes.
    pub async fn serve(
        self: &Arc<Self>,
        opts: &ServeOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        if let Some(c) = self.coordination.clone() {
            return self.serve_coordinated(c, opts, shutdown).await;
        }
        let mut tasks = Vec::new();
        for a in apps(&self.plan, opts.only.as_deref())? {
            tasks.extend(self.schedule(a)?);
            tasks.extend(self.drill_schedule(a)?);
        }
        if !opts.sync_every.is_zero() {
            tasks.push(self.sync_rounds(opts.only.clone(), opts.sync_every));
        }
        if opts.watch {
            match self.watch_tasks(opts.only.as_deref(), None) {
                Ok(t) => tasks.extend(t),
                Err(e) => self.say(Event::NotWatching { why: e.to_string() }),
            }
        }
        if tasks.is_empty() {
            return Err(ServerError::NothingToServe {
                plan: self.plan.metadata.name.clone(),
            });
        }
        self.run_until(tasks, shutdown).await;
        Ok(())
    }

    /// `serve` as one of the plan's coordinated instances: the election, this instance's probes
    /// with their verdicts published in etcd, its self-fence (with a site), and the leader's
    /// rounds while it leads. At shutdown it leaves: resigns (another instance takes over at
    /// once), removes its guard and ends its lease; a guard that cannot be removed is honoured
    /// by fencing the site before exiting.
    async fn serve_coordinated(
        self: &Arc<Self>,
        c: Arc<Coordination>,
        opts: &ServeOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        apps(&self.plan, opts.only.as_deref())?;
        let sites = Arc::new(ActiveSites::new(self.plan.clone(), self.repo.clone()));
        let mut tasks = vec![tokio::spawn(c.clone().run(self.events.clone()))];
        let mut shared = None;
        if opts.watch {
            match self.watched(opts.only.as_deref()) {
                Ok(watched) => {
                    let to = c.clone();
                    let sink: Sink = Arc::new(move |app: &str, r: &WitnessReport| to.publish_verdict(app, r));
                    let quorum = QuorumWitness::new(c.clone(), sites.clone(), verdict_max_age(&watched));
                    let sh = Shared::new(Arc::new(quorum));
                    for w in watched {
                        tasks.push(tokio::spawn(report_loop(
                            w,
                            sites.clone(),
                            sink.clone(),
                            self.events.clone(),
                            Some(sh.clone()),
                        )));
                    }
                    shared = Some(sh);
                }
                Err(e) => self.say(Event::NotWatching { why: e.to_string() }),
            }
        }
        if let Some(site) = c.me.site.clone() {
            tasks.push(tokio::spawn(self.clone().self_fence_loop(
                c.clone(),
                sites.clone(),
                site,
                opts.only.clone(),
            )));
        }
        tasks.push(tokio::spawn(self.clone().lead_while_elected(
            c.clone(),
            opts.clone(),
            shared,
        )));
        self.run_until(tasks, shutdown).await;
        let left = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.leave()).await
        };
        match (left, c.me.site.clone()) {
            (Ok(Ok(())), _) | (_, None) => {}
            (Ok(Err(e)), Some(site)) => {
                self.say(Event::CutOff {
                    why: format!("the guard of site {site} cannot be removed ({e}): fencing the site before exiting"),
                });
                self.fence_site(&sites, &site, opts.only.as_deref()).await;
            }
            (Err(e), Some(site)) => {
                self.say(Event::CutOff {
                    why: format!("leaving failed ({e}): fencing site {site} before exiting"),
                });
                self.fence_site(&sites, &site, opts.only.as_deref()).await;
            }
        }
        Ok(())
    }

    /// Runs the leader's rounds (backup schedules, sync, the watch that fails over) while this
    /// instance leads, and stops them as soon as it does not (a job under way is stopped by its
    /// next fenced step).
    async fn lead_while_elected(self: Arc<Self>, c: Arc<Coordination>, opts: ServeOptions, shared: Option<Shared>) {
        /// The leader's rounds, aborted when dropped (also when this task is aborted).
        struct Rounds(Vec<JoinHandle<()>>);
        impl Drop for Rounds {
            fn drop(&mut self) {
                self.0.iter().for_each(JoinHandle::abort);
            }
        }
        let mut rx = c.subscribe();
        let mut rounds: Option<Rounds> = None;
        loop {
            let leads = rx.borrow_and_update().is_some();
            if leads && rounds.is_none() {
                rounds = Some(Rounds(self.leader_rounds(&opts, shared.as_ref())));
            } else if !leads && rounds.is_some() {
                rounds = None;
                self.say(Event::StandingBy);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// What only the leader runs; each schedule placed by the app's last recovery point, so a new
    /// leader keeps the old one's schedule.
    fn leader_rounds(self: &Arc<Self>, opts: &ServeOptions, shared: Option<&Shared>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        for a in apps(&self.plan, opts.only.as_deref()).unwrap_or_default() {
            for placed in tokio::task::block_in_place(|| [self.schedule(a), self.drill_schedule(a)]) {
                match placed {
                    Ok(t) => tasks.extend(t),
                    Err(e) => self.say(Event::NotScheduled {
                        app: a.name.value.clone(),
                        why: e.to_string(),
                    }),
                }
            }
        }
        if !opts.sync_every.is_zero() {
            tasks.push(self.sync_rounds(opts.only.clone(), opts.sync_every));
        }
        if opts.watch {
            if let Ok(t) = self.watch_tasks(opts.only.as_deref(), shared) {
                tasks.extend(t);
            }
        }
        tasks
    }

    /// Fences `site` once each time this instance has been cut off for longer than
    /// `self_fence_after`; while in contact, refreshes where each app is active every few seconds
    /// (the fence uses what it last read: the repository may be cut off too).
    async fn self_fence_loop(
        self: Arc<Self>,
        c: Arc<Coordination>,
        sites: Arc<ActiveSites>,
        site: String,
        only: Option<String>,
    ) {
        const REFRESH: Duration = Duration::from_secs(5);
        let mut fenced = false;
        let mut refreshed: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if c.cut_off_for() <= c.self_fence_after {
                fenced = false;
                if refreshed.is_none_or(|at| at.elapsed() >= REFRESH) {
                    refreshed = Some(tokio::time::Instant::now());
                    let sites = sites.clone();
                    let names: Vec<String> = apps(&self.plan, only.as_deref())
                        .unwrap_or_default()
                        .iter()
                        .map(|a| a.name.value.clone())
                        .collect();
                    tokio::spawn(async move {
                        for app in names {
                            let _ = sites.active(&app).await;
                        }
                    });
                }
                continue;
            }
            if !fenced {
                fenced = true;
                self.fence_site(&sites, &site, only.as_deref()).await;
            }
        }
    }

    /// Stops, on `site`, every app in scope that was last seen active there (or, never seen, whose
    /// primary it is), all at once.
    async fn fence_site(self: &Arc<Self>, sites: &ActiveSites, site: &str, only: Option<&str>) {
        let jobs: Vec<_> = apps(&self.plan, only)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| {
                sites
                    .last_known(&a.name.value)
                    .unwrap_or_else(|| a.primary.value.clone())
                    == site
            })
            .map(|a| {
                let (app, on) = (a.name.value.clone(), site.to_string());
                let job = self.blocking({
                    let (app, on) = (app.clone(), on.clone());
                    move |env| ops::self_fence(env, &app, &on)
                });
                (app, on, job)
            })
            .collect();
        for (app, site, job) in jobs {
            match job.await {
                Ok(Ok(detail)) => self.say(Event::SelfFenced { app, site, detail }),
                Ok(Err(e)) => self.say(Event::SelfFenceFailed {
                    app,
                    site,
                    error: e.to_string(),
                }),
                Err(e) => self.say(Event::SelfFenceFailed {
                    app,
                    site,
                    error: e.to_string(),
                }),
            }
        }
    }

    /// `watch`: each app's health probes where it is active, and a failover when they fail (and
    /// the witness agrees), until `shutdown` completes.
    pub async fn watch(
        self: &Arc<Self>,
        only: Option<&str>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        self.not_coordinated()?;
        let tasks = self.watch_tasks(only, None)?;
        self.run_until(tasks, shutdown).await;
        Ok(())
    }

    /// `watch --witness`: each app probed where it is active and a report written into the
    /// repository every round, until `shutdown` completes.
    pub async fn witness(
        self: &Arc<Self>,
        only: Option<&str>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        self.not_coordinated()?;
        let watched = self.watched(only)?;
        self.say(Event::Witnessing { apps: watched.len() });
        let sites = Arc::new(ActiveSites::new(self.plan.clone(), self.repo.clone()));
        let sink = repo_sink(sites.clone());
        let tasks = watched
            .into_iter()
            .map(|w| tokio::spawn(report_loop(w, sites.clone(), sink.clone(), self.events.clone(), None)))
            .collect();
        self.run_until(tasks, shutdown).await;
        Ok(())
    }

    /// `watch` alone must not act on a plan whose instances coordinate.
    fn not_coordinated(&self) -> Result<(), ServerError> {
        match self.plan.coordination {
            Some(_) => Err(ServerError::Coordinated {
                plan: self.plan.metadata.name.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn run_until(&self, tasks: Vec<JoinHandle<()>>, shutdown: impl Future<Output = ()>) {
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::select! {
            _ = all => {}
            _ = shutdown => {
                self.say(Event::Stopping);
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
            }
        }
    }

    /// The backup schedule of `a` (none without a `backup` section), its first round placed by
    /// the time of its last recovery point.
    fn schedule(self: &Arc<Self>, a: &App) -> Result<Option<JoinHandle<()>>, ServerError> {
        let Some(policy) = &a.backup else { return Ok(None) };
        let every = policy.every.value.0;
        let name = a.name.value.clone();
        let since = ops::latest_recovery_point(&self.repo, &self.plan.metadata.name, &name)
            .map_err(|e| ServerError::RecoveryPoints {
                app: name.clone(),
                source: Box::new(e),
            })?
            .map(|rp| {
                (OffsetDateTime::now_utc() - rp.time)
                    .try_into()
                    .unwrap_or(Duration::ZERO)
            });
        let first = schedule::first_delay(every, since);
        self.say(Event::Scheduled {
            app: name.clone(),
            every,
            first,
        });
        Ok(Some(self.rounds(
            name,
            every,
            first,
            |env, app| backup_round(env, app, "schedule"),
            |app, done| Event::BackedUp {
                summary: done.unwrap_or_else(|e| format!("{app}: backup task failed: {e}")),
                app,
            },
        )))
    }

    /// `job` of `app` on the blocking pool every `every`, first after `first`, each reported as
    /// the event `report` makes of its result.
    fn rounds<R: Send + 'static>(
        self: &Arc<Self>,
        app: String,
        every: Duration,
        first: Duration,
        job: fn(&Env, &str) -> R,
        report: fn(String, Result<R, tokio::task::JoinError>) -> Event,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(schedule::every(every, first, move || {
            let (me, app) = (me.clone(), app.clone());
            async move {
                let done = me
                    .blocking({
                        let app = app.clone();
                        move |env| job(env, &app)
                    })
                    .await;
                me.say(report(app, done));
            }
        }))
    }

    /// The drill schedule of `a` (none without `drill.every`), its first drill placed by the
    /// start of its last one, so a new leader keeps the old one's rhythm.
    fn drill_schedule(self: &Arc<Self>, a: &App) -> Result<Option<JoinHandle<()>>, ServerError> {
        let Some(every) = a.drill.every.as_ref().map(|e| e.value.0) else {
            return Ok(None);
        };
        let name = a.name.value.clone();
        let history = drills::history(&self.repo, &self.plan, a).map_err(|e| ServerError::DrillReports {
            app: name.clone(),
            source: Box::new(e),
        })?;
        let first = schedule::first_delay(every, drills::since_last(&history, OffsetDateTime::now_utc()));
        self.say(Event::DrillScheduled {
            app: name.clone(),
            every,
            first,
        });
        Ok(Some(self.rounds(
            name,
            every,
            first,
            |env, app| drill_round(env, app, "scheduled drill"),
            |app, done| {
                let (passed, summary) = done.unwrap_or_else(|e| (false, format!("{app}: drill task FAILED: {e}")));
                Event::Drilled { app, passed, summary }
            },
        )))
    }

    /// A sync round every `every`; a round that corrected nothing says nothing.
    fn sync_rounds(self: &Arc<Self>, only: Option<String>, every: Duration) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let only = only.clone();
                let job = me.blocking(move |env| sync_round(env, only.as_deref()));
                match job.await {
                    Ok(summary) if summary.is_empty() => {}
                    Ok(summary) => me.say(Event::Synced { summary }),
                    Err(e) => me.say(Event::Synced {
                        summary: format!("sync task failed: {e}"),
                    }),
                }
            }
        })
    }

    /// The apps in scope that have health probes, as the watch sees them.
    fn watched(&self, only: Option<&str>) -> Result<Vec<Watched>, ServerError> {
        let watched: Vec<Watched> = apps(&self.plan, only)?
            .into_iter()
            .filter_map(|a| {
                let h = a.health.first()?;
                Some(Watched {
                    app: a.name.value.clone(),
                    interval: h.interval.value.0,
                    timeout: h.timeout.0,
                    failure_threshold: h.failure_threshold.value,
                    success_threshold: h.success_threshold.value,
                })
            })
            .collect();
        if watched.is_empty() {
            return Err(ServerError::NothingToWatch {
                plan: self.plan.metadata.name.clone(),
            });
        }
        Ok(watched)
    }

    /// The watch of each app; a leader's (`shared`: its instance's probers) starts where its own
    /// probes are and asks the quorum they keep fresh.
    fn watch_tasks(
        self: &Arc<Self>,
        only: Option<&str>,
        shared: Option<&Shared>,
    ) -> Result<Vec<JoinHandle<()>>, ServerError> {
        let watched = self.watched(only)?;
        let sites = Arc::new(ActiveSites::new(self.plan.clone(), self.repo.clone()));
        let witness: Option<Arc<dyn watch::Witness>> = match (shared, &self.coordination, &self.plan.witness) {
            (Some(sh), ..) => Some(sh.quorum.clone()),
            (None, Some(c), _) => Some(Arc::new(QuorumWitness::new(
                c.clone(),
                sites.clone(),
                verdict_max_age(&watched),
            ))),
            (None, None, Some(w)) => Some(Arc::new(RepoWitness::new(sites.clone(), w.max_age.0))),
            (None, None, None) => None,
        };
        self.say(Event::Watching {
            apps: watched.len(),
            witness: witness.is_some(),
        });
        let trigger: Arc<dyn watch::Trigger> = Arc::new(Failover(self.clone()));
        let probe: Arc<dyn watch::Prober> = Arc::new(ActiveProbe(sites));
        let events = self.events.clone();
        let events: Arc<dyn Fn(watch::Event) + Send + Sync> = Arc::new(move |e| events(Event::Watch(e)));
        Ok(watched
            .into_iter()
            .map(|w| {
                let seed = shared.map(|sh| sh.seed(&w.app)).unwrap_or_default();
                tokio::spawn(watch::watch_app_from(
                    w,
                    seed,
                    probe.clone(),
                    witness.clone(),
                    trigger.clone(),
                    events.clone(),
                ))
            })
            .collect())
    }
}

/// How long a serve instance's verdict counts as fresh: it is republished every probe interval,
/// three missed make it stale.
fn verdict_max_age(watched: &[Watched]) -> Duration {
    let slowest = watched.iter().map(|w| w.interval).max().unwrap_or_default();
    (slowest * 3).max(Duration::from_secs(2))
}

/// One backup of `app` by plan and its retention, started `by` (`schedule`, `api:NAME`), in one
/// line (a failure says FAILED).
pub fn backup_round(env: &Env, app: &str, by: &str) -> String {
    let mut line = match ops::backup_plan(env, Some(app), LOCK_WAIT, by) {
        Ok(items) => items
            .iter()
            .map(|i| match (&i.snapshot, &i.error) {
                (_, Some(e)) => format!("{}: backup FAILED on {}: {e}", i.app, i.site),
                (Some(s), None) => format!("{}: snapshot {} of {}", i.app, &s[..8.min(s.len())], i.site),
                (None, None) => format!("{}: nothing backed up", i.app),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("{app}: backup FAILED: {e}"),
    };
    let Some(a) = env.plan.app(app) else { return line };
    match schedule::apply_retention(env, a, LOCK_WAIT) {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => line += &format!("; retention removed {}", removed.join(", ")),
        Err(e) => line += &format!("; retention FAILED: {e}"),
    }
    line
}

/// One scheduled drill of `app` (on its `drill.site`, else its standby): whether it passed, and
/// what it found in one line. Its report is the drill's operation in the repository.
pub fn drill_round(env: &Env, app: &str, reason: &str) -> (bool, String) {
    let opts = ops::Options {
        reason: reason.into(),
        ..Default::default()
    };
    let Some(a) = env.plan.app(app) else {
        return (false, format!("{app}: drill FAILED: no such app"));
    };
    match ops::drill(env, app, &opts) {
        Ok(op) => {
            let (rto, rpo) = report::objectives(a);
            let problems = report::drill_problems(&op, rto, rpo);
            let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} s"));
            let figures = format!("RTO {}, RPO {}", secs(report::rto_seconds(&op)), secs(op.rpo_seconds()));
            if op.status == lifeboat_orchestrator::journal::OpStatus::Done && problems.is_empty() {
                (true, format!("{app}: drill {} on {} passed ({figures})", op.id, op.to))
            } else {
                let why = if problems.is_empty() {
                    op.error.clone().unwrap_or_default()
                } else {
                    problems.join("; ")
                };
                (
                    false,
                    format!("{app}: drill {} on {} FAILED ({figures}): {why}", op.id, op.to),
                )
            }
        }
        Err(e) => (false, format!("{app}: drill FAILED: {e}")),
    }
}

/// One sync round: what it corrected or why it failed, per app, in one line (empty: nothing).
fn sync_round(env: &Env, only: Option<&str>) -> String {
    match sync::sync_plan(env, only, false, LOCK_WAIT) {
        Ok(items) => items
            .iter()
            .filter(|i| i.error.is_some() || !i.corrected.is_empty())
            .map(|i| match &i.error {
                Some(e) => format!("{}: sync FAILED: {e}", i.app),
                None => format!("{}: sync corrected {}", i.app, i.corrected.join(", ")),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("sync FAILED: {e}"),
    }
}

/// Completes at the first SIGTERM or SIGINT (a service manager's stop, Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the default actions stay: the process ends at once.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_orchestrator::journal::{AppState, Store};
    use lifeboat_repo::keys::KdfParams;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    struct World {
        dir: tempfile::TempDir,
        server: Arc<Server>,
        events: Arc<Mutex<Vec<Event>>>,
    }

    /// A server of a plan with app `web` on `a` (standby `b`, `app_lines` more of its YAML), over
    /// a repository in a temporary directory; its sites cannot be reached.
    fn world(app_lines: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let kdf = KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        let backend = lifeboat_repo::open_location(dir.path().join("repo").to_str().unwrap()).unwrap();
        let repo = Repository::init(backend, b"pw", kdf).unwrap();
        let yaml = format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: p}}\nrepository: repo\nsites:\n  \
             a: {{docker: {{host: \"unix:///a.sock\", address: 127.0.0.1}}}}\n  b: {{docker: {{host: \"unix:///b.sock\", address: 127.0.0.1}}}}\n\
             apps:\n  - name: web\n    primary: a\n    standby: b\n    select: {{labels: {{app: web}}}}\n{app_lines}"
        );
        let plan = Plan::parse("plan.yaml", &yaml).unwrap();
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let seen = events.clone();
        let server = Arc::new(Server {
            connect: Arc::new(|site: &str, _: &App| {
                Err(OrchestratorError::Unreachable {
                    site: site.to_string(),
                    source: "no route to host".into(),
                })
            }),
            routers: routers(dir.path().to_path_buf()),
            plan: Arc::new(plan),
            plan_dir: dir.path().to_path_buf(),
            repo: Arc::new(repo),
            events: Arc::new(move |e| seen.lock().unwrap().push(e)),
            coordination: None,
            by_hand: None,
        });
        World { dir, server, events }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_job_under_way_at_shutdown_finishes_before_the_runtime_is_gone() {
        let w = world("");
        let rt = runtime();
        let finished = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        rt.block_on(async {
            let f = finished.clone();
            let job = tokio::spawn(async move {
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_millis(300));
                    f.store(true, Ordering::SeqCst);
                })
                .await;
            });
            w.server
                .run_until(vec![job], async {
                    let _ = started_rx.await;
                })
                .await;
        });
        assert_eq!(w.events.lock().unwrap().last(), Some(&Event::Stopping));
        assert!(!finished.load(Ordering::SeqCst), "shutdown waited inside the loop");
        drop(rt);
        assert!(finished.load(Ordering::SeqCst), "the job under way was cut");
    }

    #[test]
    fn serve_runs_a_due_backup_at_once_and_reports_its_failure_in_one_line() {
        let w = world("    backup: {every: 1h}\n");
        let rt = runtime();
        let events = w.events.clone();
        let opts = ServeOptions::default();
        let ran = rt.block_on(w.server.serve(&opts, async move {
            // Until the first round has reported.
            while !events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, Event::BackedUp { .. }))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
        ran.unwrap();
        let events = w.events.lock().unwrap().clone();
        assert_eq!(
            events[0],
            Event::Scheduled {
                app: "web".into(),
                every: Duration::from_secs(3600),
                first: Duration::ZERO
            },
            "no backup yet: the first is due now"
        );
        let Event::BackedUp { app, summary } = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(app, "web");
        assert!(
            summary.starts_with("web: backup FAILED") && summary.contains("site a cannot be reached"),
            "{summary}"
        );
        assert_eq!(events.last(), Some(&Event::Stopping));
    }

    #[test]
    fn serve_with_nothing_to_do_is_refused_and_an_unknown_app_named() {
        let w = world("");
        let rt = runtime();
        let err = rt
            .block_on(w.server.serve(&ServeOptions::default(), std::future::pending()))
            .unwrap_err();
        assert!(matches!(err, ServerError::NothingToServe { .. }), "{err}");
        let opts = ServeOptions {
            only: Some("db".into()),
            ..Default::default()
        };
        let err = rt.block_on(w.server.serve(&opts, std::future::pending())).unwrap_err();
        assert_eq!(err.to_string(), "plan p has no app \"db\" (apps: web)");
        // Watching an app without health probes: serve says so and has nothing else to do.
        let opts = ServeOptions {
            watch: true,
            ..Default::default()
        };
        assert!(rt.block_on(w.server.serve(&opts, std::future::pending())).is_err());
        assert!(
            matches!(&w.events.lock().unwrap()[0], Event::NotWatching { why } if why.contains("no app of plan p has health probes"))
        );
    }

    #[test]
    fn the_active_site_is_the_states_and_the_last_one_read_when_the_state_is_unreadable() {
        let w = world("");
        let rt = runtime();
        let sites = Arc::new(ActiveSites::new(w.server.plan.clone(), w.server.repo.clone()));
        assert_eq!(
            rt.block_on(sites.active("web")),
            Ok("a".to_string()),
            "no state: the primary"
        );
        let store = Store {
            repo: &w.server.repo,
            plan: "p".into(),
            app: "web".into(),
        };
        store
            .save_state(&AppState {
                active: Some("b".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rt.block_on(sites.active("web")), Ok("b".to_string()));
        damage_states(w.dir.path());
        assert_eq!(
            rt.block_on(sites.active("web")),
            Ok("b".to_string()),
            "an unreadable state gives the site last read, never the primary"
        );
        let fresh = Arc::new(ActiveSites::new(w.server.plan.clone(), w.server.repo.clone()));
        let err = rt.block_on(fresh.active("web")).unwrap_err();
        assert!(err.starts_with("the app's state cannot be read"), "{err}");
    }

    /// The drill schedule on a paused clock: placed by the last drill's start (40 minutes ago,
    /// every hour: the first in 20 minutes), then every hour; each failed drill is one failure
    /// event naming why.
    #[tokio::test(start_paused = true)]
    async fn drills_run_on_their_schedule_placed_by_the_last_drill_and_a_failed_one_is_a_failure() {
        use lifeboat_orchestrator::journal::{Kind, OpStatus, Operation};
        let w = world("    drill: {every: 1h}\n");
        let store = Store {
            repo: &w.server.repo,
            plan: "p".into(),
            app: "web".into(),
        };
        let started = OffsetDateTime::now_utc() - Duration::from_secs(40 * 60);
        store
            .save_operation(&Operation {
                id: lifeboat_orchestrator::journal::new_id(started) + "-drill",
                plan: "p".into(),
                app: "web".into(),
                kind: Kind::Drill,
                from: "b".into(),
                to: "b".into(),
                trigger: started,
                reason: "drill".into(),
                detected: None,
                recovery_point: None,
                steps: Vec::new(),
                status: OpStatus::Done,
                error: None,
                resumed: 0,
                prefix: None,
            })
            .unwrap();
        let began = tokio::time::Instant::now();
        let at = Arc::new(Mutex::new(Vec::new()));
        let seen = at.clone();
        let events = w.events.clone();
        let server = Arc::new(Server {
            events: Arc::new(move |e| {
                if matches!(e, Event::Drilled { .. }) {
                    seen.lock().unwrap().push(began.elapsed().as_secs() / 60);
                }
                events.lock().unwrap().push(e)
            }),
            coordination: None,
            by_hand: None,
            plan: w.server.plan.clone(),
            plan_dir: w.server.plan_dir.clone(),
            repo: w.server.repo.clone(),
            connect: w.server.connect.clone(),
            routers: w.server.routers.clone(),
        });
        let until = tokio::time::sleep(Duration::from_secs(2 * 3600 + 30 * 60));
        server.serve(&ServeOptions::default(), until).await.unwrap();
        let events = w.events.lock().unwrap().clone();
        let Event::DrillScheduled { app, every, first } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((app.as_str(), *every), ("web", Duration::from_secs(3600)));
        // 20 minutes less the (wall-clock) time the test took to get here.
        assert!((1190..=1200).contains(&first.as_secs()), "{first:?}");
        assert_eq!(
            *at.lock().unwrap(),
            [19, 79, 139],
            "minutes after the start (a little less than 20, 80, 140)"
        );
        let drilled: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Drilled { .. })).collect();
        for e in drilled {
            let Event::Drilled { app, passed, summary } = e else {
                unreachable!()
            };
            assert!(!passed && e.is_failure() && app == "web", "{e:?}");
            assert!(
                summary.starts_with("web: drill FAILED") && summary.contains("site b cannot be reached"),
                "{summary}"
            );
        }
    }

    /// Overwrites every file of the repository's `dr` directory (journals, states) with junk.
    fn damage_states(dir: &std::path::Path) {
        fn walk(d: &std::path::Path, hit: &mut usize) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, hit);
                } else {
                    std::fs::write(&p, b"junk").unwrap();
                    *hit += 1;
                }
            }
        }
        let mut hit = 0;
        walk(&dir.join("repo/dr"), &mut hit);
        assert!(hit > 0, "no state file found");
    }

    #[test]
    fn events_read_as_the_lines_serve_printed_before() {
        let e = Event::Scheduled {
            app: "web".into(),
            every: Duration::from_secs(4),
            first: Duration::ZERO,
        };
        assert_eq!(e.to_string(), "web: backup every 4s, next in 0ns");
        let down = Event::Watch(watch::Event::Down { app: "web".into() });
        assert_eq!(down.to_string(), "web: DOWN (failure threshold reached)");
    }
}
