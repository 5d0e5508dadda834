//! The witness from both sides: [`report_loop`] is the witness itself (`watch --witness`, run
//! near the primary, writing what it sees into the repository; a `serve` instance's prober, writing
//! into etcd), [`RepoWitness`] is how the watch reads the witness's reports before a failover.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_orchestrator::watch::{
    self, BoxFuture, Freshness, Monitor, Prober, Seed, Transition, Verdict, Watched, WitnessReport,
};
use time::OffsetDateTime;

use crate::active::{ActiveProbe, ActiveSites, REPO_DEADLINE};
use crate::Event;

/// The witness's reports as the watch reads them from the repository.
///
/// Guarantees: a report counts as fresh only while its `sequence` changes within `max_age` as
/// this process sees it (never by the writer's clock); a report that cannot be read within
/// [`REPO_DEADLINE`] is [`Verdict::Silent`], which refuses the failover.
pub struct RepoWitness {
    pub(crate) sites: Arc<ActiveSites>,
    pub(crate) max_age: Duration,
    /// When this process last saw each app's witness report change.
    freshness: Mutex<HashMap<String, Freshness>>,
}

impl RepoWitness {
    pub fn new(sites: Arc<ActiveSites>, max_age: Duration) -> RepoWitness {
        RepoWitness {
            sites,
            max_age,
            freshness: Default::default(),
        }
    }
}

impl watch::Witness for RepoWitness {
    fn verdict(&self, app: &str) -> BoxFuture<'_, Verdict> {
        let app = app.to_string();
        Box::pin(async move {
            let site = match self.sites.active(&app).await {
                Ok(s) => s,
                Err(e) => return Verdict::Silent(e),
            };
            let sites = self.sites.clone();
            let name = app.clone();
            let read = tokio::task::spawn_blocking(move || {
                ActiveSites::store(&sites.repo, &sites.plan, &name).witness_report()
            });
            let report: Option<WitnessReport> = match tokio::time::timeout(REPO_DEADLINE, read).await {
                Ok(Ok(Ok(report))) => report,
                Ok(Ok(Err(e))) => return Verdict::Silent(format!("the witness's report cannot be read: {e}")),
                Ok(Err(e)) => return Verdict::Silent(e.to_string()),
                Err(_) => {
                    return Verdict::Silent(format!("the witness's report was not read within {REPO_DEADLINE:?}"))
                }
            };
            let ago = self
                .freshness
                .lock()
                .unwrap()
                .entry(app)
                .or_default()
                .observe(report.as_ref(), Instant::now());
            WitnessReport::verdict(report.as_ref(), &site, ago, self.max_age)
        })
    }
}

/// Where a prober's reports go: the repository (the witness of a plan without coordination) or
/// etcd (a `serve` instance's verdict). Runs on the blocking pool.
pub type Sink = Arc<dyn Fn(&str, &WitnessReport) -> Result<(), String> + Send + Sync>;

/// The witness's sink: `dr/PLAN/APP/witness` in the repository.
pub fn repo_sink(sites: Arc<ActiveSites>) -> Sink {
    Arc::new(move |app: &str, report: &WitnessReport| {
        ActiveSites::store(&sites.repo, &sites.plan, app)
            .save_witness_report(report)
            .map_err(|e| e.to_string())
    })
}

/// What a `serve` instance's probers share with the watch it runs while it leads: each app's run
/// of failed probes (the [`Seed`] of the leader's watch, so a new leader does not count the
/// failures again), and the quorum, asked on each failed probe so that its verdicts' freshness is
/// known the moment the instance leads.
#[derive(Clone)]
pub struct Shared {
    pub seeds: Arc<Mutex<HashMap<String, Seed>>>,
    pub quorum: Arc<dyn watch::Witness>,
}

impl Shared {
    pub fn new(quorum: Arc<dyn watch::Witness>) -> Shared {
        Shared {
            seeds: Default::default(),
            quorum,
        }
    }

    /// Where this instance's probes of `app` are now.
    pub fn seed(&self, app: &str) -> Seed {
        self.seeds.lock().unwrap().get(app).copied().unwrap_or_default()
    }
}

/// The prober of one app: probes it where it is active every `w.interval` and hands what it saw
/// to `sink` (a report with a `sequence` one higher each round); with `shared`, records each
/// result there and asks the quorum after each failure. Never returns. A round whose active
/// site or report write is not done within [`REPO_DEADLINE`] writes nothing, which readers see as
/// silence.
pub async fn report_loop(
    w: Watched,
    sites: Arc<ActiveSites>,
    sink: Sink,
    events: Arc<dyn Fn(Event) + Send + Sync>,
    shared: Option<Shared>,
) {
    let probe = ActiveProbe(sites.clone());
    let mut monitor = Monitor::new(w.failure_threshold, w.success_threshold);
    let mut tick = tokio::time::interval(w.interval);
    // Readers judge freshness by seeing the sequence change (never by this host's clock).
    let mut sequence: u64 = 0;
    let skipped = |why: String| {
        events(Event::WitnessSkipped {
            app: w.app.clone(),
            why,
        })
    };
    loop {
        tick.tick().await;
        let site = match sites.active(&w.app).await {
            Ok(s) => s,
            Err(e) => {
                skipped(format!("{e}: no report this round"));
                continue;
            }
        };
        let r = match tokio::time::timeout(w.timeout, probe.probe(&w.app)).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        };
        match monitor.observe(r.is_ok()) {
            Transition::WentDown | Transition::WentUp => events(Event::Verdict {
                app: w.app.clone(),
                site: site.clone(),
                down: monitor.is_down(),
            }),
            Transition::None => {}
        }
        if let Some(sh) = &shared {
            sh.seeds
                .lock()
                .unwrap()
                .entry(w.app.clone())
                .or_default()
                .observe(r.is_ok(), OffsetDateTime::now_utc());
        }
        let failed = r.is_err();
        sequence += 1;
        let report = WitnessReport {
            time: OffsetDateTime::now_utc(),
            sequence,
            site,
            down: monitor.is_down(),
            failures: monitor.failures(),
            error: r.err(),
        };
        let (sink, app) = (sink.clone(), w.app.clone());
        match tokio::time::timeout(REPO_DEADLINE, tokio::task::spawn_blocking(move || sink(&app, &report))).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => skipped(format!("cannot report: {e}")),
            Ok(Err(e)) => skipped(format!("cannot report: {e}")),
            Err(_) => skipped(format!("the report was not written within {REPO_DEADLINE:?}")),
        }
        if let Some(sh) = shared.as_ref().filter(|_| failed) {
            let _ = sh.quorum.verdict(&w.app).await;
        }
    }
}
