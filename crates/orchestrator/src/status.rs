//! Where each app of a plan stands, as one model: the terminal table of `lifeboat status`, the
//! HTTP API, the dashboard and the metrics of `serve` all read it.
//!
//! Every value is a [`Fact`]: what was observed, when, and how often it is refreshed. A fact not
//! refreshed for twice its interval turns [`Freshness::Unknown`] and loses its value
//! ([`PlanStatus::aged`]): a view built from this model shows *unknown*, never a stale green.
//!
//! Sources: the repository (journal, recovery points, backup attempts, drill reports, locks),
//! each app's traffic router (where traffic goes now), the full preflight ([`crate::check`]:
//! standby drift, images, capacity, readiness), and what a running `serve` adds (its watch and
//! leadership). [`collect`] reads the first two, [`PlanStatus::with_checks`] merges the third,
//! [`PlanStatus::with_watch`] and [`PlanStatus::control`] the fourth.
//!
//! Guarantees: reads only; a source that fails makes its facts unknown with the reason, never an
//! error of the whole status. Assumes: `now` is this host's clock (ages are measured against it).
use std::collections::BTreeMap;
use std::time::Duration;

use lifeboat_model::Id;
use lifeboat_plan::{App, Plan, Profile, StandbyMode};
use lifeboat_repo::Repository;
use lifeboat_traffic::{Route, Side};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::check::{CheckResult, Readiness, Status};
use crate::drills::{self, Outcome};
use crate::journal::{Kind, OpStatus, Store, DRILL_STEPS, FAILOVER_STEPS};
use crate::ops::RouterFn;
use crate::records::{self, BackupAttempt};
use crate::report;

/// How often `serve` refreshes what it reads from the repository and the routers.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
/// How often `serve` runs the full check (sites, standby drift, images, capacity, readiness).
pub const DEFAULT_CHECK_REFRESH: Duration = Duration::from_secs(60);

/// Whether a fact is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Freshness {
    /// Observed within twice its refresh interval.
    Fresh,
    /// Never observed, its source failed, or too old: `why` says which.
    Unknown,
}

/// One observed value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Fact<T> {
    pub state: Freshness,
    /// The value (only when fresh).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<T>,
    /// When it was observed (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub at: Option<OffsetDateTime>,
    /// How often it is refreshed.
    pub refresh_seconds: f64,
    /// Why it is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl<T> Fact<T> {
    /// When this fact turns unknown if it is not refreshed (none: it is unknown already).
    pub fn fresh_until(&self) -> Option<OffsetDateTime> {
        let (Freshness::Fresh, Some(at)) = (self.state, self.at) else {
            return None;
        };
        Some(at + time::Duration::seconds_f64(2.0 * self.refresh_seconds))
    }

    pub fn known(value: T, at: OffsetDateTime, refresh: Duration) -> Fact<T> {
        Fact {
            state: Freshness::Fresh,
            value: Some(value),
            at: Some(at),
            refresh_seconds: refresh.as_secs_f64(),
            why: None,
        }
    }

    pub fn unknown(why: impl Into<String>, refresh: Duration) -> Fact<T> {
        Fact {
            state: Freshness::Unknown,
            value: None,
            at: None,
            refresh_seconds: refresh.as_secs_f64(),
            why: Some(why.into()),
        }
    }

    fn from_result(r: Result<T, String>, at: OffsetDateTime, refresh: Duration) -> Fact<T> {
        match r {
            Ok(v) => Fact::known(v, at, refresh),
            Err(e) => Fact::unknown(e, refresh),
        }
    }

    /// The value, when fresh.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref().filter(|_| self.state == Freshness::Fresh)
    }

    /// Turns the fact unknown when observed more than twice its interval before `now`.
    pub fn age(&mut self, now: OffsetDateTime) {
        let (Freshness::Fresh, Some(at)) = (self.state, self.at) else {
            return;
        };
        let age = (now - at).as_seconds_f64();
        if age > 2.0 * self.refresh_seconds {
            self.state = Freshness::Unknown;
            self.value = None;
            self.why = Some(format!(
                "last observed {age:.0} s ago; refreshed every {:.0} s",
                self.refresh_seconds
            ));
        }
    }
}

/// Where traffic goes, as the app's router answers now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Traffic {
    /// The site that gets the traffic; none when the router cannot tell.
    pub site: Option<String>,
    /// What the router said (its description and answer).
    pub detail: String,
    /// Whether the traffic goes where the journal says the app is active.
    pub agrees: bool,
}

