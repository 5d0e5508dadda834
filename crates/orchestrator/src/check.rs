//! `plan check`: the preflight. For the repository and each app: sites reachable, age of the last
//! recovery point against the RPO, every image present on the standby, standby capacity against
//! what the apps ask for, drift between primary and a hot standby, traffic router reachable, the
//! last drill, and (a warning) automatic failover without a witness; then each app's
//! [`Readiness`] level from those lines.
//! Checks only read; nothing is changed.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lifeboat_plan::{App, Plan, Profile, Site, StandbyMode};
use lifeboat_repo::Repository;
use lifeboat_traffic::Route;
use serde::Serialize;
use time::OffsetDateTime;

use crate::journal::Store;
use crate::ops::{latest_recovery_point, RouterFn};
use crate::platform::{drift, Connector, Platform};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the preflight.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// How many things the line counts, where it counts (drifted objects, images missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl CheckResult {
    fn counting(mut self, n: usize) -> CheckResult {
        self.count = Some(n as u64);
        self
    }
}

pub(crate) fn line(app: Option<&str>, check: &str, status: Status, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        app: app.map(str::to_string),
        check: check.into(),
        status,
        detail: detail.into(),
        count: None,
    }
}

/// Whether a switch of `app`'s traffic outlives the router's own restarts (HAProxy: a reload
/// forgets runtime changes unless they are saved to its server-state file), and whether a webhook
/// travels in clear.
/// A warning for an HAProxy runtime API on a TCP address other than loopback: at `level admin` it
/// has no authentication of its own, so whoever reaches the port moves the app's traffic.
fn haproxy_socket_exposure(app: &lifeboat_plan::App, a: &str) -> Option<CheckResult> {
    let lifeboat_plan::Traffic::Haproxy { socket, .. } = app.traffic.as_ref()? else {
        return None;
    };
    let host = socket.strip_prefix("tcp://")?;
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_matches(['[', ']']);
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        line(
            Some(a),
            "traffic-access",
            Status::Warn,
            format!(
                "the HAProxy runtime API at {socket} has no authentication of its own: whoever reaches that port \
                 can move this app's traffic; use a unix socket or a loopback address (with an SSH tunnel to a \
                 remote HAProxy)"
            ),
        )
    })
}

fn traffic_durability(app: &lifeboat_plan::App, a: &str) -> Option<CheckResult> {
    use lifeboat_plan::Traffic;
    match app.traffic.as_ref()? {
        Traffic::Haproxy { state_file: None, .. } => Some(line(
            Some(a),
            "traffic-reload",
            Status::Fail,
            "HAProxy forgets a switch when it is reloaded and sends traffic back to the server its configuration marks ready: set traffic.haproxy.state_file to the file HAProxy's `server-state-file` names (with `load-server-state-from-file global` in `defaults`); Lifeboat saves the state there after each switch",
        )),
        Traffic::Haproxy {
            state_file: Some(f), ..
        } => {
            let dir = f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let writable = std::fs::metadata(dir).map(|m| m.is_dir() && !m.permissions().readonly());
            Some(match writable {
                Ok(true) => line(
                    Some(a),
                    "traffic-reload",
                    Status::Ok,
                    format!(
                        "the server state is saved to {} after each switch (HAProxy must load it: `server-state-file` and `load-server-state-from-file global`)",
                        f.display()
                    ),
                ),
                Ok(false) => line(
                    Some(a),
                    "traffic-reload",
                    Status::Fail,
                    format!("state_file {}: {} is not a writable directory", f.display(), dir.display()),
                ),
                Err(e) => line(
                    Some(a),
                    "traffic-reload",
                    Status::Fail,
                    format!("state_file {}: directory {}: {e}", f.display(), dir.display()),
                ),
            })
        }
        Traffic::Webhook { url, .. } if url.starts_with("http://") => Some(line(
            Some(a),
            "traffic-transport",
            Status::Warn,
            format!(
                "webhook {} is plain http: the signed request can be read (not forged) on the way; use https",
                lifeboat_model::redact::shown_url(url)
            ),
        )),
        _ => None,
    }
}

