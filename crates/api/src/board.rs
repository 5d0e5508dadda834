//! The status board of a running `serve`: the plan's [`PlanStatus`] refreshed in the background
//! (the repository and routers every `refresh`, the full check every `check_refresh`), with what
//! the server's own events tell (its watch, its leadership), and the counters the metrics need.
//!
//! Guarantees: requests never wait for a site or the repository: they read the last status,
//! aged at the time of the request ([`PlanStatus::aged`]), so a refresh that hangs shows as
//! *unknown*, never as the last green. [`Board::ready`] turns true once a first status was read
//! from the repository after the start (and stays so). Every instance (leader or follower) keeps
//! its own board from the shared repository and etcd: each serves the same view.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lifeboat_orchestrator::check::{self, CheckResult};
use lifeboat_orchestrator::records::{self, BackupAttempt};
use lifeboat_orchestrator::status::{self, Control, PlanStatus, SiteWatch, Sources, Watch};
use lifeboat_orchestrator::watch::Event as W;
use lifeboat_server::{Event, Server};
use time::OffsetDateTime;

use crate::metrics::Counters;

/// What the watch of one app told through its events.
#[derive(Debug, Clone, Default)]
struct Watched {
    failures: u32,
    down: bool,
}

#[derive(Debug, Default)]
struct Live {
    /// The watch started (and whether a witness or quorum agrees).
    watching: Option<bool>,
    apps: BTreeMap<String, Watched>,
    leader: Option<(String, i64)>,
    cut_off: bool,
    at: Option<OffsetDateTime>,
}

/// The status as answered: aged, with its JSON and metrics text made once and kept until a fact
/// in it would turn unknown or a new refresh comes.
pub struct View {
    pub status: PlanStatus,
    pub json: bytes::Bytes,
    pub metrics: bytes::Bytes,
    until: Option<OffsetDateTime>,
    generation: u64,
}

/// The board.
pub struct Board {
    server: Arc<Server>,
    pub refresh: Duration,
    pub check_refresh: Duration,
    current: RwLock<Option<PlanStatus>>,
    checks: Mutex<Option<(Vec<CheckResult>, OffsetDateTime)>>,
    live: Mutex<Live>,
    /// The newest backup attempt already counted, per app (none: not read yet).
    counted: Mutex<HashMap<String, OffsetDateTime>>,
    pub counters: Counters,
    ready: std::sync::atomic::AtomicBool,
    /// Bumped by every refresh and every change of leadership: a view of an older one is redone.
    generation: std::sync::atomic::AtomicU64,
    view: Mutex<Option<Arc<View>>>,
}

impl Board {
    pub fn new(server: Arc<Server>, refresh: Duration, check_refresh: Duration) -> Arc<Board> {
        Arc::new(Board {
            server,
            refresh,
            check_refresh,
            current: RwLock::new(None),
            checks: Mutex::new(None),
            live: Mutex::new(Live::default()),
            counted: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
            view: Mutex::new(None),
        })
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes in one of the server's events (call it from the server's event callback).
    pub fn observe(&self, e: &Event) {
        if matches!(
            e,
            Event::Leading { .. } | Event::Following { .. } | Event::CutOff { .. } | Event::StandingBy
        ) {
            self.bump();
        }
        let mut l = self.live.lock().expect("poisoned");
        l.at = Some(OffsetDateTime::now_utc());
        match e {
            Event::Watching { witness, .. } => l.watching = Some(*witness),
            Event::Watch(W::Failing { app, failures, .. }) => {
                l.apps.entry(app.clone()).or_default().failures = *failures;
            }
            Event::Watch(W::Down { app }) => l.apps.entry(app.clone()).or_default().down = true,
            Event::Watch(W::Up { app } | W::FailedOver { app, .. }) => {
                l.apps.insert(app.clone(), Watched::default());
            }
            Event::Verdict { app, down, .. } => {
                let w = l.apps.entry(app.clone()).or_default();
                w.down = *down;
                if !down {
                    w.failures = 0;
                }
            }
            Event::Leading { term } => {
                l.leader = Some((self.me(), *term));
                l.cut_off = false;
            }
            Event::Following { leader, term } => {
                l.leader = Some((leader.clone(), *term));
                l.cut_off = false;
            }
            Event::CutOff { .. } => l.cut_off = true,
            _ => {}
        }
    }