/// The recovery point objective now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rpo {
    /// The newest recovery point that checks against the repository (complete, its tree indexed).
    pub snapshot: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub time: Option<OffsetDateTime>,
    /// Its age: what would be lost if the active site were lost now.
    pub age_seconds: Option<f64>,
    pub objective_seconds: Option<f64>,
    /// Age over objective: below 1 within the objective.
    pub ratio: Option<f64>,
}

/// The app's backups by plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Backups {
    /// The newest attempt.
    pub last: Option<Attempt>,
    /// The newest successful one.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub last_success: Option<OffsetDateTime>,
    /// The schedule (`backup.every`), if any.
    pub every_seconds: Option<f64>,
    /// How many of the recorded attempts failed in a row, newest first.
    pub failures_in_a_row: u32,
}

/// One backup attempt (see [`crate::records::BackupAttempt`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started: OffsetDateTime,
    pub seconds: f64,
    pub site: String,
    pub ok: bool,
    pub snapshot: Option<String>,
    pub bytes_added: u64,
    pub error: Option<String>,
    pub by: String,
}

impl From<&BackupAttempt> for Attempt {
    fn from(a: &BackupAttempt) -> Attempt {
        Attempt {
            started: a.started,
            seconds: a.seconds,
            site: a.site.clone(),
            ok: a.ok(),
            snapshot: a.snapshot.clone(),
            bytes_added: a.bytes_added,
            error: a.error.clone(),
            by: a.by.clone(),
        }
    }
}

/// The standby's readiness, from the full check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Standby {
    pub site: String,
    /// `hot` or `cold`.
    pub mode: String,
    /// The snapshot a hot standby holds.
    pub staged: Option<String>,
    /// Objects that differ from the primary (hot standby), when checked.
    pub drift: Option<u64>,
    /// Images of the app the standby lacks, when checked.
    pub images_missing: Option<u64>,
    /// Whether the standby fits everything it would run with every primary gone.
    pub capacity_fits: Option<bool>,
    /// The check's lines about the standby that are not ok.
    pub problems: Vec<String>,
    /// When the full check judged drift, images and capacity (none: not yet; they are none too).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub checked: Option<OffsetDateTime>,
}

/// The app's last finished drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Drill {
    pub operation: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub time: OffsetDateTime,
    pub passed: bool,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub rto_objective_seconds: Option<f64>,
    pub rpo_objective_seconds: Option<f64>,
    pub problems: Vec<String>,
    /// The drill interval (`drill.every`, or the default).
    pub interval_seconds: f64,
    /// Whether the next drill is due (the last one is older than the interval).
    pub overdue: bool,
}

/// One operation of the app, in short (its journal is at `/api/v1/plans/P/apps/A/operations/ID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpSummary {
    pub id: String,
    /// `failover`, `failback`, `drill`.
    pub kind: String,
    /// `running`, `done`, `failed`.
    pub status: String,
    pub from: String,
    pub to: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub trigger: OffsetDateTime,
    pub reason: String,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
}

/// The app's operations as the journal holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Operations {
    /// Failovers that finished (`done`) and that stopped (`failed`).
    pub failovers_done: u64,
    pub failovers_failed: u64,
    pub failbacks_done: u64,
    pub failbacks_failed: u64,
    /// The newest operations, newest first (at most [`RECENT_OPERATIONS`]).
    pub recent: Vec<OpSummary>,
}

/// How many operations [`Operations::recent`] lists.
pub const RECENT_OPERATIONS: usize = 20;

/// One site as the health watch of a running `serve` sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SiteWatch {
    pub site: String,
    pub failures: u32,
    pub threshold: u32,
    pub down: bool,
}

/// The health watch of the app in a running `serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Watch {
    /// Whether a failure verdict fails the app over (a watch runs and a witness or quorum agrees).
    pub armed: bool,
    pub sites: Vec<SiteWatch>,
    /// How the decision is agreed: `quorum of N`, `witness`, `none`.
    pub agreement: String,
}

/// The operation under way or stopped half way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InFlight {
    pub id: String,
    pub kind: String,
    pub from: String,
    pub to: String,
    /// The step under way or where it stopped.
    pub step: Option<String>,
    /// Its position (1-based) among the kind's steps.
    pub step_number: usize,
    pub steps: usize,
    pub elapsed_seconds: f64,
    /// `running`, `failed` (stopped: it waits for the resume command).
    pub status: String,
    /// What stops it, when it stopped.
    pub blocked_by: Option<String>,
    /// The command that resumes it.
    pub resume: String,
    /// Who holds the app's lock now.
    pub lock_holders: Vec<String>,
}