/// The host part of a repository location that names a server (`s3:http://HOST:PORT/...`, or
/// `s3://...` with the endpoint from `endpoint_env`, i.e. `AWS_ENDPOINT_URL`); `None` for a local
/// path, and for S3 without an endpoint (the cloud's own service).
fn repository_host(location: &str, endpoint_env: Option<&str>) -> Option<String> {
    let url = if let Some(rest) = location.strip_prefix("s3:") {
        if rest.starts_with("//") {
            endpoint_env?.to_string()
        } else {
            rest.to_string()
        }
    } else {
        return None;
    };
    url::Url::parse(&url)
        .ok()?
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Whether the repository shares a failure domain with a site it protects. The journal, the app
/// locks and the witness's reports live in the repository: on the primary's host, it is lost
/// exactly when a failover is needed. A repository server at a site's address fails; a local
/// repository beside a site whose engine is on this host (a `unix://` socket) is warned about.
/// Names are compared as written, never resolved.
fn repository_failure_domain(plan: &Plan, location: &str, endpoint_env: Option<&str>) -> CheckResult {
    let check = "repository failure domain";
    let advice = "keep it in a third failure domain (another host, or an S3 service outside the sites), \
                  as docs/dr.md says";
    let site_hosts = |site: &Site| -> Vec<String> {
        let mut v: Vec<String> = site.address().into_iter().collect();
        v.extend(crate::platform::kind(site).endpoint_hosts(site));
        v
    };
    match repository_host(location, endpoint_env) {
        Some(host) => {
            for (name, site) in &plan.sites {
                if site_hosts(site).iter().any(|h| h.eq_ignore_ascii_case(&host)) {
                    return line(
                        None,
                        check,
                        Status::Fail,
                        format!(
                            "the repository's server {host} is site {name}: when {name} is lost, the journal, the \
                             locks and the recovery points go with it and no failover can start; {advice}"
                        ),
                    );
                }
            }
            line(
                None,
                check,
                Status::Ok,
                format!("the repository's server {host} is none of the sites"),
            )
        }
        None if location.starts_with("s3:") => line(None, check, Status::Ok, "the repository is an S3 service"),
        None => {
            let local: Vec<&str> = plan
                .sites
                .iter()
                .filter(|(_, s)| crate::platform::kind(s).on_this_host(s))
                .map(|(n, _)| n.as_str())
                .collect();
            if local.is_empty() {
                line(
                    None,
                    check,
                    Status::Ok,
                    "a local repository; no site's engine is on this host",
                )
            } else {
                line(
                    None,
                    check,
                    Status::Warn,
                    format!(
                        "the repository is a local path on the host of site {} (a unix:// engine): if this host \
                         is lost, the journal and the recovery points go with it; {advice}",
                        local.join(", ")
                    ),
                )
            }
        }
    }
}

/// What each standby would run if every primary were gone: (CPUs, memory, app names) by site.
type Load = BTreeMap<String, (f64, u64, Vec<String>)>;

/// Runs every check: the repository, then per app its sites, what their kind checks, the
/// recovery point, the journal, the standby (images, drift) and traffic, then the capacity of each
/// standby for everything it would run.
pub fn run(
    plan: &Plan,
    repo: Result<&Repository, String>,
    connect: &Arc<Connector>,
    router: &RouterFn,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let repo = match repo {
        Ok(r) => {
            out.push(line(None, "repository", Status::Ok, format!("{} opened", r.location())));
            let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            out.push(repository_failure_domain(plan, r.location(), endpoint.as_deref()));
            Some(r)
        }
        Err(e) => {
            out.push(line(None, "repository", Status::Fail, e));
            None
        }
    };
    if plan.coordination.is_none() {
        out.push(line(
            None,
            "controller",
            Status::Warn,
            "one `serve` process controls this plan: if its machine is lost (with the primary site, or alone), \
             nothing backs up, fails over or drills; add `coordination:` (an etcd cluster) and run `serve` on each \
             site and on a witness site (docs/dr.md, \"Control plane\")",
        ));
    }
    let mut load = Load::new();
    let mut platforms: BTreeMap<(String, String), Option<Arc<dyn Platform>>> = BTreeMap::new();
    for app in &plan.apps {
        let a = app.name.value.as_str();
        let mut site = |name: &str, out: &mut Vec<CheckResult>| -> Option<Arc<dyn Platform>> {
            platforms
                .entry((a.to_string(), name.to_string()))
                .or_insert_with(|| match connect(name, app) {
                    Ok(p) => {
                        out.push(line(Some(a), &format!("site {name}"), Status::Ok, "reachable"));
                        Some(p)
                    }
                    Err(e) => {
                        out.push(line(Some(a), &format!("site {name}"), Status::Fail, e.to_string()));
                        None
                    }
                })
                .clone()
        };
        if let (Some(c), Some(grace)) = (&plan.coordination, app.stop_grace) {
            let room = c.ttl().saturating_sub(c.self_fence_after());
            if grace.0 >= room {
                out.push(line(
                    Some(a),
                    "self-fence",
                    Status::Warn,
                    format!(
                        "stop_grace {:?} is not shorter than the lease TTL less self_fence_after ({room:?}): a self-fence \
                         may still be stopping the app when another instance starts it elsewhere; shorten stop_grace \
                         or lengthen coordination.etcd.ttl",
                        grace.0
                    ),
                ));
            }
        }
        if app.profile == Profile::Dr && !app.health.is_empty() && plan.witness.is_none() && plan.coordination.is_none()
        {
            out.push(line(
                Some(a),
                "witness",
                Status::Warn,
                "`watch` fails this app over on its own, but the plan has no witness: a primary that cannot be \
                 reached (dead, hung or cut off) is then never failed over automatically, only by hand with \
                 `failover --fenced-by-hand`; add `witness:` and run `lifeboat watch --witness` where it sees the \
                 primary by another path",
            ));
        }
        let primary = site(&app.primary.value, &mut out);
        let standby_name = app
            .standby
            .as_ref()
            .filter(|_| app.profile == Profile::Dr)
            .map(|s| s.value.clone());
        let standby = standby_name.as_deref().and_then(|s| site(s, &mut out));

        // What only the site's kind checks (Kubernetes: the helper image on a node).
        for (name, p) in [
            (Some(app.primary.value.as_str()), primary.as_ref()),
            (standby_name.as_deref(), standby.as_ref()),
        ] {
            let (Some(name), Some(p), Some(s)) = (name, p, name.and_then(|n| plan.sites.get(n))) else {
                continue;
            };
            out.extend(crate::platform::kind(s).checks(app, name, s, &**p));
        }
        if let Some(repo) = repo {
            out.push(recovery_point(repo, plan, app));
            out.extend(journal(repo, plan, app));
            if app.profile == Profile::Dr {
                out.push(drill(repo, plan, app));
            }
        }
        if let (Some(sb_name), Some(primary)) = (standby_name.as_deref(), primary.as_ref()) {
            out.extend(standby_lines(app, &**primary, sb_name, standby.as_deref(), &mut load));
        }
        out.push(traffic(app, router));
        out.extend(traffic_durability(app, a));
        out.extend(haproxy_socket_exposure(app, a));
    }
    out.extend(capacity(load, &platforms));
    out
}

/// The age of the app's newest recovery point against its RPO.
fn recovery_point(repo: &Repository, plan: &Plan, app: &App) -> CheckResult {
    let a = app.name.value.as_str();
    let rpo = app.objectives.as_ref().and_then(|o| o.rpo.as_ref()).map(|d| d.value.0);
    let rp = match latest_recovery_point(repo, &plan.metadata.name, a) {
        Ok(Some(rp)) => rp,
        Ok(None) => {
            return line(
                Some(a),
                RECOVERY_POINT,
                Status::Fail,
                format!("no backup yet (lifeboat backup --plan PLAN --app {a})"),
            )
        }
        Err(e) => return line(Some(a), RECOVERY_POINT, Status::Fail, e.to_string()),
    };
    let age = (OffsetDateTime::now_utc() - rp.time).as_seconds_f64().max(0.0);
    let id = rp.snapshot.short();
    let (status, detail) = match rpo {
        Some(r) if age > r.as_secs_f64() => (
            Status::Fail,
            format!("last backup {id} is {age:.0} s old, more than the RPO {r:?}"),
        ),
        Some(r) => (Status::Ok, format!("last backup {id} is {age:.0} s old (RPO {r:?})")),
        None => (
            Status::Warn,
            format!("last backup {id} is {age:.0} s old; the plan sets no RPO"),
        ),
    };
    line(Some(a), RECOVERY_POINT, status, detail)
}

/// The app's last drill: passed within the drill interval (ok), failed (a failed check: the
/// recovery it rehearsed does not work), overdue or never run (warnings).
fn drill(repo: &Repository, plan: &Plan, app: &App) -> CheckResult {
    let a = app.name.value.as_str();
    let history = match crate::drills::history(repo, plan, app) {
        Ok(h) => h,
        Err(e) => return line(Some(a), DRILL, Status::Fail, e.to_string()),
    };
    let now = OffsetDateTime::now_utc();
    let how = match &app.drill.every {
        Some(e) => format!("the leading `serve` drills every {}", crate::drills::human(e.value.0)),
        None => format!("no drill.every: run `lifeboat drill PLAN --app {a}`, or set drill.every"),
    };
    match (
        crate::drills::drilled(app, &history, now),
        crate::drills::last_finished(&history),
    ) {
        (Ok(()), Some(last)) => line(
            Some(a),
            DRILL,
            Status::Ok,
            format!(
                "the last drill {} passed {} ago ({how})",
                last.op.id,
                crate::drills::human((now - last.time()).unsigned_abs())
            ),
        ),
        (Err(why), Some(last)) if last.outcome() == crate::drills::Outcome::Failed => {
            line(Some(a), DRILL, Status::Fail, why)
        }
        (Err(why), _) => line(Some(a), DRILL, Status::Warn, format!("{why} ({how})")),
        (Ok(()), None) => unreachable!("drilled without a drill"),
    }
}

/// The check names readiness reads.
const DRILL: &str = "drill";
const RECOVERY_POINT: &str = "recovery point";

/// An app's readiness level, computed from the plan and the check's own lines (docs/dr.md,
/// "Readiness levels"): 1 manual (recurring backups within the RPO, a standby the runbook
/// recovers to), 2 scripted (the failover preflight passes and a drill passed within its
/// interval), 3 automated (a quorum-armed watch, automated traffic, scheduled drills). 0: not
/// even level 1.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readiness {
    pub app: String,
    pub level: u8,
    /// `none`, `manual`, `scripted`, `automated`.
    pub name: &'static str,
    /// What the next level still needs (empty at level 3).
    pub missing: Vec<String>,
}

