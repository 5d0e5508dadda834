//! Failover, failback, drills, backups by plan and sync against the in-memory sites of
//! [`super::fake`]: which steps run, in which order, what a resume repeats, what is refused.
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fake::{no_final, Answer, FakeTerm, World};
use super::{backup_plan, drill, ManualFence, Options, Outcome};
use crate::journal::{Kind, OpStatus, Operation, Step, StepOutcome};
use crate::sync::sync_plan;

fn done(outcome: Outcome) -> Operation {
    match outcome {
        Outcome::Done(op) => *op,
        Outcome::AlreadyThere { site, .. } => panic!("nothing done: already on {site}"),
    }
}

fn outcome(op: &Operation, step: Step) -> StepOutcome {
    op.steps
        .iter()
        .find(|s| s.name == step)
        .map(|s| s.outcome)
        .unwrap_or(StepOutcome::Pending)
}

/// A cold-standby app with traffic, recovered from its latest backup.
fn cold() -> World {
    World::with_lines(false, "cold", "").backed_up().with_traffic()
}

#[test]
fn a_failover_runs_its_steps_in_order_and_a_failback_brings_the_app_home() {
    let mut w = cold();
    w.b_backup_takes = Some(Duration::ZERO);
    let op = done(w.run(Kind::Failover, &no_final()).unwrap());
    assert_eq!(op.status, OpStatus::Done);
    assert_eq!(
        w.log(),
        ["a stop", "b stop", "b stage", "b start", "traffic switch standby seq 1"],
        "fence a, then b is written, started and given the traffic"
    );
    for (step, want) in [
        (Step::Fence, StepOutcome::Done),
        (Step::FinalBackup, StepOutcome::Skipped),
        (Step::Data, StepOutcome::Done),
        (Step::Start, StepOutcome::Done),
        (Step::Health, StepOutcome::Skipped),
        (Step::Traffic, StepOutcome::Done),
        (Step::Verify, StepOutcome::Skipped),
    ] {
        assert_eq!(outcome(&op, step), want, "{step}");
    }
    let state = w.store().state().unwrap();
    assert_eq!(state.active.as_deref(), Some("b"));
    assert!(state.running.is_none());
    assert!(state.fenced.iter().any(|f| f.site == "a" && !f.unreachable));

    w.clear_log();
    let back = done(w.run(Kind::Failback, &Options::default()).unwrap());
    assert_eq!(
        w.log(),
        [
            "b stop",
            "b backup",
            "a stop",
            "a stage",
            "a start",
            "traffic switch primary seq 2"
        ],
        "the final backup of b is what a gets back"
    );
    let rp = back.recovery_point.expect("a recovery point");
    assert!(rp.final_backup, "{rp:?}");
    let state = w.store().state().unwrap();
    assert_eq!(state.active.as_deref(), Some("a"));
    assert!(
        state.fenced.is_empty(),
        "the standby's stop is its normal state: {:?}",
        state.fenced
    );
    assert!(matches!(
        w.run(Kind::Failback, &Options::default()).unwrap(),
        Outcome::AlreadyThere { .. }
    ));
}

/// Each step that fails leaves the operation open; the next call resumes it at that step and
/// never repeats one that finished (the fence, the stage).
#[test]
fn a_failover_that_failed_at_a_step_resumes_there_and_repeats_no_finished_step() {
    for (call, failed, again) in [
        (
            "b stage",
            Step::Data,
            vec!["b stop", "b stage", "b start", "traffic switch standby seq 1"],
        ),
        ("b start", Step::Start, vec!["b start", "traffic switch standby seq 1"]),
        ("traffic switch", Step::Traffic, vec!["traffic switch standby seq 2"]),
    ] {
        let w = cold();
        w.fail_once(call);
        let e = w.run(Kind::Failover, &no_final()).unwrap_err().to_string();
        assert!(e.contains(&format!("stopped at step {failed}")), "{call}: {e}");
        let state = w.store().state().unwrap();
        let id = state.running.clone().expect("the operation is left open");
        let op = w.store().operation(&id).unwrap().unwrap();
        assert_eq!(outcome(&op, Step::Fence), StepOutcome::Done, "{call}");
        assert_eq!(outcome(&op, failed), StepOutcome::Failed, "{call}");
        assert_eq!(state.active.as_deref(), None, "{call}: not moved yet");

        w.clear_log();
        let op = done(w.run(Kind::Failover, &no_final()).unwrap());
        assert_eq!(op.id, id, "{call}: the same operation, resumed");
        assert_eq!(op.resumed, 1);
        // a is checked again (it runs nothing, so it is not stopped again).
        assert_eq!(w.log(), again, "{call}");
        let attempts = op.steps.iter().find(|s| s.name == failed).unwrap().attempts;
        assert_eq!(attempts, 2, "{call}");
        assert_eq!(w.store().state().unwrap().active.as_deref(), Some("b"));
    }
}