/// The repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Repo {
    pub location: String,
    /// The last repository check (`lifeboat check`) recorded, if any.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub last_check: Option<OffsetDateTime>,
    pub lock_holders: Vec<String>,
}

/// An app's readiness level (see [`crate::check::readiness`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Level {
    pub level: u8,
    pub name: String,
    pub missing: Vec<String>,
}

impl From<&Readiness> for Level {
    fn from(r: &Readiness) -> Level {
        Level {
            level: r.level,
            name: r.name.to_string(),
            missing: r.missing.clone(),
        }
    }
}

/// How an app is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Warning,
    Critical,
    /// What decides it is unknown.
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Unknown => "unknown",
        }
    }
}

/// An app's objectives, from the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Objectives {
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
}

/// One app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppStatus {
    pub app: String,
    /// `dr`, `single-site`, `multi-site`.
    pub profile: String,
    pub primary: String,
    pub standby: Option<String>,
    /// The plan's objectives.
    pub objectives: Objectives,
    /// Where the journal says the app is active.
    pub active: Fact<String>,
    pub traffic: Fact<Option<Traffic>>,
    pub rpo: Fact<Rpo>,
    pub backups: Fact<Backups>,
    pub standby_state: Fact<Option<Standby>>,
    /// Its last finished drill (none: never drilled).
    pub drill: Fact<Option<Drill>>,
    pub watch: Fact<Watch>,
    pub operation: Fact<Option<InFlight>>,
    pub operations: Fact<Operations>,
    pub readiness: Fact<Level>,
    pub health: Health,
    /// Why it is not ok.
    pub reasons: Vec<String>,
}

/// What the `serve` instance that answers is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Control {
    pub instance: String,
    /// `leader`, `follower`, `cut off`, `single` (no coordination).
    pub role: String,
    pub leader: Option<String>,
    pub term: Option<i64>,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanStatus {
    pub plan: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub generated: OffsetDateTime,
    pub repository: Fact<Repo>,
    pub control: Option<Control>,
    pub apps: Vec<AppStatus>,
}

/// Where `status` reads from.
pub struct Sources<'a> {
    pub plan: &'a Plan,
    /// The repository, or why it cannot be opened.
    pub repo: Result<&'a Repository, String>,
    pub router: &'a RouterFn<'a>,
    /// How often the caller refreshes these facts.
    pub refresh: Duration,
    /// Only this app.
    pub only: Option<&'a str>,
}

/// The state file where `lifeboat check` records its last run (`dr/repo-check`).
pub const REPO_CHECK_STATE: &str = "repo-check";

/// Records that the repository check passed now (the status shows its age).
pub fn record_repo_check(repo: &Repository, at: OffsetDateTime) -> Result<(), crate::OrchestratorError> {
    let v = serde_json::json!({"at": at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()});
    Ok(repo.write_state(REPO_CHECK_STATE, v.to_string().as_bytes())?)
}

fn last_repo_check(repo: &Repository) -> Option<OffsetDateTime> {
    let bytes = repo.read_state(REPO_CHECK_STATE).ok()??;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    OffsetDateTime::parse(v["at"].as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Dr => "dr",
        Profile::SingleSite => "single-site",
        Profile::MultiSite => "multi-site",
    }
}

