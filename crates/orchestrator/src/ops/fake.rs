//! The fast test tier's world: two in-memory sites (`a`, the primary, and `b`, the standby) that
//! do what they are told and write it down, a recording traffic router, and a real repository in
//! a temporary directory. Operations, drills, backups by plan and sync run against it without
//! root, engines or a lab; what they did is read back from the journal, the app's state and the
//! sites' log.
//!
//! Faults are injected per call: [`World::fail_once`] makes the next `SITE VERB` call (`b start`,
//! `a backup`, `traffic switch`) fail once, as a site that stops answering mid-operation.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_model::reach::AccessProblem;
use lifeboat_model::{Id, Snapshot, SnapshotSummary, Tree};
use lifeboat_plan::{App, Plan};
use lifeboat_repo::backend::LocalBackend;
use lifeboat_repo::keys::KdfParams;
use lifeboat_repo::Repository;
use lifeboat_traffic::{Route, Router, Side, SwitchContext, TrafficError};
use time::OffsetDateTime;

use super::{switch_over, Env, Options, Outcome};
use crate::journal::{Kind, Operation, Step, Store};
use crate::leadership::Leadership;
use crate::platform::{Connector, Definitions, Platform, Workload};
use crate::watch::WitnessReport;
use crate::OrchestratorError;

pub(crate) type Log = Arc<Mutex<Vec<String>>>;

/// A [`super::RouterFn`] that can move to another thread with its world.
type SendRouterFn = dyn Fn(&App) -> Result<Option<Box<dyn Router>>, OrchestratorError> + Send + Sync;

/// Calls that fail once, as `SITE VERB` (`b start`, `a backup`, `traffic switch`).
pub(crate) type FailOnce = Arc<Mutex<Vec<String>>>;

/// Takes `call` out of `fail` when it is there: the call then fails.
fn fails(fail: &FailOnce, call: &str) -> bool {
    let mut f = fail.lock().unwrap();
    match f.iter().position(|c| c == call) {
        Some(i) => {
            f.remove(i);
            true
        }
        None => false,
    }
}

/// A site that does what it is told and writes it down.
struct Fake {
    name: String,
    log: Log,
    policies: BTreeMap<String, String>,
    /// CPUs and memory its workloads ask for.
    asks: (f64, u64),
    /// How long a backup takes (none: it has no backups).
    backup_takes: Option<Duration>,
    /// Containers whose next exec exits 1.
    fail_next: Arc<Mutex<Vec<String>>>,
    fail_once: FailOnce,
    /// The app runs here: set by a start of the production app, cleared by a stop.
    runs: Arc<AtomicBool>,
}

impl Fake {
    /// Logs `verb` and fails it when it was told to.
    fn call(&self, verb: &str) -> Result<(), OrchestratorError> {
        let call = format!("{} {verb}", self.name);
        if fails(&self.fail_once, &call) {
            return Err(OrchestratorError::Site {
                site: self.name.clone(),
                retry: crate::Retry::Later,
                source: format!("{verb} failed (injected)").into(),
            });
        }
        self.log.lock().unwrap().push(call);
        Ok(())
    }
}

/// An empty snapshot with `tags`.
pub(crate) fn save_snapshot(repo: &Repository, tags: Vec<String>) -> Id {
    let (tree, _) = repo.save_tree(&Tree { nodes: Vec::new() }).unwrap();
    let snap = Snapshot {
        time: OffsetDateTime::now_utc(),
        kind: "docker".into(),
        hostname: "h".into(),
        username: "u".into(),
        paths: Vec::new(),
        tags,
        tree,
        parent: None,
        program_version: "test".into(),
        summary: SnapshotSummary::default(),
    };
    repo.save_snapshot(&snap).unwrap()
}

