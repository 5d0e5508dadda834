//! The fence step and the preflight of [`super::switch_over`] against in-memory sites and a real
//! local repository: what counts as evidence, what fails before anything is stopped, and the
//! restart policies a fence holds.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_model::reach::AccessProblem;
use lifeboat_model::{Snapshot, SnapshotSummary, Tree};
use lifeboat_plan::{App, Plan};
use lifeboat_repo::backend::LocalBackend;
use lifeboat_repo::keys::KdfParams;
use lifeboat_repo::Repository;
use time::OffsetDateTime;

use super::*;
use crate::platform::{Definitions, Workload};
use crate::watch::WitnessReport;

type Log = Arc<Mutex<Vec<String>>>;

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
    /// The app runs here (until the next stop) though nothing of Lifeboat started it.
    runs_again: Arc<std::sync::atomic::AtomicBool>,
}

/// An empty snapshot with `tags`.
fn save_snapshot(repo: &Repository, tags: Vec<String>) -> lifeboat_model::Id {
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
    fn backup(
        &self,
        repo: &Repository,
        tags: Vec<String>,
    ) -> Result<(lifeboat_model::Id, OffsetDateTime), OrchestratorError> {
        let Some(takes) = self.backup_takes else {
            return Err(OrchestratorError::Refused {
                reason: "no backups here".into(),
            });
        };
        self.log.lock().unwrap().push(format!("{} backup", self.name));
        std::thread::sleep(takes);
        let id = save_snapshot(repo, tags);
        Ok((id, OffsetDateTime::now_utc()))
    }
    fn stop(&self, _: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        self.log.lock().unwrap().push(format!("{} stop", self.name));
        self.runs_again.store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(vec!["container web: stopped".into()])
    }
    fn start(&self, _: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        self.log.lock().unwrap().push(format!("{} start", self.name));
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
    fn stage(&self, _: &Repository, s: &str, _: &str, _: Option<&str>) -> Result<String, OrchestratorError> {
        self.log.lock().unwrap().push(format!("{} stage", self.name));
        Ok(format!("staged {}", &s[..8]))
    }
    fn running(&self, _: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        Ok(match self.runs_again.load(std::sync::atomic::Ordering::SeqCst) {
            true => vec!["container web".into()],
            false => Vec::new(),
        })
    }
    fn remove(&self, _: &str) -> Result<Vec<String>, OrchestratorError> {
        Ok(Vec::new())
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

/// How each site answers the connector.
#[derive(Clone)]
enum Answer {
    Up,
    Unreachable,
    Denied,
}

struct World {
    _dir: tempfile::TempDir,
    repo: Repository,
    plan: Plan,
    log: Log,
    a: Answer,
    b: Answer,
    a_policies: BTreeMap<String, String>,
    /// What a's workloads ask for (b has 1 CPU and 1 GiB).
    a_asks: (f64, u64),
    /// How long a backup of a takes (none: a has no backups).
    a_backup_takes: Option<Duration>,
    /// Containers whose next exec exits 1, on either site.
    fail_next: Arc<Mutex<Vec<String>>>,
    /// a runs the app again (started by someone else) until it is stopped.
    a_runs_again: Arc<std::sync::atomic::AtomicBool>,
}

impl World {
    fn new(witness: bool) -> World {
        World::with_app_lines(witness, "")
    }

    /// A world whose app has `lines` more of YAML (indented as the app's fields).
    fn with_app_lines(witness: bool, lines: &str) -> World {
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
             apps:\n  - name: web\n    primary: a\n    standby: b\n    standby_mode: hot\n    select: {{labels: {{app: web}}}}\n{lines}",
            if witness { "witness: {max_age: 10s}\n" } else { "" }
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
            fail_next: Arc::default(),
            a_runs_again: Arc::default(),
        }
    }

    /// A recovery point of the app.
    fn backed_up(self) -> World {
        save_snapshot(&self.repo, vec!["plan=p".into(), "app=web".into(), "site=a".into()]);
        self
    }

    /// A witness that runs: it writes a new report every 100 ms for 5 s.
    fn witness_says(&self, down: bool) {
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
    fn witness_said_once(&self, down: bool) {
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

    fn run(&self, kind: Kind, opts: &Options) -> Result<Outcome, OrchestratorError> {
        let env = self.env();
        switch_over(&env, "web", kind, opts)
    }

    /// What an operation runs against: the plan, the repository and the sites as they answer.
    fn env(&self) -> Env<'_> {
        let runs_again = self.a_runs_again.clone();
        let (log, a, b, pol, asks, takes, fail_next) = (
            self.log.clone(),
            self.a.clone(),
            self.b.clone(),
            self.a_policies.clone(),
            self.a_asks,
            self.a_backup_takes,
            self.fail_next.clone(),
        );
        let connect: Arc<Connector> = Arc::new(move |site: &str, _: &App| {
            let answer = if site == "a" { &a } else { &b };
            match answer {
                Answer::Up => Ok(Arc::new(Fake {
                    name: site.to_string(),
                    log: log.clone(),
                    policies: if site == "a" { pol.clone() } else { BTreeMap::new() },
                    asks: if site == "a" { asks } else { (0.0, 0) },
                    backup_takes: if site == "a" { takes } else { None },
                    fail_next: fail_next.clone(),
                    runs_again: match site == "a" {
                        true => runs_again.clone(),
                        false => Arc::default(),
                    },
                }) as Arc<dyn Platform>),
                Answer::Unreachable => Err(OrchestratorError::Unreachable {
                    site: site.into(),
                    reason: "connection refused (3 tries)".into(),
                }),
                Answer::Denied => Err(OrchestratorError::Access {
                    site: site.into(),
                    problem: AccessProblem::Auth,
                    reason: "Unauthorized (401)".into(),
                }),
            }
        });
        Env {
            plan: &self.plan,
            plan_dir: PathBuf::from("."),
            repo: &self.repo,
            connect,
            router: &no_router,
            log: &|_| {},
        }
    }

    fn store(&self) -> Store<'_> {
        Store {
            repo: &self.repo,
            plan: "p".into(),
            app: "web".into(),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn fence_detail(op: &Operation) -> String {
        op.finished(Step::Fence).unwrap().detail.clone()
    }
}

fn no_router(_: &App) -> Result<Option<Box<dyn Router>>, OrchestratorError> {
    Ok(None)
}

fn no_final() -> Options {
    Options {
        final_backup: false,
        ..Default::default()
    }
}

fn by_hand(site: &str) -> Options {
    Options {
        fenced_by_hand: Some(ManualFence {
            site: site.into(),
            by: "operator ops on desk".into(),
        }),
        ..no_final()
    }
}

#[test]
fn an_unreachable_primary_without_evidence_is_not_fenced_and_nothing_starts_on_the_standby() {
    let mut w = World::new(false).backed_up();
    w.a = Answer::Unreachable;
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(
        e.contains("a is not fenced") && e.contains("the plan has no witness") && e.contains("--fenced-by-hand a"),
        "{e}"
    );
    assert!(w.log().is_empty(), "nothing stopped, staged or started: {:?}", w.log());
    let state = w.store().state().unwrap();
    assert_eq!(state.running, None, "the failed attempt is closed");
    assert!(state.fenced.is_empty() && state.active.is_none(), "{state:?}");
    let ops = w.store().operations().unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].status, OpStatus::Failed);
    assert!(ops[0].finished(Step::Fence).is_none());
    // A witness that still sees a healthy is no evidence either.
    let mut w = World::new(true).backed_up();
    w.a = Answer::Unreachable;
    w.witness_says(false);
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(e.contains("the witness does not confirm it"), "{e}");
    assert!(w.log().is_empty());
}

#[test]
fn a_dead_witness_s_last_down_report_is_no_evidence_whatever_its_clock_says() {
    let mut w = World::new(true).backed_up();
    w.a = Answer::Unreachable;
    // It said "down" once, then stopped writing (its report is dated now, as a witness whose
    // clock runs ahead would date an old one).
    w.witness_said_once(true);
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(
        e.contains("the witness does not confirm it") && e.contains("not been seen to change"),
        "{e}"
    );
    assert!(w.log().is_empty(), "{:?}", w.log());
}

#[test]
fn the_witness_or_the_operator_is_evidence_for_an_unreachable_primary() {
    let mut w = World::new(true).backed_up();
    w.a = Answer::Unreachable;
    w.witness_says(true);
    let Outcome::Done(op) = w.run(Kind::Failover, &no_final()).unwrap() else {
        panic!("not done")
    };
    assert!(
        World::fence_detail(&op).contains("the witness confirms it is down"),
        "{op:?}"
    );
    // The fact is recorded as such, not left to the words.
    assert_eq!(op.finished(Step::Fence).unwrap().fenced_by, Some(FencedBy::Witness));
    // The data step stops the target before it writes there (nothing may write under a restore).
    assert_eq!(w.log(), vec!["b stop", "b stage", "b start"]);
    let state = w.store().state().unwrap();
    assert_eq!(state.active.as_deref(), Some("b"));
    assert!(
        state.fenced[0].unreachable && state.fenced[0].evidence.is_some(),
        "{state:?}"
    );

    let mut w = World::new(false).backed_up();
    w.a = Answer::Unreachable;
    let Outcome::Done(op) = w.run(Kind::Failover, &by_hand("a")).unwrap() else {
        panic!("not done")
    };
    let detail = World::fence_detail(&op);
    assert!(
        detail.contains("operator ops on desk") && detail.contains("--fenced-by-hand a"),
        "{detail}"
    );
    assert_eq!(op.finished(Step::FinalBackup).unwrap().outcome, StepOutcome::Skipped);
    assert_eq!(op.finished(Step::Fence).unwrap().fenced_by, Some(FencedBy::Hand));
    let fence = &w.store().state().unwrap().fenced[0];
    assert!(
        fence.evidence.as_deref().unwrap().contains("operator ops on desk"),
        "{fence:?}"
    );
}

#[test]
fn an_authentication_error_is_no_evidence_even_when_the_witness_agrees() {
    let mut w = World::new(true).backed_up();
    w.a = Answer::Denied;
    w.witness_says(true);
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(
        e.contains("a is not fenced")
            && e.contains("authentication failed")
            && e.contains("answers but cannot be used"),
        "{e}"
    );
    assert!(w.log().is_empty());
    // The operator's word covers it.
    assert!(matches!(w.run(Kind::Failover, &by_hand("a")), Ok(Outcome::Done(_))));
}

#[test]
fn fenced_by_hand_must_name_the_site_being_left() {
    let mut w = World::new(false).backed_up();
    w.a = Answer::Unreachable;
    let e = w.run(Kind::Failover, &by_hand("b")).unwrap_err().to_string();
    assert!(e.contains("name the site being left"), "{e}");
    assert!(w.store().operations().unwrap().is_empty(), "nothing journaled");
}

#[test]
fn an_unreachable_standby_or_a_missing_recovery_point_stop_the_failover_before_the_fence() {
    let mut w = World::new(false).backed_up();
    w.b = Answer::Unreachable;
    let e = w.run(Kind::Failover, &Options::default()).unwrap_err().to_string();
    assert!(
        e.contains("b, which is to take over, cannot be used") && e.contains("nothing was fenced"),
        "{e}"
    );
    assert!(w.log().is_empty(), "a was not stopped: {:?}", w.log());
    assert!(w.store().operations().unwrap().is_empty());

    // No backup, and none can be taken after fencing: refused before the fence.
    let mut w = World::new(false);
    w.a = Answer::Unreachable;
    let e = w.run(Kind::Failover, &by_hand("a")).unwrap_err().to_string();
    assert!(e.contains("has no backup to recover from"), "{e}");
    assert!(w.log().is_empty());
}

#[test]
fn a_failover_during_a_prune_does_not_fence_before_it_can_finish() {
    // A prune holds the repository: refused before the fence, not after.
    let w = World::new(false).backed_up();
    let other = Repository::open(w.repo.backend().clone(), b"pw").unwrap();
    let _prune = other.lock(true, "prune", Duration::ZERO).unwrap();
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(
        e.contains("repository cannot be locked") && e.contains("nothing was fenced"),
        "{e}"
    );
    assert!(w.log().is_empty(), "{:?}", w.log());
}

#[test]
fn a_standby_too_small_for_the_app_is_found_before_the_primary_is_fenced() {
    let mut w = World::new(false).backed_up();
    w.a_asks = (4.0, 256 << 20);
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(
        e.contains("b does not fit the app")
            && e.contains("4.00 CPUs")
            && e.contains("--ignore-capacity")
            && e.contains("nothing was fenced"),
        "{e}"
    );
    assert!(w.log().is_empty(), "a was not stopped: {:?}", w.log());
    assert!(w.store().operations().unwrap().is_empty());
    // The operator may choose to run degraded.
    let opts = Options {
        ignore_capacity: true,
        ..no_final()
    };
    assert!(matches!(w.run(Kind::Failover, &opts), Ok(Outcome::Done(_))));
    // What fits passes, and says so in the preflight's line.
    let w = World::new(false).backed_up();
    assert!(matches!(w.run(Kind::Failover, &no_final()), Ok(Outcome::Done(_))));
}

#[test]
fn a_failover_preempts_a_scheduled_backup_of_the_same_app() {
    let mut w = World::new(false).backed_up();
    w.a_backup_takes = Some(Duration::from_millis(1500));
    let w = Arc::new(w);
    // A scheduled backup of a (hot standby: it would stage on b afterwards) holds the app's lock.
    let backup = {
        let w = w.clone();
        std::thread::spawn(move || backup_plan(&w.env(), Some("web"), Duration::ZERO).unwrap())
    };
    while !w.log().contains(&"a backup".to_string()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The failover does not fail on the lock: it asks the backup to give way and waits.
    let Outcome::Done(op) = w.run(Kind::Failover, &no_final()).unwrap() else {
        panic!("not done")
    };
    let backed = backup.join().unwrap();
    assert_eq!(backed.len(), 1);
    assert!(backed[0].snapshot.is_some(), "the backup that ran is kept: {backed:?}");
    assert_eq!(
        backed[0].staged.as_deref(),
        Some("not staged: a failover of the app is waiting, and goes first"),
        "{backed:?}"
    );
    assert_eq!(op.status, OpStatus::Done);
    // Only the failover staged on b, after the backup gave way.
    assert_eq!(w.log(), ["a backup", "a stop", "b stop", "b stage", "b start"]);
    assert_eq!(w.store().preempted(), None, "the request is withdrawn");
    // A backup that starts while a failover waits does not start its read.
    w.store().request_preemption("failover").unwrap();
    let backed = backup_plan(&w.env(), Some("web"), Duration::ZERO).unwrap();
    assert!(
        backed[0]
            .error
            .as_deref()
            .unwrap()
            .contains("a failover of the app is waiting"),
        "{backed:?}"
    );
    assert_eq!(w.log().iter().filter(|l| *l == "a backup").count(), 1);
}

#[test]
fn restart_policies_are_held_by_the_fence_and_given_back_when_the_site_starts_again() {
    let mut w = World::new(false).backed_up();
    w.a_policies = BTreeMap::from([("web".to_string(), "always".to_string())]);
    let Outcome::Done(op) = w.run(Kind::Failover, &no_final()).unwrap() else {
        panic!()
    };
    assert!(World::fence_detail(&op).starts_with("a fenced"), "{op:?}");
    assert_eq!(op.finished(Step::Fence).unwrap().fenced_by, Some(FencedBy::Lifeboat));
    let state = w.store().state().unwrap();
    assert_eq!(state.restart_policies["a"]["web"], "always");
    assert!(!state.fenced[0].unreachable);
    // Failback starts a again, with its policy.
    assert!(matches!(w.run(Kind::Failback, &no_final()), Ok(Outcome::Done(_))));
    let log = w.log();
    let start = log.iter().position(|l| l == "a start").unwrap();
    assert_eq!(log[start + 1], "a policies {\"web\": \"always\"}", "{log:?}");
    assert!(w.store().state().unwrap().restart_policies.is_empty());
}

#[test]
fn a_resumed_failover_runs_again_only_the_hook_that_had_not_finished() {
    let hooks = "    hooks:\n      post_restore:\n        - exec: {container: first, command: [warm]}\n        \
                 - exec: {container: second, command: [warm]}\n        - exec: {container: third, command: [warm]}\n";
    let w = World::with_app_lines(false, hooks).backed_up();
    w.fail_next.lock().unwrap().push("second".into());
    let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(e.contains("hook 2") && e.contains("second"), "{e}");
    let execs = |w: &World| w.log().into_iter().filter(|l| l.contains(" exec ")).collect::<Vec<_>>();
    assert_eq!(execs(&w), ["b exec first", "b exec second"]);
    // The same command resumes: the first hook finished and is not run again.
    let Outcome::Done(op) = w.run(Kind::Failover, &no_final()).unwrap() else {
        panic!("not done")
    };
    assert_eq!(
        execs(&w),
        ["b exec first", "b exec second", "b exec second", "b exec third"]
    );
    let names: Vec<String> = op.steps.iter().map(|s| s.name.to_string()).collect();
    assert!(
        names.ends_with(&["hook 1", "hook 2", "hook 3", "traffic", "verify"].map(String::from)),
        "{names:?}"
    );
    assert_eq!(op.finished(Step::Hook(2)).unwrap().attempts, 2);
    assert_eq!(op.finished(Step::Hook(1)).unwrap().attempts, 1);
}

#[test]
fn a_resumed_failover_fences_again_a_primary_that_runs_again() {
    let hooks = "    hooks:\n      post_restore: [{exec: {container: warm, command: [warm]}}]\n";
    let w = World::with_app_lines(false, hooks).backed_up();
    // The failover stops after b started (its hook fails): a fenced, b running, traffic on a.
    w.fail_next.lock().unwrap().push("warm".into());
    assert!(w.run(Kind::Failover, &no_final()).is_err());
    assert_eq!(w.log().iter().filter(|l| *l == "a stop").count(), 1);
    // Someone starts a again by hand; the resume stops it before it goes on.
    w.a_runs_again.store(true, std::sync::atomic::Ordering::SeqCst);
    let Outcome::Done(op) = w.run(Kind::Failover, &no_final()).unwrap() else {
        panic!("not done")
    };
    assert_eq!(w.log().iter().filter(|l| *l == "a stop").count(), 2, "{:?}", w.log());
    let fence = World::fence_detail(&op);
    assert!(
        fence.contains("on resume, a ran the app again (container web): fenced again"),
        "{fence}"
    );
    assert_eq!(
        op.finished(Step::Fence).unwrap().attempts,
        1,
        "the step itself is not rerun"
    );
    // A resume that finds a stopped changes nothing there.
    let w = World::with_app_lines(false, hooks).backed_up();
    w.fail_next.lock().unwrap().push("warm".into());
    assert!(w.run(Kind::Failover, &no_final()).is_err());
    assert!(matches!(w.run(Kind::Failover, &no_final()), Ok(Outcome::Done(_))));
    assert_eq!(w.log().iter().filter(|l| *l == "a stop").count(), 1);
}