/// Reads the repository and the routers: every fact but the standby's, the watch's and the
/// readiness level (unknown until [`PlanStatus::with_checks`] and [`PlanStatus::with_watch`]).
pub fn collect(src: &Sources, now: OffsetDateTime) -> PlanStatus {
    let refresh = src.refresh;
    let plan = src.plan;
    // A repository that does not answer (or whose disk went away) makes every fact read from
    // it unknown, not empty.
    let reached: Result<&Repository, String> = src.repo.as_ref().map_err(|e| e.clone()).and_then(|r| {
        // The index as it is now: recovery points written by other processes count.
        r.reachable()
            .and_then(|()| r.refresh_index())
            .map(|()| *r)
            .map_err(|e| format!("repository {}: {e}", r.location()))
    });
    let repository = match &reached {
        Ok(r) => Fact::from_result(
            r.lock_holders(None)
                .map(|locks| Repo {
                    location: r.location().to_string(),
                    last_check: last_repo_check(r),
                    lock_holders: locks,
                })
                .map_err(|e| format!("repository {}: {e}", r.location())),
            now,
            refresh,
        ),
        Err(ref e) => Fact::unknown(e.clone(), refresh),
    };
    // One listing of the snapshots for every app.
    let snapshots = reached.and_then(|r| {
        r.snapshots()
            .map_err(|e| format!("the snapshots cannot be listed: {e}"))
            .map(|s| (r, s))
    });
    let apps = plan
        .apps
        .iter()
        .filter(|a| src.only.is_none_or(|o| a.name.value == o))
        .map(|app| {
            let mut s = app_status(
                plan,
                app,
                src,
                match &snapshots {
                    Ok((r, s)) => Ok((*r, s.as_slice())),
                    Err(e) => Err(e),
                },
                now,
            );
            judge(&mut s);
            s
        })
        .collect();
    PlanStatus {
        plan: plan.metadata.name.clone(),
        generated: now,
        repository,
        control: None,
        apps,
    }
}

type Snaps<'a> = Result<(&'a Repository, &'a [(Id, lifeboat_model::Snapshot)]), &'a String>;

fn app_status(plan: &Plan, app: &App, src: &Sources, snaps: Snaps, now: OffsetDateTime) -> AppStatus {
    let refresh = src.refresh;
    let a = app.name.value.as_str();
    let repo = snaps.map(|(r, _)| r).map_err(|e| e.clone());
    let store = repo.as_ref().ok().map(|r| Store {
        repo: r,
        plan: plan.metadata.name.clone(),
        app: a.to_string(),
    });
    let state = match &store {
        Some(st) => st.state().map_err(|e| e.to_string()),
        None => Err(repo.as_ref().err().cloned().unwrap_or_default()),
    };
    let active = state
        .as_ref()
        .map(|s| s.active.clone().unwrap_or_else(|| app.primary.value.clone()))
        .map_err(String::clone);
    let traffic = Fact::from_result(traffic(app, src.router, active.as_ref().ok()), now, refresh);
    let rpo = Fact::from_result(
        snaps.map_err(|e| e.clone()).map(|(r, s)| rpo(plan, app, r, s, now)),
        now,
        refresh,
    );
    let backups = Fact::from_result(
        repo.as_ref().map_err(|e| e.clone()).and_then(|r| backups(r, plan, app)),
        now,
        refresh,
    );
    let ops = match &store {
        Some(st) => st.operations().map_err(|e| e.to_string()),
        None => Err(repo.as_ref().err().cloned().unwrap_or_default()),
    };
    let operations = Fact::from_result(ops.as_ref().map(|o| operations(o)).map_err(String::clone), now, refresh);
    let drill = Fact::from_result(ops.map(|o| last_drill(app, o, now)), now, refresh);
    let operation = Fact::from_result(
        match (&store, &state) {
            (Some(st), Ok(s)) => in_flight(app, st, s.running.as_deref(), now),
            (_, Err(e)) => Err(e.clone()),
            (None, _) => Err("no repository".into()),
        },
        now,
        refresh,
    );
    let staged = state
        .as_ref()
        .ok()
        .and_then(|s| s.staged.as_ref().map(|s| s.snapshot.to_hex()));
    let standby_state = match (&app.standby, app.profile, &state) {
        (Some(sb), Profile::Dr, Ok(_)) => Fact::known(
            Some(Standby {
                site: sb.value.clone(),
                mode: if app.standby_mode == StandbyMode::Hot {
                    "hot"
                } else {
                    "cold"
                }
                .into(),
                staged,
                drift: None,
                images_missing: None,
                capacity_fits: None,
                problems: Vec::new(),
                checked: None,
            }),
            now,
            refresh,
        ),
        (Some(_), Profile::Dr, Err(e)) => Fact::unknown(e.clone(), refresh),
        _ => Fact::known(None, now, refresh),
    };
    AppStatus {
        app: a.to_string(),
        profile: profile_name(app.profile).to_string(),
        primary: app.primary.value.clone(),
        standby: app.standby.as_ref().map(|s| s.value.clone()),
        objectives: {
            let (rto_seconds, rpo_seconds) = report::objectives(app);
            Objectives {
                rto_seconds,
                rpo_seconds,
            }
        },
        active: Fact::from_result(active, now, refresh),
        traffic,
        rpo,
        backups,
        standby_state,
        drill,
        watch: Fact::unknown("the health watch runs in `lifeboat serve --watch`", refresh),
        operation,
        operations,
        readiness: Fact::unknown("the readiness level comes from the full check", DEFAULT_CHECK_REFRESH),
        health: Health::Unknown,
        reasons: Vec::new(),
    }
}