impl Platform for Fake {
    fn backup(&self, repo: &Repository, tags: Vec<String>) -> Result<(Id, OffsetDateTime), OrchestratorError> {
        let Some(takes) = self.backup_takes else {
            return Err(OrchestratorError::Refused {
                reason: "no backups here".into(),
            });
        };
        self.call("backup")?;
        std::thread::sleep(takes);
        let id = save_snapshot(repo, tags);
        Ok((id, OffsetDateTime::now_utc()))
    }
    fn stop(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        self.call("stop")?;
        if prefix.is_none() {
            self.runs.store(false, Ordering::SeqCst);
        }
        Ok(vec!["container web: stopped".into()])
    }
    fn start(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        match prefix {
            None => {
                self.call("start")?;
                self.runs.store(true, Ordering::SeqCst);
            }
            Some(p) => self.call(&format!("start {p}"))?,
        }
        Ok(vec!["container web: started".into()])
    }
    fn restart_policies(&self) -> Result<BTreeMap<String, String>, OrchestratorError> {
        Ok(self.policies.clone())
    }
    fn set_restart_policies(&self, p: &BTreeMap<String, String>) -> Result<Vec<String>, OrchestratorError> {
        let line = format!("{} policies {p:?}", self.name);
        self.log.lock().unwrap().push(line.clone());
        Ok(vec![line])
    }
    fn stage(&self, _: &Repository, s: &str, prefix: &str, base: Option<&str>) -> Result<String, OrchestratorError> {
        let verb = match (prefix, base) {
            ("", None) => "stage".to_string(),
            ("", Some(b)) => format!("stage over {}", &b[..8]),
            (p, _) => format!("stage {p}"),
        };
        self.call(&verb)?;
        Ok(format!("staged {}", &s[..8]))
    }
    fn running(&self, _: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        Ok(match self.runs.load(Ordering::SeqCst) {
            true => vec!["container web".into()],
            false => Vec::new(),
        })
    }
    fn remove(&self, prefix: &str) -> Result<Vec<String>, OrchestratorError> {
        self.call(&format!("remove {prefix}"))?;
        Ok(vec![format!("container {prefix}web")])
    }
    fn workloads(&self) -> Result<Vec<Workload>, OrchestratorError> {
        Ok(vec![Workload {
            name: "container web".into(),
            running: true,
            images: Vec::new(),
            cpus: self.asks.0,
            memory: self.asks.1,
        }])
    }
    fn has_image(&self, _: &str) -> Result<bool, OrchestratorError> {
        Ok(true)
    }
    fn capacity(&self) -> Result<(f64, u64), OrchestratorError> {
        Ok((1.0, 1 << 30))
    }
    fn exec(&self, container: &str, _: &[String], _: Duration) -> Result<(i64, String), OrchestratorError> {
        self.log.lock().unwrap().push(format!("{} exec {container}", self.name));
        let mut fail = self.fail_next.lock().unwrap();
        match fail.iter().position(|c| c == container) {
            Some(i) => {
                fail.remove(i);
                Ok((1, "refused".into()))
            }
            None => Ok((0, String::new())),
        }
    }
    fn definitions(&self) -> Result<Definitions, OrchestratorError> {
        Ok(Definitions::new(BTreeMap::new(), ()))
    }
    fn apply_definitions(
        &self,
        _: &Repository,
        _: Definitions,
        _: &Definitions,
        _: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, OrchestratorError> {
        Ok(Vec::new())
    }
}

/// A traffic router that writes down each switch (`traffic switch standby seq 1`).
struct Recording {
    log: Log,
    fail_once: FailOnce,
}

impl Router for Recording {
    fn describe(&self) -> String {
        "the test router".into()
    }
    fn current(&self) -> Result<Route, TrafficError> {
        Ok(Route::Unknown("the test router does not know".into()))
    }
    fn switch(&self, to: Side, c: &SwitchContext) -> Result<(), TrafficError> {
        if fails(&self.fail_once, "traffic switch") {
            return Err(TrafficError::Unreachable {
                router: self.describe(),
                server: "127.0.0.1:1".into(),
                reason: "connection refused (injected)".into(),
            });
        }
        let side = match to {
            Side::Primary => "primary",
            Side::Standby => "standby",
        };
        self.log
            .lock()
            .unwrap()
            .push(format!("traffic switch {side} seq {}", c.sequence));
        Ok(())
    }
}

/// A leadership that holds its term until it is deposed: at once, or after a number of checks.
pub(crate) struct FakeTerm {
    term: AtomicI64,
    /// Checks that still pass (negative: all of them).
    left: AtomicI64,
    /// What it says of a site's self-fence (none: it knows no self-fencing instances).
    pub(crate) self_fence: Mutex<Option<Result<String, String>>>,
}

impl FakeTerm {
    pub(crate) fn new(term: i64) -> Arc<FakeTerm> {
        Arc::new(FakeTerm {
            term: AtomicI64::new(term),
            left: AtomicI64::new(-1),
            self_fence: Mutex::new(None),
        })
    }

    /// `n` more checks pass, then this process is deposed.
    pub(crate) fn depose_after(&self, n: i64) {
        self.left.store(n, Ordering::SeqCst);
    }

