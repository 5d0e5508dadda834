//! Retention policies: which snapshots `forget` keeps.
//!
//! Snapshots are grouped by recovery-point owner: those of a DR plan's app (tags `plan=P` and
//! `app=A`, whatever site or engine took them) form one group per (kind, plan, app); any other
//! snapshot is grouped by (kind, hostname, paths). The policy applies to each group on its own, so
//! `--keep-last 3` keeps three snapshots of every app, never fewer for one app because another app
//! on the same engine was backed up more often. Whatever the rules say, snapshots tagged
//! `quarantine` or `split-brain` (copies of what only one site had, taken before Lifeboat overwrote
//! it) and the snapshots the caller names as protected (what DR state references: a hot standby's
//! staged snapshot, the recovery point of an unfinished operation) are kept.
//! Within a group, newest first: `keep_last` keeps the N newest; `keep_hourly` keeps the newest
//! snapshot of each of the N most recent hours that have one; likewise daily, weekly (ISO weeks),
//! monthly and yearly. Buckets use UTC. A snapshot is kept when any rule keeps it.
use std::collections::{BTreeMap, HashSet};

use lifeboat_model::{Id, Snapshot};
use serde::Serialize;
use time::OffsetDateTime;

use crate::RepoError;

/// How many snapshots to keep per rule (0: the rule keeps nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

/// The decision for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    /// The rules that keep it (empty when removed).
    pub reasons: Vec<&'static str>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Applies the policy. Refuses an empty policy, which would remove everything.
    pub fn apply(&self, snapshots: &[(Id, Snapshot)]) -> Result<Vec<Decision>, RepoError> {
        self.apply_protecting(snapshots, &HashSet::new())
    }

    /// Applies the policy, keeping every snapshot in `protected` (reason `protected`) and every
    /// quarantine snapshot (reason `quarantine`).
    pub fn apply_protecting(
        &self,
        snapshots: &[(Id, Snapshot)],
        protected: &HashSet<Id>,
    ) -> Result<Vec<Decision>, RepoError> {
        if self.is_empty() {
            return Err(RepoError::InvalidPolicy(
                "no --keep-* option given; refusing to remove every snapshot".into(),
            ));
        }
        type Group = (String, String, Vec<String>);
        let mut groups: BTreeMap<Group, Vec<&(Id, Snapshot)>> = BTreeMap::new();
        for s in snapshots {
            groups.entry(group_of(&s.1)).or_default().push(s);
        }
        let mut out = Vec::new();
        for (_, mut group) in groups {
            group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
            type Bucket = fn(OffsetDateTime) -> i64;
            let rules: [(&'static str, u32, Bucket); 6] = [
                ("last", self.last, |_| 0),
                ("hourly", self.hourly, |t| t.unix_timestamp().div_euclid(3600)),
                ("daily", self.daily, |t| t.unix_timestamp().div_euclid(86400)),
                ("weekly", self.weekly, |t| {
                    let (y, w, _) = t.to_iso_week_date();
                    y as i64 * 100 + w as i64
                }),
                ("monthly", self.monthly, |t| t.year() as i64 * 100 + t.month() as i64),
                ("yearly", self.yearly, |t| t.year() as i64),
            ];
            let mut left: Vec<u32> = rules.iter().map(|r| r.1).collect();
            let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
            for (id, snap) in group {
                let t = snap.time.to_offset(time::UtcOffset::UTC);
                let mut reasons = Vec::new();
                for (i, (name, _, bucket)) in rules.iter().enumerate() {
                    if left[i] == 0 {
                        continue;
                    }
                    let b = bucket(t);
                    // "last" keeps every snapshot; the others the first (newest) of each bucket.
                    if *name == "last" || last_bucket[i] != Some(b) {
                        last_bucket[i] = Some(b);
                        left[i] -= 1;
                        reasons.push(*name);
                    }
                }
                if snap.tags.iter().any(|t| QUARANTINE_TAGS.contains(&t.as_str())) {
                    reasons.push("quarantine");
                }
                if protected.contains(id) {
                    reasons.push("protected");
                }
                out.push(Decision {
                    id: *id,
                    keep: !reasons.is_empty(),
                    reasons,
                });
            }
        }
        Ok(out)
    }
}

/// Tags of snapshots that no retention rule removes.
pub const QUARANTINE_TAGS: [&str; 2] = ["quarantine", "split-brain"];