fn traffic(app: &App, router: &RouterFn, active: Option<&String>) -> Result<Option<Traffic>, String> {
    let Some(r) = router(app).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let standby = app.standby.as_ref().map(|s| s.value.clone());
    let route = r.current().map_err(|e| e.to_string())?;
    let (site, detail) = match route {
        Route::On(Side::Primary) => (
            Some(app.primary.value.clone()),
            format!("{}: on the primary", r.describe()),
        ),
        Route::On(Side::Standby) => (standby, format!("{}: on the standby", r.describe())),
        Route::Unknown(why) => (None, format!("{}: {why}", r.describe())),
    };
    // A webhook router cannot tell: no disagreement to flag.
    let agrees = match (&site, active) {
        (Some(s), Some(a)) => s == a,
        _ => true,
    };
    Ok(Some(Traffic { site, detail, agrees }))
}

fn rpo(
    plan: &Plan,
    app: &App,
    repo: &Repository,
    snaps: &[(Id, lifeboat_model::Snapshot)],
    now: OffsetDateTime,
) -> Rpo {
    let (p, a) = (
        format!("plan={}", plan.metadata.name),
        format!("app={}", app.name.value),
    );
    let newest = snaps
        .iter()
        .filter(|(_, s)| s.tags.contains(&p) && s.tags.contains(&a) && !s.is_quarantine() && s.is_complete())
        .filter(|(_, s)| s.time <= now + crate::ops::CLOCK_SKEW)
        .filter(|(_, s)| repo.has_blob(&s.tree))
        .max_by_key(|(id, s)| (s.time, *id));
    let objective = app
        .objectives
        .as_ref()
        .and_then(|o| o.rpo.as_ref())
        .map(|d| d.value.0.as_secs_f64());
    let age = newest.map(|(_, s)| (now - s.time).as_seconds_f64().max(0.0));
    Rpo {
        snapshot: newest.map(|(id, _)| id.to_hex()),
        time: newest.map(|(_, s)| s.time),
        age_seconds: age,
        objective_seconds: objective,
        ratio: match (age, objective) {
            (Some(age), Some(o)) if o > 0.0 => Some(age / o),
            _ => None,
        },
    }
}

fn backups(repo: &Repository, plan: &Plan, app: &App) -> Result<Backups, String> {
    let list = records::attempts(repo, &plan.metadata.name, &app.name.value, records::KEEP_ATTEMPTS)
        .map_err(|e| e.to_string())?;
    Ok(Backups {
        last: list.first().map(Attempt::from),
        last_success: list.iter().find(|a| a.ok()).map(|a| a.started),
        every_seconds: app.backup.as_ref().map(|b| b.every.value.0.as_secs_f64()),
        failures_in_a_row: list.iter().take_while(|a| !a.ok()).count() as u32,
    })
}

fn operations(ops: &[crate::journal::Operation]) -> Operations {
    let count = |k: Kind, st: OpStatus| ops.iter().filter(|o| o.kind == k && o.status == st).count() as u64;
    let mut recent: Vec<OpSummary> = ops
        .iter()
        .map(|o| OpSummary {
            id: o.id.clone(),
            kind: o.kind.as_str().into(),
            status: o.status.as_str().into(),
            from: o.from.clone(),
            to: o.to.clone(),
            trigger: o.trigger,
            reason: o.reason.clone(),
            rto_seconds: report::rto_seconds(o),
            rpo_seconds: o.rpo_seconds(),
        })
        .collect();
    recent.sort_by(|a, b| b.trigger.cmp(&a.trigger).then_with(|| b.id.cmp(&a.id)));
    recent.truncate(RECENT_OPERATIONS);
    Operations {
        failovers_done: count(Kind::Failover, OpStatus::Done),
        failovers_failed: count(Kind::Failover, OpStatus::Failed),
        failbacks_done: count(Kind::Failback, OpStatus::Done),
        failbacks_failed: count(Kind::Failback, OpStatus::Failed),
        recent,
    }
}