#[test]
fn a_failback_from_a_standby_that_cannot_be_reached_is_refused_without_accept_data_loss() {
    let mut w = cold();
    done(w.run(Kind::Failover, &no_final()).unwrap());
    w.b = Answer::Unreachable;
    w.clear_log();
    let e = w.run(Kind::Failback, &Options::default()).unwrap_err().to_string();
    assert!(
        e.contains("would lose what was written on b") && e.contains("--accept-data-loss"),
        "{e}"
    );
    assert!(w.log().is_empty(), "nothing stopped or started: {:?}", w.log());
    let state = w.store().state().unwrap();
    assert_eq!(state.active.as_deref(), Some("b"));
    assert!(state.running.is_none(), "a refused failback leaves nothing open");

    // Accepting the loss is not evidence that b is off: that still needs the operator's word.
    let accept = Options {
        accept_data_loss: true,
        ..Options::default()
    };
    let e = w.run(Kind::Failback, &accept).unwrap_err().to_string();
    assert!(e.contains("b is not fenced"), "{e}");
    let by_hand = Options {
        fenced_by_hand: Some(ManualFence {
            site: "b".into(),
            by: "ops".into(),
        }),
        ..accept
    };
    let op = done(w.run(Kind::Failback, &by_hand).unwrap());
    assert_eq!(outcome(&op, Step::FinalBackup), StepOutcome::Skipped);
    assert_eq!(
        w.log(),
        ["a stop", "a stage", "a start", "traffic switch primary seq 2"]
    );
    let state = w.store().state().unwrap();
    assert!(
        state.fenced.iter().any(|f| f.site == "b" && f.unreachable),
        "b stays fenced until it is seen stopped: {:?}",
        state.fenced
    );
}

#[test]
fn a_hot_standby_that_holds_the_recovery_point_is_not_written_again() {
    let mut w = World::new(false);
    w.a_backup_takes = Some(Duration::ZERO);
    let first = backup_plan(&w.env(), None, Duration::ZERO, "test").unwrap();
    assert_eq!(first[0].error, None);
    assert_eq!(w.log(), ["a backup", "b stage"]);
    let second = backup_plan(&w.env(), None, Duration::ZERO, "test").unwrap();
    let base = &first[0].snapshot.as_ref().unwrap()[..8];
    assert_eq!(w.log()[2..], ["a backup".to_string(), format!("b stage over {base}")]);
    assert!(
        second[0].staged.as_deref().unwrap().starts_with("b: staged"),
        "{second:?}"
    );

    w.clear_log();
    let op = done(w.run(Kind::Failover, &no_final()).unwrap());
    assert_eq!(outcome(&op, Step::Data), StepOutcome::Skipped);
    let data = op.finished(Step::Data).unwrap().detail.clone();
    assert!(data.contains("already staged on b"), "{data}");
    assert_eq!(
        op.recovery_point.unwrap().snapshot.to_hex(),
        *second[0].snapshot.as_ref().unwrap()
    );
    assert_eq!(w.log(), ["a stop", "b stop", "b start"], "no stage at failover");
}

#[test]
fn a_backup_by_plan_never_stages_over_a_standby_that_runs_the_app() {
    let mut w = World::new(false);
    w.a_backup_takes = Some(Duration::ZERO);
    w.b_runs.store(true, Ordering::SeqCst);
    let r = backup_plan(&w.env(), None, Duration::ZERO, "test").unwrap();
    let e = r[0].error.as_deref().unwrap();
    assert!(e.contains("runs on the standby b") && e.contains("not staged"), "{e}");
    assert!(r[0].snapshot.is_some(), "the backup itself is kept");
    assert_eq!(w.log(), ["a backup"]);
}

#[test]
fn a_drill_removes_its_copy_when_verify_fails_and_leaves_production_alone() {
    // Nothing listens on 127.0.0.1:1: the verify check fails at once.
    let w = World::with_lines(
        false,
        "cold",
        "    verify: [{http: {url: \"http://{site}:1/items\", expect_body_contains: widget}}]\n",
    )
    .backed_up();
    let op = drill(&w.env(), "web", &Options::default()).unwrap();
    assert_eq!(op.status, OpStatus::Failed);
    assert_eq!(outcome(&op, Step::Verify), StepOutcome::Failed);
    assert_eq!(outcome(&op, Step::Teardown), StepOutcome::Done);
    assert!(op.error.as_deref().unwrap().contains("verify"), "{:?}", op.error);
    let prefix = op.copy_prefix();
    assert_eq!(
        w.log(),
        [
            format!("b stage {prefix}"),
            format!("b start {prefix}"),
            format!("b remove {prefix}")
        ]
    );
    assert!(
        !w.b_runs.load(Ordering::SeqCst),
        "the standby's production app was not started"
    );
    let state = w.store().state().unwrap();
    assert!(
        state.active.is_none() && state.running.is_none(),
        "a drill changes no state"
    );
}

