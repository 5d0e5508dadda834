use super::*;
use crate::ops::fake::World;
use crate::testing;

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
}

fn no_router(_: &App) -> Result<Option<Box<dyn lifeboat_traffic::Router>>, crate::OrchestratorError> {
    Ok(None)
}

fn status_of(w: &World, repo: Result<&Repository, String>, now: OffsetDateTime) -> PlanStatus {
    let src = Sources {
        plan: &w.plan,
        repo,
        router: &no_router,
        refresh: Duration::from_secs(10),
        only: None,
    };
    collect(&src, now)
}

#[test]
fn a_fact_older_than_twice_its_refresh_reads_unknown_not_its_last_value() {
    let mut f = Fact::known(0.5_f64, at(0), Duration::from_secs(10));
    f.age(at(20));
    assert_eq!(f.get(), Some(&0.5));
    f.age(at(21));
    assert_eq!(f.state, Freshness::Unknown);
    assert_eq!(f.get(), None);
    assert!(f.why.as_deref().unwrap().contains("21 s ago"), "{:?}", f.why);
    assert_eq!(f.value, None, "a stale value is not kept for a view to show");
}

#[test]
fn an_unreachable_repository_makes_the_app_unknown_never_green() {
    let w = World::with_app_lines(false, "    objectives: {rpo: 1h}\n");
    let s = status_of(&w, Err("repository s3://x: no answer".into()), at(0));
    assert_eq!(s.repository.state, Freshness::Unknown);
    let a = &s.apps[0];
    assert_eq!(a.health, Health::Unknown, "{a:?}");
    for (name, state) in [
        ("active", a.active.state),
        ("rpo", a.rpo.state),
        ("backups", a.backups.state),
        ("drill", a.drill.state),
        ("operation", a.operation.state),
        ("standby", a.standby_state.state),
    ] {
        assert_eq!(state, Freshness::Unknown, "{name}");
    }
    assert!(a.rpo.why.as_deref().unwrap().contains("no answer"));
    let t = table(&s);
    assert!(t.contains("UNKNOWN") && !t.contains(" OK "), "{t}");
}

#[test]
fn the_rpo_is_the_age_of_the_newest_complete_recovery_point_against_its_objective() {
    let w = World::with_app_lines(false, "    objectives: {rpo: 100s}\n");
    let tags = ["plan=p", "app=web"];
    testing::snapshot(&w.repo, b"old", 500, &tags, 0);
    let newest = testing::snapshot(&w.repo, b"new", 50, &tags, 0);
    // Newer, but incomplete (errors while reading), and another app's: neither counts.
    testing::snapshot(&w.repo, b"bad", 10, &tags, 3);
    testing::snapshot(&w.repo, b"other", 5, &["plan=p", "app=other"], 0);
    w.repo.flush().unwrap();
    let s = status_of(&w, Ok(&w.repo), at(0));
    let rpo = s.apps[0].rpo.get().unwrap();
    assert_eq!(rpo.snapshot.as_deref(), Some(newest.to_hex().as_str()));
    assert_eq!(rpo.age_seconds, Some(50.0));
    assert_eq!(rpo.ratio, Some(0.5));
    // Within its RPO; only that it was never drilled holds it back.
    assert_eq!(s.apps[0].reasons, ["never drilled"]);
    assert_eq!(s.apps[0].health, Health::Warning);
    // 150 s later: 2x the objective (warning); 300 s later: critical.
    let s = status_of(&w, Ok(&w.repo), at(150));
    assert_eq!(s.apps[0].health, Health::Warning, "{:?}", s.apps[0].reasons);
    assert!(s.apps[0].reasons[0].contains("2.0x"), "{:?}", s.apps[0].reasons);
    let s = status_of(&w, Ok(&w.repo), at(300));
    assert_eq!(s.apps[0].health, Health::Critical);
    assert!(s.apps[0].reasons[0].contains("3.5x"), "{:?}", s.apps[0].reasons);
    // The same status read 25 s after it was made (refresh 10 s): the RPO is unknown.
    let stale = status_of(&w, Ok(&w.repo), at(0)).aged(at(25));
    assert_eq!(stale.apps[0].rpo.state, Freshness::Unknown);
    assert_eq!(stale.apps[0].health, Health::Unknown);
}