fn last_drill(app: &App, ops: Vec<crate::journal::Operation>, now: OffsetDateTime) -> Option<Drill> {
    if app.profile != Profile::Dr {
        return None;
    }
    let history = drills::history_of(app, ops);
    let last = drills::last_finished(&history)?;
    let (rto_o, rpo_o) = report::objectives(app);
    let interval = app.drill.interval();
    Some(Drill {
        operation: last.op.id.clone(),
        time: last.time(),
        passed: last.outcome() == Outcome::Passed,
        rto_seconds: report::rto_seconds(&last.op),
        rpo_seconds: last.op.rpo_seconds(),
        rto_objective_seconds: rto_o,
        rpo_objective_seconds: rpo_o,
        problems: last.problems.clone(),
        interval_seconds: interval.as_secs_f64(),
        overdue: (now - last.time()).unsigned_abs() > interval,
    })
}

fn in_flight(app: &App, st: &Store, running: Option<&str>, now: OffsetDateTime) -> Result<Option<InFlight>, String> {
    let Some(id) = running else { return Ok(None) };
    let Some(op) = st.operation(id).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let all = if op.kind == Kind::Drill {
        DRILL_STEPS
    } else {
        FAILOVER_STEPS
    };
    let current = op.steps.iter().rev().find(|s| s.finished.is_none()).or(op.steps.last());
    let step_number = current
        .and_then(|c| all.iter().position(|s| *s == c.name))
        .map_or(0, |i| i + 1);
    let holders = st.repo.lock_holders(Some(&st.dir())).unwrap_or_default();
    let resume = format!(
        "lifeboat {} PLAN --app {}{}",
        op.kind.as_str(),
        app.name.value,
        if op.kind == Kind::Drill {
            ""
        } else {
            "  (the same command resumes it)"
        }
    );
    let blocked_by = match op.status {
        OpStatus::Failed => Some(op.error.clone().unwrap_or_else(|| "stopped".into())),
        OpStatus::Running if holders.is_empty() => {
            Some("no process holds the app's lock: it was interrupted and waits for the resume command".into())
        }
        _ => None,
    };
    Ok(Some(InFlight {
        id: op.id.clone(),
        kind: op.kind.as_str().to_string(),
        from: op.from.clone(),
        to: op.to.clone(),
        step: current.map(|c| c.name.to_string()),
        step_number,
        steps: all.len(),
        elapsed_seconds: (now - op.trigger).as_seconds_f64().max(0.0),
        status: op.status.as_str().to_string(),
        blocked_by,
        resume,
        lock_holders: holders,
    }))
}

impl PlanStatus {
    /// Merges the full check's lines (observed at `at`): each app's standby and readiness level.
    pub fn with_checks(&mut self, plan: &Plan, results: &[CheckResult], at: OffsetDateTime, refresh: Duration) {
        let levels = crate::check::readiness(plan, results);
        for s in &mut self.apps {
            let Some(app) = plan.app(&s.app) else { continue };
            if let Some(r) = levels.iter().find(|r| r.app == s.app) {
                s.readiness = Fact::known(Level::from(r), at, refresh);
            }
            let (Some(sb), Profile::Dr) = (&app.standby, app.profile) else {
                continue;
            };
            let mine = |check: &str| {
                results
                    .iter()
                    .find(|r| r.app.as_deref() == Some(s.app.as_str()) && r.check == check)
            };
            let capacity = results
                .iter()
                .find(|r| r.app.is_none() && r.check == format!("capacity {}", sb.value));
            let problems = results
                .iter()
                .filter(|r| r.status != Status::Ok)
                .filter(|r| {
                    (r.app.as_deref() == Some(s.app.as_str())
                        && (r.check == format!("site {}", sb.value)
                            || r.check == "drift"
                            || r.check == "images on standby"))
                        || capacity.is_some_and(|c| std::ptr::eq(c, *r))
                })
                .map(|r| format!("{}: {}", r.check, r.detail))
                .collect();
            let staged = s
                .standby_state
                .get()
                .and_then(|x| x.as_ref())
                .and_then(|x| x.staged.clone());
            s.standby_state = Fact::known(
                Some(Standby {
                    site: sb.value.clone(),
                    mode: if app.standby_mode == StandbyMode::Hot {
                        "hot"
                    } else {
                        "cold"
                    }
                    .into(),
                    staged,
                    drift: mine("drift").and_then(|r| r.count),
                    images_missing: mine("images on standby").and_then(|r| r.count),
                    capacity_fits: capacity.and_then(|c| match c.status {
                        Status::Ok => Some(true),
                        Status::Fail if !c.detail.contains("cannot") => Some(false),
                        _ => None,
                    }),
                    problems,
                    checked: Some(at),
                }),
                at,
                refresh,
            );
            judge(s);
        }
    }

