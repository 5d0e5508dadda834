//! The fence step and the preflight of [`super::switch_over`] against in-memory sites and a real
//! local repository: what counts as evidence, what fails before anything is stopped, and the
//! restart policies a fence holds.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_repo::Repository;

use super::fake::{no_final, Answer, FakeTerm, World};
use super::{backup_plan, ManualFence, Options, Outcome};
use crate::journal::{FencedBy, Kind, OpStatus, Step, StepOutcome};

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
fn a_self_fence_confirmed_by_the_quorum_is_evidence_for_an_unreachable_primary_and_its_absence_refuses() {
    let mut w = World::new(false).backed_up();
    w.a = Answer::Unreachable;
    let leader = FakeTerm::new(7);
    *leader.self_fence.lock().unwrap() = Some(Err("instance a of site a still holds its lease".into()));
    w.leadership = Some(leader.clone());
    let err = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
    assert!(
        err.contains("the serve instances do not confirm it: instance a of site a still holds its lease")
            && err.contains("Nothing was started on b"),
        "{err}"
    );
    assert!(w.log().is_empty(), "{:?}", w.log());

    *leader.self_fence.lock().unwrap() = Some(Ok("its instance lost its lease 12 s ago".into()));
    let Outcome::Done(op) = w.run(Kind::Failover, &no_final()).unwrap() else {
        panic!("not done")
    };
    assert!(
        World::fence_detail(&op).contains("its instance lost its lease"),
        "{op:?}"
    );
    assert_eq!(op.finished(Step::Fence).unwrap().fenced_by, Some(FencedBy::Quorum));
    assert_eq!(op.finished(Step::Fence).unwrap().term, Some(7));
    assert_eq!(w.store().state().unwrap().active.as_deref(), Some("b"));
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
    let opts = Options {
        repo_lock_wait: Duration::from_millis(300),
        ..no_final()
    };
    let e = w.run(Kind::Failover, &opts).unwrap_err().to_string();
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
        std::thread::spawn(move || backup_plan(&w.env(), Some("web"), Duration::ZERO, "test").unwrap())
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
    let backed = backup_plan(&w.env(), Some("web"), Duration::ZERO, "test").unwrap();
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