/// The readiness of each app; `results` are the check's lines (with the coordination line).
pub fn readiness(plan: &Plan, results: &[CheckResult]) -> Vec<Readiness> {
    plan.apps
        .iter()
        .map(|app| {
            let a = app.name.value.as_str();
            let mine = |check: &str| results.iter().find(|r| r.app.as_deref() == Some(a) && r.check == check);
            let ok = |check: &str| mine(check).is_some_and(|r| r.status == Status::Ok);
            let why = |check: &str| mine(check).map_or_else(|| "not checked".to_string(), |r| r.detail.clone());
            let mut levels: [Vec<String>; 3] = Default::default();
            if app.backup.is_none() {
                levels[0].push("a backup schedule (backup.every)".into());
            }
            if app.objectives.as_ref().and_then(|o| o.rpo.as_ref()).is_none() {
                levels[0].push("an RPO (objectives.rpo)".into());
            } else if !ok(RECOVERY_POINT) {
                levels[0].push(format!("a recovery point within the RPO ({})", why(RECOVERY_POINT)));
            }
            if app.profile != Profile::Dr || app.standby.is_none() {
                levels[0].push("a standby site (profile dr, standby:) that the runbook recovers to".into());
            }
            let failing: Vec<String> = results
                .iter()
                .filter(|r| r.status == Status::Fail)
                .filter(|r| r.app.as_deref().is_none_or(|x| x == a))
                .filter(|r| r.check != DRILL && r.check != RECOVERY_POINT && r.check != "coordination")
                .map(|r| format!("{}: {}", r.check, r.detail))
                .collect();
            if !failing.is_empty() {
                levels[1].push(format!("a failover preflight that passes ({})", failing.join("; ")));
            }
            if !ok(DRILL) {
                levels[1].push(format!(
                    "a drill passed within {} ({})",
                    crate::drills::human(app.drill.interval()),
                    why(DRILL)
                ));
            }
            match &plan.coordination {
                None => {
                    levels[2].push("a quorum-armed watch (coordination: with serve on each site and a witness)".into())
                }
                Some(c) if c.voters() < 3 => levels[2].push(format!(
                    "a quorum-armed watch ({} serve instances vote; a majority needs 3 or more to survive one)",
                    c.voters()
                )),
                Some(_) => {
                    if let Some(r) = results
                        .iter()
                        .find(|r| r.check == "coordination" && r.status == Status::Fail)
                    {
                        levels[2].push(format!("a reachable coordination service ({})", r.detail));
                    }
                }
            }
            if app.health.is_empty() {
                levels[2].push("health probes (health:) for the watch to fail over on".into());
            }
            if app.traffic.is_none() {
                levels[2].push("automated traffic (traffic:)".into());
            }
            if app.drill.every.is_none() {
                levels[2].push("scheduled drills (drill.every)".into());
            }
            let level = levels.iter().take_while(|m| m.is_empty()).count();
            Readiness {
                app: a.to_string(),
                level: level as u8,
                name: ["none", "manual", "scripted", "automated"][level],
                missing: levels.get(level).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// The readiness of each app as lines under the check's table.
pub fn readiness_table(r: &[Readiness]) -> String {
    let mut s = String::new();
    for x in r {
        s += &format!("readiness {}: level {} ({})", x.app, x.level, x.name);
        if !x.missing.is_empty() {
            s += &format!("; level {} needs: {}", x.level + 1, x.missing.join("; "));
        }
        s += "\n";
    }
    s
}

/// An unfinished operation, and an app that runs away from its primary.
fn journal(repo: &Repository, plan: &Plan, app: &App) -> Vec<CheckResult> {
    let a = app.name.value.as_str();
    let st = Store {
        repo,
        plan: plan.metadata.name.clone(),
        app: a.to_string(),
    };
    let s = match st.state() {
        Ok(s) => s,
        Err(e) => return vec![line(Some(a), "operations", Status::Fail, e.to_string())],
    };
    let mut out = Vec::new();
    if let Some(r) = &s.running {
        out.push(line(
            Some(a),
            "operations",
            Status::Fail,
            format!("operation {r} is unfinished: run the same command again to complete it"),
        ));
    }
    if let Some(act) = s.active.as_ref().filter(|act| **act != app.primary.value) {
        out.push(line(
            Some(a),
            "active site",
            Status::Warn,
            format!("running on {act} after a failover"),
        ));
    }
    out
}

/// What needs both sites: the primary's workloads (added to the standby's `load`), the images on
/// the standby and, for a hot standby, its drift.
fn standby_lines(
    app: &App,
    primary: &dyn Platform,
    sb_name: &str,
    standby: Option<&dyn Platform>,
    load: &mut Load,
) -> Vec<CheckResult> {
    let a = app.name.value.as_str();
    let workloads = match primary.workloads() {
        Ok(w) => w,
        Err(e) => return vec![line(Some(a), "workloads", Status::Fail, e.to_string())],
    };
    let mut out = Vec::new();
    if workloads.is_empty() {
        out.push(line(
            Some(a),
            "workloads",
            Status::Fail,
            format!("the selection finds nothing on {}", app.primary.value),
        ));
    }
    let e = load.entry(sb_name.to_string()).or_default();
    e.0 += workloads.iter().map(|w| w.cpus).sum::<f64>();
    e.1 += workloads.iter().map(|w| w.memory).sum::<u64>();
    e.2.push(a.to_string());
    let Some(standby) = standby else {
        return out;
    };
    let images: BTreeSet<&str> = workloads.iter().flat_map(|w| &w.images).map(String::as_str).collect();
    let mut missing = Vec::new();
    for i in &images {
        match standby.has_image(i) {
            Ok(true) => {}
            Ok(false) => missing.push(i.to_string()),
            Err(e) => missing.push(format!("{i} ({e})")),
        }
    }
    out.push(if missing.is_empty() {
        line(
            Some(a),
            "images on standby",
            Status::Ok,
            format!("{} images present on {sb_name}", images.len()),
        )
        .counting(0)
    } else {
        line(
            Some(a),
            "images on standby",
            Status::Fail,
            format!("missing on {sb_name}: {}", missing.join(", ")),
        )
        .counting(missing.len())
    });
    // Drift (hot standby only: a cold one holds nothing until failover).
    if app.standby_mode == StandbyMode::Hot {
        out.push(match (primary.definitions(), standby.definitions()) {
            (Ok(p), Ok(s)) => {
                let p = p.essence();
                let d: Vec<String> = drift(p, s.essence()).iter().map(|d| d.describe(sb_name)).collect();
                if d.is_empty() {
                    line(
                        Some(a),
                        "drift",
                        Status::Ok,
                        format!("{} objects identical on {sb_name}", p.len()),
                    )
                    .counting(0)
                } else {
                    line(
                        Some(a),
                        "drift",
                        Status::Fail,
                        format!("{} (`lifeboat sync` corrects it)", d.join("; ")),
                    )
                    .counting(d.len())
                }
            }
            (Err(e), _) | (_, Err(e)) => line(Some(a), "drift", Status::Fail, e.to_string()),
        });
    }
    out
}

/// Where the app's traffic router sends traffic now.
fn traffic(app: &App, router: &RouterFn) -> CheckResult {
    let a = Some(app.name.value.as_str());
    match router(app) {
        Ok(None) => line(
            a,
            "traffic",
            Status::Warn,
            "no traffic section: clients are moved by hand",
        ),
        Ok(Some(r)) => match r.current() {
            Ok(Route::On(side)) => line(
                a,
                "traffic",
                Status::Ok,
                format!("{}: traffic on the {side}", r.describe()),
            ),
            Ok(Route::Unknown(why)) => line(a, "traffic", Status::Warn, format!("{}: {why}", r.describe())),
            // The error names the router itself.
            Err(e) => line(a, "traffic", Status::Fail, e.to_string()),
        },
        Err(e) => line(a, "traffic", Status::Fail, e.to_string()),
    }
}

/// Each standby must hold what it would run with every primary gone.
fn capacity(load: Load, platforms: &BTreeMap<(String, String), Option<Arc<dyn Platform>>>) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for (site, (cpus, mem, apps)) in load {
        let Some(p) = platforms
            .iter()
            .find(|((_, s), p)| *s == site && p.is_some())
            .and_then(|(_, p)| p.clone())
        else {
            continue;
        };
        match p.capacity() {
            Ok((have_cpu, have_mem)) => {
                let detail = format!(
                    "{} would need {cpus:.2} CPUs and {} MiB for {}; it has {have_cpu:.0} CPUs and {} MiB",
                    site,
                    mem >> 20,
                    apps.join(", "),
                    have_mem >> 20
                );
                let status = if cpus > have_cpu || mem > have_mem {
                    Status::Fail
                } else if cpus == 0.0 && mem == 0 {
                    Status::Warn
                } else {
                    Status::Ok
                };
                let detail = if status == Status::Warn {
                    format!("{detail} (no workload sets CPU or memory limits: the fit cannot be judged)")
                } else {
                    detail
                };
                out.push(line(None, &format!("capacity {site}"), status, detail));
            }
            Err(e) => out.push(line(None, &format!("capacity {site}"), Status::Fail, e.to_string())),
        }
    }
    out
}

/// The results as a text table.
pub fn table(results: &[CheckResult]) -> String {
    let w1 = results
        .iter()
        .map(|r| r.app.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(3)
        .max(3);
    let w2 = results.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{:<w1$}  {:<w2$}  {:<6}  detail\n", "app", "check", "status");
    for r in results {
        let st = match r.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        s += &format!(
            "{:<w1$}  {:<w2$}  {st:<6}  {}\n",
            r.app.as_deref().unwrap_or("-"),
            r.check,
            r.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_with_socket(socket: &str) -> lifeboat_plan::App {
        let yaml = format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: p}}\nrepository: repo\nsites:\n  \
             a: {{docker: {{host: \"unix:///a.sock\", address: 127.0.0.1}}}}\n  b: {{docker: {{host: \"unix:///b.sock\", address: 127.0.0.1}}}}\n\
             apps:\n  - name: web\n    primary: a\n    standby: b\n    select: {{labels: {{app: web}}}}\n    \
             traffic: {{haproxy: {{socket: \"{socket}\", backend: app, primary: a, standby: b, state_file: /run/hs}}}}\n"
        );
        lifeboat_plan::Plan::parse("p.yaml", &yaml).unwrap().apps.remove(0)
    }

    #[test]
    fn a_repository_on_a_site_it_protects_fails_the_check() {
        let plan = |sites: &str| {
            lifeboat_plan::Plan::parse(
                "p.yaml",
                &format!(
                    "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: p}}\nrepository: repo\nsites:\n{sites}\
                     apps:\n  - name: web\n    primary: a\n    standby: b\n    select: {{labels: {{app: web}}}}\n"
                ),
            )
            .unwrap()
        };
        let remote = plan(
            "  a: {docker: {host: \"tcp://10.1.0.5:2376\", insecure: true}}\n  \
             b: {docker: {host: \"ssh://ops@10.2.0.5\"}}\n",
        );
        let on_a = repository_failure_domain(&remote, "s3:http://10.1.0.5:3900/bucket/lb", None);
        assert_eq!(on_a.status, Status::Fail, "{}", on_a.detail);
        assert!(on_a.detail.contains("is site a"), "{}", on_a.detail);
        let on_b = repository_failure_domain(&remote, "s3://bucket/lb", Some("http://10.2.0.5:3900"));
        assert_eq!(on_b.status, Status::Fail, "{}", on_b.detail);
        assert!(on_b.detail.contains("is site b"), "{}", on_b.detail);
        for ok in [
            repository_failure_domain(&remote, "s3:https://s3.example.test/bucket/lb", None),
            repository_failure_domain(&remote, "s3://bucket/lb", None),
            repository_failure_domain(&remote, "/var/lib/lifeboat/repo", None),
        ] {
            assert_eq!(ok.status, Status::Ok, "{}", ok.detail);
        }
        let local = plan("  a: {docker: {host: \"unix:///run/docker.sock\", address: 10.1.0.5}}\n  b: {docker: {host: \"tcp://10.2.0.5:2376\", insecure: true}}\n");
        let warned = repository_failure_domain(&local, "/var/lib/lifeboat/repo", None);
        assert_eq!(warned.status, Status::Warn, "{}", warned.detail);
        assert!(warned.detail.contains("site a"), "{}", warned.detail);
    }

    #[test]
    fn an_haproxy_runtime_api_reachable_from_the_network_is_warned_about() {
        let l = haproxy_socket_exposure(&app_with_socket("tcp://10.0.0.5:9999"), "web").unwrap();
        assert_eq!(l.status, Status::Warn);
        assert!(l.detail.contains("no authentication"), "{}", l.detail);
        for quiet in [
            "tcp://127.0.0.1:9999",
            "tcp://[::1]:9999",
            "tcp://localhost:9999",
            "unix:///run/haproxy.sock",
        ] {
            assert!(
                haproxy_socket_exposure(&app_with_socket(quiet), "web").is_none(),
                "{quiet}"
            );
        }
    }

    /// `plan check` against the in-memory sites: one line per check, each failure its own line.
    #[test]
    fn plan_check_gives_each_failure_its_own_line() {
        use crate::journal::Kind;
        use crate::ops::fake::{no_final, Answer, World};
        let lines = |w: &World| -> Vec<(String, Status, String)> {
            let env = w.env();
            run(&w.plan, Ok(&w.repo), &env.connect, env.router)
                .into_iter()
                .filter(|l| l.check != "repository failure domain")
                .map(|l| (l.check, l.status, l.detail))
                .collect()
        };
        let find = |lines: &[(String, Status, String)], check: &str| -> (Status, String) {
            let l = lines
                .iter()
                .find(|l| l.0 == check)
                .unwrap_or_else(|| panic!("no {check} line: {lines:?}"));
            (l.1, l.2.clone())
        };

        let mut w = World::new(false);
        let all = lines(&w);
        assert_eq!(find(&all, "site a").0, Status::Ok);
        assert_eq!(
            find(&all, "recovery point"),
            (
                Status::Fail,
                "no backup yet (lifeboat backup --plan PLAN --app web)".into()
            )
        );
        assert_eq!(find(&all, "drift"), (Status::Ok, "0 objects identical on b".into()));
        assert_eq!(find(&all, "traffic").0, Status::Warn);
        assert_eq!(
            find(&all, "capacity b").0,
            Status::Ok,
            "b has 1 CPU for a's 0.5: {all:?}"
        );

        w = w.backed_up();
        w.a_asks = (2.0, 256 << 20);
        w.fail_once("b start");
        w.run(
            Kind::Failover,
            &crate::ops::Options {
                ignore_capacity: true,
                ..no_final()
            },
        )
        .unwrap_err();
        w.b = Answer::Unreachable;
        let all = lines(&w);
        let (status, detail) = find(&all, "site b");
        assert_eq!(status, Status::Fail);
        assert!(detail.contains("connection refused"), "{detail}");
        assert!(
            find(&all, "recovery point").1.contains("the plan sets no RPO"),
            "{all:?}"
        );
        let (status, detail) = find(&all, "operations");
        assert_eq!(status, Status::Fail);
        assert!(detail.contains("is unfinished"), "{detail}");
        assert!(
            !all.iter().any(|l| l.0 == "drift"),
            "no drift line without the standby: {all:?}"
        );
        assert!(
            !all.iter().any(|l| l.0 == "capacity b"),
            "no capacity line for a site that cannot be asked"
        );
        w.b = Answer::Up;
        let (status, detail) = find(&lines(&w), "capacity b");
        assert_eq!(status, Status::Fail);
        assert!(detail.contains("would need 2.00 CPUs"), "{detail}");
    }
}