#[test]
fn a_drill_refuses_a_site_that_runs_the_app() {
    let w = World::new(false).backed_up();
    w.b_runs.store(true, Ordering::SeqCst);
    let e = drill(&w.env(), "web", &Options::default()).unwrap_err().to_string();
    assert!(e.contains("would compete with production"), "{e}");
    assert!(w.log().is_empty());
}

#[test]
fn sync_fences_again_a_primary_that_came_back_after_a_failover() {
    let w = World::with_lines(false, "cold", "").backed_up();
    done(w.run(Kind::Failover, &no_final()).unwrap());
    // a's engine restarted its containers.
    w.a_runs_again.store(true, Ordering::SeqCst);
    w.clear_log();
    let dry = sync_plan(&w.env(), None, true, Duration::ZERO).unwrap();
    assert_eq!(dry[0].drift.len(), 1, "{dry:?}");
    assert!(w.log().is_empty(), "a dry run changes nothing");
    let r = sync_plan(&w.env(), None, false, Duration::ZERO).unwrap();
    assert_eq!((r[0].from.as_str(), r[0].to.as_str()), ("b", "a"));
    assert_eq!(w.log(), ["a stop"]);
    assert!(r[0].corrected[0].starts_with("fenced again"), "{r:?}");
    assert!(!w.a_runs_again.load(Ordering::SeqCst));
}

fn terms(op: &Operation) -> Vec<(Step, Option<i64>)> {
    op.steps.iter().map(|s| (s.name, s.term)).collect()
}

/// Issue 15: a leader deposed while it was paused must not act when it wakes up.
#[test]
fn a_deposed_leader_s_next_step_is_refused_and_it_writes_nothing() {
    let mut w = cold();
    let leader = FakeTerm::new(7);
    w.leadership = Some(leader.clone());
    w.fail_once("b start");
    w.run(Kind::Failover, &no_final()).unwrap_err();
    let id = w.store().state().unwrap().running.unwrap();
    let before = w.store().operation(&id).unwrap().unwrap();
    assert!(
        terms(&before).iter().all(|(_, t)| *t == Some(7)),
        "{:?}",
        terms(&before)
    );

    leader.depose_after(0);
    w.clear_log();
    let e = w.run(Kind::Failover, &no_final()).unwrap_err();
    assert!(matches!(e, crate::OrchestratorError::Deposed { term: 7, .. }), "{e}");
    assert!(w.log().is_empty(), "nothing started, switched or staged: {:?}", w.log());
    let after = w.store().operation(&id).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap()["steps"],
        serde_json::to_value(&before).unwrap()["steps"],
        "the deposed leader did not even journal its refusal"
    );

    // The new leader (term 9) resumes the same operation.
    leader.elect(9);
    let op = done(w.run(Kind::Failover, &no_final()).unwrap());
    assert_eq!(op.id, id);
    assert_eq!(w.log(), ["b start", "traffic switch standby seq 1"]);
    let t = terms(&op);
    assert!(
        t.contains(&(Step::Fence, Some(7))) && t.contains(&(Step::Start, Some(9))),
        "{t:?}"
    );
    assert!(t.contains(&(Step::Traffic, Some(9))), "{t:?}");
}

#[test]
fn a_leader_deposed_during_the_traffic_step_sends_no_switch() {
    let mut w = cold();
    let leader = FakeTerm::new(7);
    w.leadership = Some(leader.clone());
    // Fence, final backup, data, start, health and the traffic step's own check pass; the check
    // right before the switch request does not.
    leader.depose_after(6);
    let e = w.run(Kind::Failover, &no_final()).unwrap_err();
    assert!(matches!(e, crate::OrchestratorError::Deposed { .. }), "{e}");
    assert!(!w.log().iter().any(|l| l.starts_with("traffic")), "{:?}", w.log());
    let state = w.store().state().unwrap();
    assert_eq!(state.traffic_sequence, 0, "no request number was used");
    leader.elect(8);
    done(w.run(Kind::Failover, &no_final()).unwrap());
    let switches: Vec<String> = w.log().into_iter().filter(|l| l.starts_with("traffic")).collect();
    assert_eq!(
        switches,
        ["traffic switch standby seq 1"],
        "one switch, by the new leader"
    );
}

#[test]
fn a_deposed_leader_neither_backs_up_nor_stages() {
    let mut w = World::new(false);
    w.a_backup_takes = Some(Duration::ZERO);
    let leader = FakeTerm::new(3);
    leader.depose_after(0);
    w.leadership = Some(leader);
    let r = backup_plan(&w.env(), None, Duration::ZERO, "test").unwrap();
    assert!(
        r[0].error.as_deref().unwrap().contains("not the leader any more"),
        "{r:?}"
    );
    assert!(w.log().is_empty(), "{:?}", w.log());
}