    /// This process leads again, in a new `term`.
    pub(crate) fn elect(&self, term: i64) {
        self.term.store(term, Ordering::SeqCst);
        self.left.store(-1, Ordering::SeqCst);
    }
}

impl Leadership for FakeTerm {
    fn check(&self) -> Result<i64, OrchestratorError> {
        let term = self.term.load(Ordering::SeqCst);
        match self.left.load(Ordering::SeqCst) {
            0 => Err(OrchestratorError::Deposed {
                term,
                reason: "another instance leads since a later term".into(),
            }),
            n => {
                if n > 0 {
                    self.left.store(n - 1, Ordering::SeqCst);
                }
                Ok(term)
            }
        }
    }

    fn site_fenced(&self, _: &str) -> Option<Result<String, String>> {
        self.self_fence.lock().unwrap().clone()
    }
}

/// How each site answers the connector.
#[derive(Clone)]
pub(crate) enum Answer {
    Up,
    Unreachable,
    Denied,
}

pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub(crate) repo: Repository,
    pub(crate) plan: Plan,
    log: Log,
    pub(crate) a: Answer,
    pub(crate) b: Answer,
    pub(crate) a_policies: BTreeMap<String, String>,
    /// What a's workloads ask for (b has 1 CPU and 1 GiB).
    pub(crate) a_asks: (f64, u64),
    /// How long a backup of a takes (none: a has no backups).
    pub(crate) a_backup_takes: Option<Duration>,
    /// How long a backup of b takes (none: b has no backups).
    pub(crate) b_backup_takes: Option<Duration>,
    /// Containers whose next exec exits 1, on either site.
    pub(crate) fail_next: Arc<Mutex<Vec<String>>>,
    fail_once: FailOnce,
    /// The app runs on a (the primary runs it at the start).
    pub(crate) a_runs_again: Arc<AtomicBool>,
    /// The app runs on b.
    pub(crate) b_runs: Arc<AtomicBool>,
    /// The leadership this world's operations run under (none: a single process).
    pub(crate) leadership: Option<Arc<FakeTerm>>,
    /// The app's traffic router (none, or the recording one: [`World::with_traffic`]).
    router: Box<SendRouterFn>,
}

impl World {
    pub(crate) fn new(witness: bool) -> World {
        World::with_app_lines(witness, "")
    }

    /// A world whose app has `lines` more of YAML (indented as the app's fields).
    pub(crate) fn with_app_lines(witness: bool, lines: &str) -> World {
        World::with_lines(witness, "hot", lines)
    }