/// The retention group of a snapshot (see the module documentation).
fn group_of(s: &Snapshot) -> (String, String, Vec<String>) {
    let tag = |prefix: &str| s.tags.iter().find(|t| t.starts_with(prefix)).cloned();
    if let (Some(plan), Some(app)) = (tag("plan="), tag("app=")) {
        return (s.kind.clone(), format!("dr {plan}"), vec![app]);
    }
    let mut paths = s.paths.clone();
    paths.sort();
    (s.kind.clone(), s.hostname.clone(), paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_model::SnapshotSummary;
    use proptest::prelude::*;

    fn snap(n: u8, t: i64) -> (Id, Snapshot) {
        (
            Id([n; 32]),
            Snapshot {
                time: OffsetDateTime::from_unix_timestamp(t).unwrap(),
                kind: "files".into(),
                hostname: "h".into(),
                username: String::new(),
                paths: vec!["/data".into()],
                tags: vec![],
                tree: Id::default(),
                parent: None,
                program_version: "t".into(),
                summary: SnapshotSummary::default(),
            },
        )
    }

    fn app_snap(n: u8, t: i64, app: &str, extra: &[&str]) -> (Id, Snapshot) {
        let (id, mut s) = snap(n, t);
        s.kind = "docker".into();
        s.hostname = "engine-a".into();
        s.paths = vec!["unix:///run/a.sock".into()];
        s.tags = vec!["plan=shop".into(), format!("app={app}"), "site=a".into()];
        s.tags.extend(extra.iter().map(|t| t.to_string()));
        (id, s)
    }

    /// Finding 18: two apps on one engine; `--keep-last 1` keeps each app's newest, the staged
    /// snapshot DR state names, and a quarantine snapshot.
    #[test]
    fn forget_keeps_each_apps_newest_recovery_point_and_what_dr_state_references() {
        let snaps = vec![
            app_snap(1, 100, "db", &[]),
            app_snap(2, 200, "db", &["split-brain"]),
            app_snap(3, 300, "web", &[]),
            app_snap(4, 400, "web", &[]),
            app_snap(5, 500, "web", &[]),
            app_snap(6, 600, "web", &[]),
        ];
        let mut on_another_site = app_snap(7, 50, "db", &[]);
        on_another_site.1.hostname = "engine-b".into();
        let mut snaps = snaps;
        snaps.push(on_another_site);
        let protected: HashSet<Id> = [Id([4; 32])].into();
        let p = Policy {
            last: 1,
            ..Default::default()
        };
        let d = p.apply_protecting(&snaps, &protected).unwrap();
        let kept: HashSet<u8> = d.iter().filter(|d| d.keep).map(|d| d.id.0[0]).collect();
        assert_eq!(kept, [2, 4, 6].into(), "{d:?}");
        let reasons = |n: u8| d.iter().find(|x| x.id.0[0] == n).unwrap().reasons.clone();
        assert_eq!(
            reasons(2),
            vec!["last", "quarantine"],
            "db's newest is its quarantine copy"
        );
        assert_eq!(reasons(4), vec!["protected"]);
        assert!(
            !d.iter().find(|x| x.id.0[0] == 7).unwrap().keep,
            "one group per app across sites"
        );
    }

    #[test]
    fn empty_policy_is_refused() {
        assert!(Policy::default().apply(&[snap(1, 0)]).is_err());
    }

    #[test]
    fn daily_keeps_newest_per_day() {
        let day = 86400;
        let snaps = vec![snap(1, 10), snap(2, 20), snap(3, day + 5), snap(4, 2 * day + 5)];
        let p = Policy {
            daily: 2,
            ..Default::default()
        };
        let kept: Vec<u8> = p
            .apply(&snaps)
            .unwrap()
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.0[0])
            .collect();
        assert_eq!(kept, vec![4, 3]);
    }

    proptest! {
        #[test]
        fn keep_last_keeps_exactly_the_newest(times in proptest::collection::btree_set(0i64..1_000_000_000, 1..40), n in 1u32..10) {
            let snaps: Vec<_> = times.iter().enumerate().map(|(i, t)| snap(i as u8, *t)).collect();
            let d = Policy { last: n, ..Default::default() }.apply(&snaps).unwrap();
            let kept = d.iter().filter(|d| d.keep).count();
            prop_assert_eq!(kept, (n as usize).min(snaps.len()));
            // The newest snapshot is always kept by any non-empty policy.
            prop_assert!(d[0].keep);
        }

        #[test]
        fn any_rule_keeps_the_newest(times in proptest::collection::btree_set(0i64..1_000_000_000, 1..40),
                                     h in 0u32..3, dd in 0u32..3, w in 0u32..3, m in 0u32..3, y in 0u32..3) {
            let p = Policy { last: 0, hourly: h, daily: dd, weekly: w, monthly: m, yearly: y };
            prop_assume!(!p.is_empty());
            let snaps: Vec<_> = times.iter().enumerate().map(|(i, t)| snap(i as u8, *t)).collect();
            let d = p.apply(&snaps).unwrap();
            prop_assert!(d[0].keep);
            prop_assert!(d.iter().filter(|d| d.keep).count() <= (h + dd + w + m + y) as usize);
        }
    }
}
