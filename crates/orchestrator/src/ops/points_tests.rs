use super::*;
use crate::testing;
use lifeboat_model::Id;

#[test]
fn the_latest_recovery_point_is_the_newest_complete_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let repo = testing::repo(d.path());
    let tags = ["plan=p", "app=web", "site=a"];
    let complete = testing::snapshot(&repo, b"1", 300, &tags, 0);
    let older = testing::snapshot(&repo, b"0", 600, &tags, 0);
    let with_errors = testing::snapshot(&repo, b"2", 200, &tags, 1);
    let tagged = testing::snapshot(&repo, b"3", 100, &["plan=p", "app=web", "incomplete"], 0);
    testing::snapshot(&repo, b"4", 50, &["plan=p", "app=web", "site=a", "quarantine"], 0);
    testing::snapshot(
        &repo,
        b"5",
        40,
        &["plan=p", "app=web", "site=a", "quarantine", "split-brain"],
        0,
    );
    testing::snapshot(&repo, b"6", 10, &["plan=p", "app=other"], 0);
    let rp = latest_recovery_point(&repo, "p", "web").unwrap().unwrap();
    assert_eq!(rp.snapshot, complete);
    let all: Vec<Id> = recovery_points(&repo, "p", "web", false)
        .unwrap()
        .into_iter()
        .map(|r| r.snapshot)
        .collect();
    assert_eq!(all, [complete, older], "newest first, complete only");
    let accepted: Vec<Id> = recovery_points(&repo, "p", "web", true)
        .unwrap()
        .into_iter()
        .map(|r| r.snapshot)
        .collect();
    assert_eq!(
        accepted,
        [tagged, with_errors, complete, older],
        "accepted incomplete ones, never a quarantine snapshot"
    );
}

/// Regression (review finding 19): one snapshot from a host whose clock ran a day ahead was
/// the "latest" recovery point until that day came.
#[test]
fn a_snapshot_dated_in_the_future_is_not_the_latest_recovery_point() {
    let d = tempfile::tempdir().unwrap();
    let repo = testing::repo(d.path());
    let tags = ["plan=p", "app=web", "site=a"];
    // testing::snapshot dates snapshots AGE seconds before 1_800_000_000.
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let ahead = testing::snapshot(&repo, b"ahead", -86_400, &tags, 0);
    let newest = testing::snapshot(&repo, b"new", 60, &tags, 0);
    let skewed_a_little = testing::snapshot(&repo, b"skew", -120, &tags, 0);
    let order: Vec<Id> = recovery_points_at(&repo, "p", "web", false, now)
        .unwrap()
        .into_iter()
        .map(|r| r.snapshot)
        .collect();
    assert_eq!(
        order,
        [skewed_a_little, newest, ahead],
        "within the tolerance a snapshot keeps its place; a day ahead comes last"
    );
}