    /// A world whose app's standby is `mode` (`hot` or `cold`), with `lines` more of YAML.
    pub(crate) fn with_lines(witness: bool, mode: &str, lines: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let kdf = KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        let repo = Repository::init(Arc::new(LocalBackend::new(dir.path().join("repo"))), b"pw", kdf).unwrap();
        let yaml = format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: p}}\nrepository: repo\n{}sites:\n  \
             a: {{docker: {{host: \"unix:///a.sock\", address: 127.0.0.1}}}}\n  b: {{docker: {{host: \"unix:///b.sock\", address: 127.0.0.1}}}}\n\
             apps:\n  - name: web\n    primary: a\n    standby: b\n    standby_mode: {mode}\n    select: {{labels: {{app: web}}}}\n{lines}",
            if witness { "witness: {max_age: 3s}\n" } else { "" }
        );
        let plan = Plan::parse("plan.yaml", &yaml).unwrap();
        World {
            _dir: dir,
            repo,
            plan,
            log: Arc::default(),
            a: Answer::Up,
            b: Answer::Up,
            a_policies: BTreeMap::new(),
            a_asks: (0.5, 256 << 20),
            a_backup_takes: None,
            b_backup_takes: None,
            fail_next: Arc::default(),
            fail_once: Arc::default(),
            a_runs_again: Arc::default(),
            b_runs: Arc::default(),
            leadership: None,
            router: Box::new(no_router),
        }
    }

    /// The app's traffic goes through a router that writes each switch into the log.
    pub(crate) fn with_traffic(mut self) -> World {
        let (log, fail_once) = (self.log.clone(), self.fail_once.clone());
        self.router = Box::new(move |_: &App| {
            Ok(Some(Box::new(Recording {
                log: log.clone(),
                fail_once: fail_once.clone(),
            }) as Box<dyn Router>))
        });
        self
    }

    /// A recovery point of the app.
    pub(crate) fn backed_up(self) -> World {
        save_snapshot(&self.repo, vec!["plan=p".into(), "app=web".into(), "site=a".into()]);
        self
    }

    /// The next call `SITE VERB` (`b start`, `a backup`, `traffic switch`) fails, once.
    pub(crate) fn fail_once(&self, call: &str) {
        self.fail_once.lock().unwrap().push(call.to_string());
    }

    /// A witness that runs: it writes a new report every 100 ms for 5 s.
    pub(crate) fn witness_says(&self, down: bool) {
        let repo = Repository::open(self.repo.backend().clone(), b"pw").unwrap();
        let write = move |sequence: u64| {
            let r = WitnessReport {
                time: OffsetDateTime::now_utc(),
                sequence,
                site: "a".into(),
                down,
                failures: if down { 5 } else { 0 },
                error: down.then(|| "connection refused".into()),
            };
            repo.write_state("p/web/witness", &serde_json::to_vec(&r).unwrap())
                .unwrap();
        };
        write(1);
        std::thread::spawn(move || {
            for seq in 2..50 {
                std::thread::sleep(Duration::from_millis(100));
                write(seq);
            }
        });
    }

    /// A witness that wrote once and died.
    pub(crate) fn witness_said_once(&self, down: bool) {
        let r = WitnessReport {
            time: OffsetDateTime::now_utc(),
            sequence: 3,
            site: "a".into(),
            down,
            failures: 5,
            error: None,
        };
        self.repo
            .write_state("p/web/witness", &serde_json::to_vec(&r).unwrap())
            .unwrap();
    }

    pub(crate) fn run(&self, kind: Kind, opts: &Options) -> Result<Outcome, OrchestratorError> {
        let env = self.env();
        switch_over(&env, "web", kind, opts)
    }

    /// What an operation runs against: the plan, the repository and the sites as they answer.
    pub(crate) fn env(&self) -> Env<'_> {
        let (log, a, b, pol, asks, fail_next, fail_once) = (
            self.log.clone(),
            self.a.clone(),
            self.b.clone(),
            self.a_policies.clone(),
            self.a_asks,
            self.fail_next.clone(),
            self.fail_once.clone(),
        );
        let (a_runs, b_runs) = (self.a_runs_again.clone(), self.b_runs.clone());
        let (a_takes, b_takes) = (self.a_backup_takes, self.b_backup_takes);
        let connect: Arc<Connector> = Arc::new(move |site: &str, _: &App| {
            let answer = if site == "a" { &a } else { &b };
            match answer {
                Answer::Up => Ok(Arc::new(Fake {
                    name: site.to_string(),
                    log: log.clone(),
                    policies: if site == "a" { pol.clone() } else { BTreeMap::new() },
                    asks: if site == "a" { asks } else { (0.0, 0) },
                    backup_takes: if site == "a" { a_takes } else { b_takes },
                    fail_next: fail_next.clone(),
                    fail_once: fail_once.clone(),
                    runs: if site == "a" { a_runs.clone() } else { b_runs.clone() },
                }) as Arc<dyn Platform>),
                Answer::Unreachable => Err(OrchestratorError::Unreachable {
                    site: site.into(),
                    source: "connection refused (3 tries)".into(),
                }),
                Answer::Denied => Err(OrchestratorError::Access {
                    site: site.into(),
                    problem: AccessProblem::Auth,
                    source: "Unauthorized (401)".into(),
                }),
            }
        });
        Env {
            plan: &self.plan,
            plan_dir: PathBuf::from("."),
            repo: &self.repo,
            connect,
            router: &*self.router,
            log: &|_| {},
            leadership: self.leadership.clone().map(|l| l as Arc<dyn Leadership>),
        }
    }

    pub(crate) fn store(&self) -> Store<'_> {
        Store {
            repo: &self.repo,
            plan: "p".into(),
            app: "web".into(),
        }
    }

    /// What the sites and the router were asked to do, in order.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets what the sites were asked so far.
    pub(crate) fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    pub(crate) fn fence_detail(op: &Operation) -> String {
        op.finished(Step::Fence).unwrap().detail.clone()
    }
}

fn no_router(_: &App) -> Result<Option<Box<dyn Router>>, OrchestratorError> {
    Ok(None)
}

/// Options without a final backup (the fake primary has none unless told).
pub(crate) fn no_final() -> Options {
    Options {
        final_backup: false,
        ..Default::default()
    }
}