    fn me(&self) -> String {
        self.server
            .coordination
            .as_ref()
            .map_or_else(|| "serve".to_string(), |c| c.me.name.clone())
    }

    /// Whether a status was read from the repository since the start.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The status now: the last one read, aged at `now` (none before the first refresh).
    pub fn status(&self, now: OffsetDateTime) -> Option<PlanStatus> {
        self.view(now).map(|v| v.status.clone())
    }

    /// The status now with its JSON and metrics (see [`View`]); none before the first refresh.
    /// Made again only when a refresh or a change of leadership came since, or a fact in it has
    /// turned unknown by now: what it answers is what [`PlanStatus::aged`] at `now` would be.
    pub fn view(&self, now: OffsetDateTime) -> Option<Arc<View>> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let mut kept = self.view.lock().expect("poisoned");
        if let Some(v) = kept.as_ref() {
            if v.generation == generation && v.until.is_none_or(|u| now < u) {
                return Some(v.clone());
            }
        }
        let mut status = self.current.read().expect("poisoned").clone()?.aged(now);
        let until = status.fresh_until();
        let v = Arc::new(View {
            json: serde_json::to_vec(&status).expect("a status serializes").into(),
            metrics: crate::metrics::render(Some(&status), &self.counters, self.leads()).into(),
            status,
            until,
            generation,
        });
        *kept = Some(v.clone());
        Some(v)
    }

    fn control(&self) -> Control {
        let l = self.live.lock().expect("poisoned");
        match &self.server.coordination {
            None => Control {
                instance: self.me(),
                role: "single".into(),
                leader: Some(self.me()),
                term: None,
            },
            Some(c) => {
                let leads = c.leads();
                Control {
                    instance: c.me.name.clone(),
                    role: match (leads, l.cut_off) {
                        (Some(_), _) => "leader",
                        (None, true) => "cut off",
                        (None, false) => "follower",
                    }
                    .into(),
                    leader: l.leader.as_ref().map(|(n, _)| n.clone()),
                    term: leads.map(|t| t.revision).or(l.leader.as_ref().map(|(_, t)| *t)),
                }
            }
        }
    }

    /// Whether this instance may act (it leads, or runs alone).
    pub fn leads(&self) -> bool {
        self.server.coordination.as_ref().is_none_or(|c| c.leads().is_some())
    }

    fn watch_views(&self, st: &PlanStatus) -> (BTreeMap<String, Watch>, Option<OffsetDateTime>) {
        let l = self.live.lock().expect("poisoned");
        let Some(witness) = l.watching.or(self.server.coordination.as_ref().map(|_| true)) else {
            return (BTreeMap::new(), None);
        };
        let agreement = match (&self.server.coordination, witness) {
            (Some(c), _) => format!("quorum of {} ({} needed)", c.voters, c.majority),
            (None, true) => "witness".into(),
            (None, false) => "none".into(),
        };
        let mut out = BTreeMap::new();
        for a in &st.apps {
            let Some(app) = self.server.plan.app(&a.app) else {
                continue;
            };
            let Some(h) = app.health.first() else { continue };
            let w = l.apps.get(&a.app).cloned().unwrap_or_default();
            let site = a.active.get().cloned().unwrap_or_else(|| app.primary.value.clone());
            out.insert(
                a.app.clone(),
                Watch {
                    armed: witness,
                    sites: vec![SiteWatch {
                        site,
                        failures: w.failures,
                        threshold: h.failure_threshold.value,
                        down: w.down,
                    }],
                    agreement: agreement.clone(),
                },
            );
        }
        // The watch's own view is as fresh as the board's refresh (its events come as they happen).
        (out, Some(OffsetDateTime::now_utc()))
    }

    /// One refresh: the repository and routers, with the last check and the live view merged.
    fn refresh_once(&self) {
        let now = OffsetDateTime::now_utc();
        let mut st = self.server.with_env(false, |env| {
            status::collect(
                &Sources {
                    plan: env.plan,
                    repo: Ok(env.repo),
                    router: env.router,
                    refresh: self.refresh,
                    only: None,
                },
                now,
            )
        });
        if let Some((results, at)) = &*self.checks.lock().expect("poisoned") {
            st.with_checks(&self.server.plan, results, *at, self.check_refresh);
        }
        let (views, at) = self.watch_views(&st);
        if let Some(at) = at {
            st.with_watch(&views, at, self.refresh);
        }
        st.control = Some(self.control());
        self.count_attempts(&st);
        let read = st.repository.get().is_some();
        *self.current.write().expect("poisoned") = Some(st);
        self.bump();
        if read {
            self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Counts the backup attempts recorded since the last refresh (those already there at the
    /// first refresh are history, not counted: a counter starts at the process's start).
    fn count_attempts(&self, st: &PlanStatus) {
        let plan = &self.server.plan.metadata.name;
        let mut counted = self.counted.lock().expect("poisoned");
        for a in &st.apps {
            let Some(b) = a.backups.get() else { continue };
            let newest = b.last.as_ref().map(|l| l.started);
            let seen = counted.get(&a.app).copied();
            self.counters.touch(&a.app);
            match (seen, newest) {
                (None, n) => {
                    counted.insert(a.app.clone(), n.unwrap_or(OffsetDateTime::UNIX_EPOCH));
                }
                (Some(s), Some(n)) if n > s => {
                    let fresh: Vec<BackupAttempt> =
                        records::attempts(&self.server.repo, plan, &a.app, records::KEEP_ATTEMPTS)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|x| x.started > s)
                            .collect();
                    for x in &fresh {
                        self.counters.attempt(&a.app, x);
                    }
                    counted.insert(a.app.clone(), n);
                }
                _ => {}
            }
        }
        self.counters.keep_only(st.apps.iter().map(|a| a.app.as_str()));
    }

    /// The last full check: its lines and the readiness levels, with when it ran (none yet: an
    /// `unknown` state).
    pub fn checks_json(&self) -> serde_json::Value {
        let now = OffsetDateTime::now_utc();
        match &*self.checks.lock().expect("poisoned") {
            Some((_, at)) if (now - *at).unsigned_abs() > self.check_refresh * 2 => serde_json::json!({
                "state": "unknown",
                "why": format!(
                    "the last full check finished {:.0} s ago; it runs every {:.0} s",
                    (now - *at).as_seconds_f64(),
                    self.check_refresh.as_secs_f64()
                ),
            }),
            Some((results, at)) => serde_json::json!({
                "state": "fresh",
                "at": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "ok": results.iter().all(|r| r.status != check::Status::Fail),
                "checks": results,
                "readiness": check::readiness(&self.server.plan, results),
            }),
            None => serde_json::json!({"state": "unknown", "why": "the first full check has not finished yet"}),
        }
    }

    /// One full check (sites, standby, capacity, readiness), kept for the refreshes that follow.
    fn check_once(&self) {
        let at = OffsetDateTime::now_utc();
        let mut results = self.server.with_env(false, |env| {
            check::run(env.plan, Ok(env.repo), &env.connect, env.router)
        });
        results.extend(lifeboat_server::coord::check(&self.server.plan, &self.server.plan_dir));
        *self.checks.lock().expect("poisoned") = Some((results, at));
    }

    /// Refreshes until `shutdown` completes: the repository view every `refresh`, the full check
    /// every `check_refresh` (each on the blocking pool; one that hangs delays only itself).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let quick = {
            let me = self.clone();
            async move {
                loop {
                    let b = me.clone();
                    let _ = tokio::task::spawn_blocking(move || b.refresh_once()).await;
                    tokio::time::sleep(me.refresh).await;
                }
            }
        };
        let full = {
            let me = self.clone();
            async move {
                loop {
                    let b = me.clone();
                    let _ = tokio::task::spawn_blocking(move || b.check_once()).await;
                    // Merge at once rather than at the next refresh.
                    let b = me.clone();
                    let _ = tokio::task::spawn_blocking(move || b.refresh_once()).await;
                    tokio::time::sleep(me.check_refresh).await;
                }
            }
        };
        tokio::select! {
            _ = quick => {}
            _ = full => {}
            _ = shutdown => {}
        }
    }

    /// Refreshes now (after an action through the API, so its effect shows at once).
    pub async fn refresh_now(self: &Arc<Self>) {
        let b = self.clone();
        let _ = tokio::task::spawn_blocking(move || b.refresh_once()).await;
    }
}
