//! Journals and app states written by the version before steps, outcomes and facts were typed
//! (`fixtures/journal-v1`, made by that version's fake-platform tests: a failover with a final
//! backup, one fenced by hand, one on the witness's word, one resumed after a failed hook, one
//! cut while a hook ran, a failback) read with today's types and written back as the same JSON.
use std::path::PathBuf;

use lifeboat_orchestrator::journal::{AppState, FencedBy, OpStatus, Operation, Step, StepOutcome};
use serde_json::Value;

fn dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/journal-v1")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap()
}

fn op(name: &str) -> Operation {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn journals_of_the_untyped_format_read_and_write_back_unchanged() {
    let mut seen = 0;
    for e in std::fs::read_dir(dir()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        let again = if name.starts_with("state-") {
            serde_json::to_value(serde_json::from_str::<AppState>(&text).unwrap()).unwrap()
        } else {
            serde_json::to_value(serde_json::from_str::<Operation>(&text).unwrap()).unwrap()
        };
        assert_eq!(again, original, "{name} changed on a round trip");
        seen += 1;
    }
    assert_eq!(seen, 8, "every fixture was read");
}

#[test]
fn the_facts_of_old_journals_come_from_their_words_in_one_place() {
    assert_eq!(op("failover-final-backup.json").fenced_by(), Some(FencedBy::Lifeboat));
    assert_eq!(op("failback.json").fenced_by(), Some(FencedBy::Lifeboat));
    assert_eq!(op("failover-fenced-by-hand.json").fenced_by(), Some(FencedBy::Hand));
    assert_eq!(op("failover-witness.json").fenced_by(), Some(FencedBy::Witness));
    let resumed = op("failover-resumed.json");
    assert_eq!(resumed.status, OpStatus::Done);
    assert_eq!(resumed.resumed, 1);
    assert_eq!(resumed.finished(Step::Hook(2)).unwrap().attempts, 2);
    assert_eq!(
        resumed.finished(Step::FinalBackup).unwrap().outcome,
        StepOutcome::Skipped
    );
    let cut = op("failover-interrupted.json");
    assert_eq!(cut.status, OpStatus::Running);
    let last = cut.steps.last().unwrap();
    assert_eq!(
        (last.name, last.outcome, last.finished),
        (Step::Hook(2), StepOutcome::Pending, None)
    );
    assert!(
        cut.finished(Step::Hook(2)).is_none(),
        "a step cut by a crash is not finished"
    );
    // The drill prefix of a journal that did not record one is made as that version made it.
    let mut drill = cut.clone();
    drill.id = "20261201T210007Z-4a3e-drill".into();
    assert_eq!(drill.copy_prefix(), "drill-2100074a3e-");
}

#[test]
fn a_journal_naming_a_step_this_version_does_not_know_is_refused() {
    let text = read("failover-final-backup.json").replace("\"traffic\"", "\"teleport\"");
    let e = serde_json::from_str::<Operation>(&text).unwrap_err().to_string();
    assert!(e.contains("unknown step \"teleport\""), "{e}");
    let text = read("failover-final-backup.json").replace("\"name\": \"data\"", "\"name\": \"hook 0\"");
    assert!(serde_json::from_str::<Operation>(&text).is_err(), "hooks count from 1");
}

/// The package's directory: cargo's at run time (a test binary built from another checkout that
/// shares the target directory still reads this checkout's files), else the one it was built in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