    /// Merges what a running watch sees of each app (observed at `at`).
    pub fn with_watch(&mut self, watch: &BTreeMap<String, Watch>, at: OffsetDateTime, refresh: Duration) {
        for s in &mut self.apps {
            if let Some(w) = watch.get(&s.app) {
                s.watch = Fact::known(w.clone(), at, refresh);
                judge(s);
            }
        }
    }

    /// The first moment a fact of this status turns unknown ([`PlanStatus::aged`] changes nothing
    /// before it); none when no fact is fresh.
    pub fn fresh_until(&mut self) -> Option<OffsetDateTime> {
        let mut first = self.repository.fresh_until();
        for s in &mut self.apps {
            for f in s.facts() {
                first = match (first, f.fresh_until()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        first
    }

    /// Turns every fact observed too long before `now` unknown and judges the apps again.
    pub fn aged(mut self, now: OffsetDateTime) -> PlanStatus {
        self.repository.age(now);
        for s in &mut self.apps {
            for f in s.facts() {
                f.age(now);
            }
            judge(s);
        }
        self
    }
}

/// What every [`Fact`] does whatever its value.
trait Aging {
    fn age(&mut self, now: OffsetDateTime);
    fn fresh_until(&self) -> Option<OffsetDateTime>;
}

impl<T> Aging for Fact<T> {
    fn age(&mut self, now: OffsetDateTime) {
        Fact::age(self, now)
    }
    fn fresh_until(&self) -> Option<OffsetDateTime> {
        Fact::fresh_until(self)
    }
}

impl AppStatus {
    /// Every fact of the app.
    fn facts(&mut self) -> [&mut dyn Aging; 10] {
        [
            &mut self.active,
            &mut self.traffic,
            &mut self.rpo,
            &mut self.backups,
            &mut self.standby_state,
            &mut self.drill,
            &mut self.watch,
            &mut self.operation,
            &mut self.operations,
            &mut self.readiness,
        ]
    }
}

/// Sets the app's health and its reasons from its facts.
fn judge(s: &mut AppStatus) {
    let mut worst = Health::Ok;
    let mut reasons = Vec::new();
    let mut flag = |h: Health, why: String, worst: &mut Health| {
        *worst = (*worst).max(h);
        reasons.push(why);
    };
    match (s.rpo.get(), &s.rpo.why) {
        (Some(r), _) => match (r.ratio, r.age_seconds) {
            (Some(x), _) if x > 2.0 => flag(Health::Critical, format!("RPO {:.1}x its objective", x), &mut worst),
            (Some(x), _) if x > 1.0 => flag(Health::Warning, format!("RPO {:.1}x its objective", x), &mut worst),
            (_, None) => flag(Health::Critical, "no recovery point".into(), &mut worst),
            _ => {}
        },
        (None, why) => flag(
            Health::Unknown,
            format!("RPO unknown: {}", why.as_deref().unwrap_or("not observed")),
            &mut worst,
        ),
    }
    if s.active.get().is_none() {
        flag(Health::Unknown, "active site unknown".into(), &mut worst);
    }
    if let Some(Some(t)) = s.traffic.get() {
        if !t.agrees {
            flag(
                Health::Critical,
                format!(
                    "traffic goes to {} but the journal says {}",
                    t.site.as_deref().unwrap_or("?"),
                    s.active.get().map_or("?", |a| a.as_str())
                ),
                &mut worst,
            );
        }
    }
    if s.drill.get().is_some_and(Option::is_none) && s.profile == "dr" && s.standby.is_some() {
        flag(Health::Warning, "never drilled".into(), &mut worst);
    }
    if let Some(Some(d)) = s.drill.get() {
        if !d.passed {
            flag(
                Health::Critical,
                format!("last drill {} failed", d.operation),
                &mut worst,
            );
        } else if d.overdue {
            flag(Health::Warning, "a drill is overdue".into(), &mut worst);
        }
    }
    if let Some(Some(sb)) = s.standby_state.get() {
        if sb.drift.is_some_and(|d| d > 0) {
            flag(
                Health::Warning,
                format!("standby drift: {} objects", sb.drift.unwrap_or(0)),
                &mut worst,
            );
        }
        if sb.images_missing.is_some_and(|d| d > 0) || sb.capacity_fits == Some(false) {
            flag(Health::Warning, "the standby cannot take the load".into(), &mut worst);
        }
    }
    if let Some(b) = s.backups.get() {
        if b.failures_in_a_row > 0 {
            flag(
                Health::Warning,
                format!("{} backups failed in a row", b.failures_in_a_row),
                &mut worst,
            );
        }
    }
    if let Some(Some(op)) = s.operation.get() {
        let h = if op.blocked_by.is_some() {
            Health::Critical
        } else {
            Health::Warning
        };
        flag(
            h,
            format!(
                "{} {} at step {}",
                op.kind,
                op.status,
                op.step.as_deref().unwrap_or("?")
            ),
            &mut worst,
        );
    }
    if let Some(w) = s.watch.get() {
        if let Some(d) = w.sites.iter().find(|x| x.down) {
            flag(Health::Critical, format!("site {} down", d.site), &mut worst);
        }
    }
    s.health = worst;
    s.reasons = reasons;
}

fn seconds(x: f64) -> String {
    drills::human(Duration::from_secs_f64(x.max(0.0)))
}

/// The status as a terminal table: one line per app, then what is not ok.
pub fn table(s: &PlanStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan {} at {}{}",
        s.plan,
        s.generated
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        s.control
            .as_ref()
            .map(|c| format!(" (instance {}: {})", c.instance, c.role))
            .unwrap_or_default()
    );
    match (s.repository.get(), &s.repository.why) {
        (Some(r), _) => {
            let _ = writeln!(
                out,
                "repository {}: reachable; last check {}; {} lock holders",
                r.location,
                r.last_check
                    .map(|t| format!("{} ago", seconds((s.generated - t).as_seconds_f64())))
                    .unwrap_or_else(|| "never recorded".into()),
                r.lock_holders.len()
            );
        }
        (None, why) => {
            let _ = writeln!(out, "repository: UNKNOWN ({})", why.as_deref().unwrap_or_default());
        }
    }
    let rows: Vec<[String; 8]> = s
        .apps
        .iter()
        .map(|a| {
            let unk = || "unknown".to_string();
            [
                a.app.clone(),
                a.health.as_str().to_uppercase(),
                a.active.get().cloned().unwrap_or_else(unk),
                match a.traffic.get() {
                    Some(Some(t)) => t.site.clone().unwrap_or_else(|| "?".into()) + if t.agrees { "" } else { " (!)" },
                    Some(None) => "-".into(),
                    None => unk(),
                },
                match a.rpo.get() {
                    Some(r) => match (r.age_seconds, r.ratio) {
                        (Some(age), Some(x)) => format!("{} ({x:.2}x)", seconds(age)),
                        (Some(age), None) => seconds(age),
                        _ => "none".into(),
                    },
                    None => unk(),
                },
                match a.backups.get() {
                    Some(b) => match &b.last {
                        Some(l) if l.ok => format!("ok {} ago", seconds((s.generated - l.started).as_seconds_f64())),
                        Some(_) => format!("FAILED x{}", b.failures_in_a_row),
                        None => "none".into(),
                    },
                    None => unk(),
                },
                match a.drill.get() {
                    Some(Some(d)) => format!(
                        "{} {} ago",
                        if d.passed { "passed" } else { "FAILED" },
                        seconds((s.generated - d.time).as_seconds_f64())
                    ),
                    Some(None) => "never".into(),
                    None => unk(),
                },
                a.readiness
                    .get()
                    .map(|l| format!("{} {}", l.level, l.name))
                    .unwrap_or_else(unk),
            ]
        })
        .collect();
    let head = [
        "APP",
        "HEALTH",
        "ACTIVE",
        "TRAFFIC",
        "RPO",
        "BACKUP",
        "DRILL",
        "READINESS",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let l: Vec<String> = cells.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", l.join("  ").trim_end());
    };
    line(&head.map(str::to_string));
    for r in &rows {
        line(r);
    }
    for a in &s.apps {
        for r in &a.reasons {
            let _ = writeln!(out, "  {}: {r}", a.app);
        }
        if let Some(Some(op)) = a.operation.get() {
            let _ = writeln!(
                out,
                "  {}: {} {} step {}/{} ({}), {} elapsed; resume: {}",
                a.app,
                op.kind,
                op.id,
                op.step_number,
                op.steps,
                op.step.as_deref().unwrap_or("?"),
                seconds(op.elapsed_seconds),
                op.resume
            );
        }
    }
    out
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