#[test]
fn backup_attempts_give_the_last_result_and_the_failures_in_a_row() {
    let w = World::with_app_lines(false, "    backup: {every: 1h}\n");
    let attempt = |n: i64, error: Option<&str>| BackupAttempt {
        started: at(n),
        seconds: 2.0,
        site: "a".into(),
        snapshot: error.is_none().then(|| "ab".repeat(32)),
        bytes_added: 7,
        error: error.map(str::to_string),
        by: "schedule".into(),
    };
    for (n, e) in [(1, None), (2, Some("engine hung")), (3, Some("engine hung"))] {
        records::record_attempt(&w.repo, "p", "web", &attempt(n, e)).unwrap();
    }
    let s = status_of(&w, Ok(&w.repo), at(10));
    let b = s.apps[0].backups.get().unwrap();
    assert_eq!(b.failures_in_a_row, 2);
    assert_eq!(b.last_success, Some(at(1)));
    assert_eq!(b.last.as_ref().unwrap().error.as_deref(), Some("engine hung"));
    assert_eq!(b.every_seconds, Some(3600.0));
    assert!(s.apps[0].reasons.iter().any(|r| r.contains("2 backups failed")));
}

#[test]
fn traffic_elsewhere_than_the_journal_says_is_flagged_critical() {
    struct OnStandby;
    impl lifeboat_traffic::Router for OnStandby {
        fn describe(&self) -> String {
            "test router".into()
        }
        fn current(&self) -> Result<Route, lifeboat_traffic::TrafficError> {
            Ok(Route::On(Side::Standby))
        }
        fn switch(&self, _: Side, _: &lifeboat_traffic::SwitchContext) -> Result<(), lifeboat_traffic::TrafficError> {
            unreachable!("status never switches")
        }
    }
    let w = World::new(false);
    let router = |_: &App| -> Result<Option<Box<dyn lifeboat_traffic::Router>>, crate::OrchestratorError> {
        Ok(Some(Box::new(OnStandby)))
    };
    let src = Sources {
        plan: &w.plan,
        repo: Ok(&w.repo),
        router: &router,
        refresh: Duration::from_secs(10),
        only: None,
    };
    let s = collect(&src, at(0));
    let t = s.apps[0].traffic.get().unwrap().as_ref().unwrap();
    assert_eq!((t.site.as_deref(), t.agrees), (Some("b"), false));
    assert_eq!(s.apps[0].health, Health::Critical);
    assert!(table(&s).contains("b (!)"), "{}", table(&s));
}

#[test]
fn the_check_fills_in_the_standby_and_the_readiness_level() {
    let w = World::new(false);
    let mut s = status_of(&w, Ok(&w.repo), at(0));
    assert_eq!(s.apps[0].readiness.state, Freshness::Unknown);
    let line = |check: &str, status: Status, count: Option<u64>| CheckResult {
        app: Some("web".into()),
        check: check.into(),
        status,
        detail: format!("{check} detail"),
        count,
    };
    let results = vec![
        line("drift", Status::Fail, Some(3)),
        line("images on standby", Status::Ok, Some(0)),
        CheckResult {
            app: None,
            check: "capacity b".into(),
            status: Status::Ok,
            detail: "fits".into(),
            count: None,
        },
    ];
    s.with_checks(&w.plan, &results, at(0), Duration::from_secs(60));
    let sb = s.apps[0].standby_state.get().unwrap().as_ref().unwrap();
    assert_eq!(
        (sb.drift, sb.images_missing, sb.capacity_fits),
        (Some(3), Some(0), Some(true))
    );
    assert_eq!(sb.problems, ["drift: drift detail"]);
    assert_eq!(s.apps[0].readiness.get().unwrap().level, 0);
    assert!(s.apps[0].reasons.iter().any(|r| r.contains("drift: 3")));
}

/// Regression: a local repository whose disk went away lists as empty; the status must not
/// take that for "no recovery point, no operation".
#[test]
fn a_repository_whose_files_went_away_reads_unknown_not_empty() {
    let w = World::with_app_lines(false, "    objectives: {rpo: 1h}\n");
    let dir = tempfile::tempdir().unwrap();
    let repo = testing::repo(dir.path());
    testing::snapshot(&repo, b"x", 10, &["plan=p", "app=web"], 0);
    repo.flush().unwrap();
    assert_eq!(status_of(&w, Ok(&repo), at(0)).apps[0].rpo.state, Freshness::Fresh);
    std::fs::rename(dir.path(), dir.path().with_extension("gone")).unwrap();
    let s = status_of(&w, Ok(&repo), at(0));
    std::fs::rename(dir.path().with_extension("gone"), dir.path()).unwrap();
    assert_eq!(s.repository.state, Freshness::Unknown);
    assert_eq!(s.apps[0].rpo.state, Freshness::Unknown, "{:?}", s.apps[0].rpo);
    assert_eq!(s.apps[0].operation.state, Freshness::Unknown);
    assert_eq!(s.apps[0].health, Health::Unknown);
}
