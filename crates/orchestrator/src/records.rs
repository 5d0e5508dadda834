//! Append-only records kept in the repository beside the journal: each app's backup attempts
//! (`dr/PLAN/APP/backups/ID`) and the plan's audit log of API actions (`dr/PLAN/audit/ID`).
//!
//! Guarantees: one file per record, never rewritten (two writers never lose each other's record);
//! ids sort by time, so the newest are found by listing without reading the others; attempts
//! beyond [`KEEP_ATTEMPTS`] are removed oldest first, audit entries are never removed by Lifeboat.
//! A record that does not read (damaged, or from a newer version) is skipped, not an error of the
//! whole list. Assumes: writers' clocks roughly agree (the order is by their clocks).
use lifeboat_repo::Repository;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::OrchestratorError;

/// How many backup attempts of an app are kept.
pub const KEEP_ATTEMPTS: usize = 20;

/// One backup of an app by plan, successful or not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupAttempt {
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    pub seconds: f64,
    /// The site it read from.
    pub site: String,
    /// The snapshot it made (none when it failed before one was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Plaintext bytes the snapshot added to the repository.
    #[serde(default)]
    pub bytes_added: u64,
    /// Why it failed; none when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who started it: `schedule`, `cli`, `api:NAME`.
    pub by: String,
}

impl BackupAttempt {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// One action taken through the API, as the audit log holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct AuditEntry {
    /// RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    /// The token's name (never the token).
    pub who: String,
    /// `backup`, `drill`, `failover`, `failback`.
    pub action: String,
    pub app: String,
    /// The HTTP status the API answered.
    pub status: u16,
    /// What came of it, in one line.
    pub result: String,
}

fn record_id(now: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z-{:04x}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond(),
        std::process::id() & 0xffff
    )
}

fn write<T: Serialize>(repo: &Repository, dir: &str, at: OffsetDateTime, v: &T) -> Result<String, OrchestratorError> {
    let id = record_id(at);
    let bytes = serde_json::to_vec(v).expect("serialisable");
    repo.write_state(&format!("{dir}/{id}"), &bytes)?;
    Ok(id)
}

/// The newest `limit` records under `dr/DIR`, newest first.
fn newest<T: serde::de::DeserializeOwned>(
    repo: &Repository,
    dir: &str,
    limit: usize,
) -> Result<Vec<T>, OrchestratorError> {
    let mut names = repo.list_state(dir)?;
    names.sort();
    let mut out = Vec::new();
    for name in names.iter().rev() {
        if out.len() >= limit {
            break;
        }
        if let Some(v) = repo
            .read_state(&format!("{dir}/{name}"))
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            out.push(v);
        }
    }
    Ok(out)
}

fn attempts_dir(plan: &str, app: &str) -> String {
    format!("{plan}/{app}/backups")
}

/// Records a backup attempt of `app`, then removes the attempts beyond [`KEEP_ATTEMPTS`].
pub fn record_attempt(repo: &Repository, plan: &str, app: &str, a: &BackupAttempt) -> Result<(), OrchestratorError> {
    let dir = attempts_dir(plan, app);
    write(repo, &dir, a.started, a)?;
    let mut names = repo.list_state(&dir)?;
    if names.len() > KEEP_ATTEMPTS {
        names.sort();
        for old in &names[..names.len() - KEEP_ATTEMPTS] {
            repo.remove_state(&format!("{dir}/{old}"))?;
        }
    }
    Ok(())
}

/// The app's newest `limit` backup attempts, newest first.
pub fn attempts(
    repo: &Repository,
    plan: &str,
    app: &str,
    limit: usize,
) -> Result<Vec<BackupAttempt>, OrchestratorError> {
    newest(repo, &attempts_dir(plan, app), limit)
}

/// Appends an entry to the plan's audit log.
pub fn audit(repo: &Repository, plan: &str, e: &AuditEntry) -> Result<(), OrchestratorError> {
    write(repo, &format!("{plan}/audit"), e.at, e).map(|_| ())
}

/// The plan's newest `limit` audit entries, newest first.
pub fn audit_log(repo: &Repository, plan: &str, limit: usize) -> Result<Vec<AuditEntry>, OrchestratorError> {
    newest(repo, &format!("{plan}/audit"), limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn attempt(n: i64, error: Option<&str>) -> BackupAttempt {
        BackupAttempt {
            started: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + n),
            seconds: 1.5,
            site: "a".into(),
            snapshot: error.is_none().then(|| format!("{n:064x}")),
            bytes_added: 10,
            error: error.map(str::to_string),
            by: "schedule".into(),
        }
    }

    #[test]
    fn attempts_are_listed_newest_first_and_kept_to_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = testing::repo(dir.path());
        let nth = |n: i64| attempt(n, (n % 3 == 0).then_some("engine hung"));
        for n in 0..(KEEP_ATTEMPTS as i64 + 5) {
            record_attempt(&repo, "p", "web", &nth(n)).unwrap();
        }
        let all = attempts(&repo, "p", "web", 100).unwrap();
        assert_eq!(all.len(), KEEP_ATTEMPTS);
        assert_eq!(all[0], nth(KEEP_ATTEMPTS as i64 + 4));
        assert_eq!(all[KEEP_ATTEMPTS - 1], nth(5), "the oldest five went");
        assert!(all.windows(2).all(|w| w[0].started > w[1].started));
        assert_eq!(attempts(&repo, "p", "web", 2).unwrap().len(), 2);
        assert!(attempts(&repo, "p", "other", 2).unwrap().is_empty());
    }

    #[test]
    fn the_audit_log_keeps_every_entry_and_skips_one_that_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let repo = testing::repo(dir.path());
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000);
        for (i, action) in ["backup", "drill", "failover"].iter().enumerate() {
            let e = AuditEntry {
                at: at + time::Duration::seconds(i as i64),
                who: "ops".into(),
                action: action.to_string(),
                app: "web".into(),
                status: 202,
                result: "started".into(),
            };
            audit(&repo, "p", &e).unwrap();
        }
        repo.write_state("p/audit/29991231T000000.000000000Z-0000", b"not json")
            .unwrap();
        let log = audit_log(&repo, "p", 10).unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["failover", "drill", "backup"]);
    }
}
