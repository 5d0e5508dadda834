//! Prometheus metrics of a plan, in the text exposition format (prometheus-client).
//!
//! Gauges are made from the status at each scrape: a fact that is unknown gives no sample (an
//! alert on it sees the series vanish, and `lifeboat_app_health` says 3 = unknown), and an app
//! that is not in the plan any more gives none either. Counters and the backup duration
//! histogram count what this process saw since it started ([`Counters`]); a success counter is
//! never above its attempts counter (both move in one call).
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use lifeboat_orchestrator::records::BackupAttempt;
use lifeboat_orchestrator::status::{Freshness, Health, PlanStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub plan: String,
    pub app: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    plan: String,
    app: String,
    kind: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    plan: String,
    site: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanLabels {
    plan: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    plan: String,
    instance: String,
}

type FGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    // 0.5 s to about 2.3 h.
    Histogram::new(exponential_buckets(0.5, 2.0, 15))
}

/// What the metrics count across scrapes.
pub struct Counters {
    plan: Mutex<String>,
    attempts: Family<AppLabels, Counter>,
    failures: Family<AppLabels, Counter>,
    duration: Family<AppLabels, Histogram, fn() -> Histogram>,
    apps: Mutex<Vec<String>>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            plan: Mutex::new(String::new()),
            attempts: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            apps: Mutex::new(Vec::new()),
        }
    }
}

impl Counters {
    fn labels(&self, app: &str) -> AppLabels {
        AppLabels {
            plan: self.plan.lock().expect("poisoned").clone(),
            app: app.to_string(),
        }
    }

    pub fn set_plan(&self, plan: &str) {
        *self.plan.lock().expect("poisoned") = plan.to_string();
    }

    /// Makes the app's counters exist (at 0) before its first attempt.
    pub fn touch(&self, app: &str) {
        let l = self.labels(app);
        let _ = self.attempts.get_or_create(&l);
        let _ = self.failures.get_or_create(&l);
        let _ = self.duration.get_or_create(&l);
    }

    /// Counts one backup attempt.
    pub fn attempt(&self, app: &str, a: &BackupAttempt) {
        let l = self.labels(app);
        self.attempts.get_or_create(&l).inc();
        if !a.ok() {
            self.failures.get_or_create(&l).inc();
        }
        self.duration.get_or_create(&l).observe(a.seconds);
    }

    /// Drops the series of apps not in `apps`.
    pub fn keep_only<'a>(&self, apps: impl Iterator<Item = &'a str>) {
        let now: Vec<String> = apps.map(str::to_string).collect();
        let mut before = self.apps.lock().expect("poisoned");
        for gone in before.iter().filter(|a| !now.contains(a)) {
            let l = self.labels(gone);
            self.attempts.remove(&l);
            self.failures.remove(&l);
            self.duration.remove(&l);
        }
        *before = now;
    }
}

fn ts(t: time::OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// The metrics text for `status` (aged already) with this process's `counters`; `leads`: whether
/// this instance leads (or runs alone).
pub fn render(status: Option<&PlanStatus>, counters: &Counters, leads: bool) -> String {
    let mut reg = Registry::default();
    let plan = status.map(|s| s.plan.clone()).unwrap_or_default();
    let g = || Family::<AppLabels, FGauge>::default();
    let (rpo, rpo_o, rto_o, last_ok, bytes, drill_ts, drill_ok, drill_rto, drill_rpo, drill_int) =
        (g(), g(), g(), g(), g(), g(), g(), g(), g(), g());
    let (in_progress, drift, level, health, traffic_agrees) = (g(), g(), g(), g(), g());
    let failovers = Family::<ResultLabels, Counter>::default();
    let site_up = Family::<SiteLabels, FGauge>::default();
    let repo_up = Family::<PlanLabels, FGauge>::default();
    let repo_check = Family::<PlanLabels, FGauge>::default();
    let leader = Family::<InstanceLabels, FGauge>::default();
    if let Some(s) = status {
        let pl = PlanLabels { plan: plan.clone() };
        repo_up
            .get_or_create(&pl)
            .set(if s.repository.get().is_some() { 1.0 } else { 0.0 });
        if let Some(t) = s.repository.get().and_then(|r| r.last_check) {
            repo_check.get_or_create(&pl).set(ts(t));
        }
        if let Some(c) = &s.control {
            leader
                .get_or_create(&InstanceLabels {
                    plan: plan.clone(),
                    instance: c.instance.clone(),
                })
                .set(if leads { 1.0 } else { 0.0 });
        }
        let mut sites: std::collections::BTreeMap<String, bool> = Default::default();
        for a in &s.apps {
            let l = AppLabels {
                plan: plan.clone(),
                app: a.app.clone(),
            };
            let set = |f: &Family<AppLabels, FGauge>, v: f64| {
                f.get_or_create(&l).set(v);
            };
            set(
                &health,
                match a.health {
                    Health::Ok => 0.0,
                    Health::Warning => 1.0,
                    Health::Critical => 2.0,
                    Health::Unknown => 3.0,
                },
            );
            if let Some(r) = a.rpo.get() {
                if let Some(age) = r.age_seconds {
                    set(&rpo, age);
                }
            }
            if let Some(o) = a.objectives.rpo_seconds {
                set(&rpo_o, o);
            }
            // The objectives come from the plan, known whatever the repository says.
            if let Some(o) = a.objectives.rto_seconds {
                set(&rto_o, o);
            }
            if let Some(b) = a.backups.get() {
                if let Some(t) = b.last_success {
                    set(&last_ok, ts(t));
                }
                if let Some(x) = b.last.as_ref().filter(|x| x.ok) {
                    set(&bytes, x.bytes_added as f64);
                }
            }
            if let Some(Some(d)) = a.drill.get() {
                set(&drill_ts, ts(d.time));
                set(&drill_ok, if d.passed { 1.0 } else { 0.0 });
                if let Some(x) = d.rto_seconds {
                    set(&drill_rto, x);
                }
                if let Some(x) = d.rpo_seconds {
                    set(&drill_rpo, x);
                }
                set(&drill_int, d.interval_seconds);
            }
            if let Some(op) = a.operation.get() {
                set(&in_progress, if op.is_some() { 1.0 } else { 0.0 });
            }
            if let Some(Some(sb)) = a.standby_state.get() {
                if let Some(d) = sb.drift {
                    set(&drift, d as f64);
                }
            }
            if let Some(r) = a.readiness.get() {
                set(&level, r.level as f64);
            }
            if let Some(Some(t)) = a.traffic.get() {
                set(&traffic_agrees, if t.agrees { 1.0 } else { 0.0 });
            }
            if let Some(o) = a.operations.get() {
                for (kind, result, n) in [
                    ("failover", "done", o.failovers_done),
                    ("failover", "failed", o.failovers_failed),
                    ("failback", "done", o.failbacks_done),
                    ("failback", "failed", o.failbacks_failed),
                ] {
                    failovers
                        .get_or_create(&ResultLabels {
                            plan: plan.clone(),
                            app: a.app.clone(),
                            kind: kind.into(),
                            result: result.into(),
                        })
                        .inc_by(n);
                }
            }
            if a.watch.state == Freshness::Fresh {
                for sw in a.watch.get().map(|w| w.sites.as_slice()).unwrap_or_default() {
                    let up = sites.entry(sw.site.clone()).or_insert(true);
                    *up &= !sw.down;
                }
            }
        }
        for (site, up) in sites {
            site_up
                .get_or_create(&SiteLabels {
                    plan: plan.clone(),
                    site,
                })
                .set(if up { 1.0 } else { 0.0 });
        }
    }
    let mut gauge = |name: &str, help: &str, f: Family<AppLabels, FGauge>| reg.register(name, help, f);
    gauge(
        "lifeboat_app_rpo_seconds",
        "Age of the app's newest recovery point that checks against the repository",
        rpo,
    );
    gauge(
        "lifeboat_app_rpo_objective_seconds",
        "The app's recovery point objective (objectives.rpo)",
        rpo_o,
    );
    gauge(
        "lifeboat_app_rto_objective_seconds",
        "The app's recovery time objective (objectives.rto)",
        rto_o,
    );
    gauge(
        "lifeboat_backup_last_success_timestamp_seconds",
        "When the app's newest successful backup by plan started",
        last_ok,
    );
    gauge(
        "lifeboat_backup_bytes_added",
        "Bytes the app's newest successful backup added to the repository",
        bytes,
    );
    gauge(
        "lifeboat_drill_last_timestamp_seconds",
        "When the app's newest finished drill started",
        drill_ts,
    );
    gauge(
        "lifeboat_drill_last_success",
        "1 when the app's newest finished drill passed, else 0",
        drill_ok,
    );
    gauge(
        "lifeboat_drill_rto_seconds",
        "The RTO the app's newest finished drill achieved",
        drill_rto,
    );
    gauge(
        "lifeboat_drill_rpo_seconds",
        "The RPO the app's newest finished drill achieved",
        drill_rpo,
    );
    gauge(
        "lifeboat_drill_interval_seconds",
        "The app's drill interval (drill.every, or the default)",
        drill_int,
    );
    gauge(
        "lifeboat_operation_in_progress",
        "1 while a failover, failback or drill of the app is under way or stopped half way",
        in_progress,
    );
    gauge(
        "lifeboat_standby_drift_objects",
        "Objects of the app that differ between its active site and its hot standby",
        drift,
    );
    gauge(
        "lifeboat_app_readiness_level",
        "The app's readiness level: 0 none, 1 manual, 2 scripted, 3 automated",
        level,
    );
    gauge(
        "lifeboat_app_health",
        "The app's health: 0 ok, 1 warning, 2 critical, 3 unknown",
        health,
    );
    gauge(
        "lifeboat_traffic_agrees",
        "1 when the app's traffic goes where the journal says it is active",
        traffic_agrees,
    );
    reg.register(
        "lifeboat_failover",
        "Failovers and failbacks of the app as the journal holds them, by kind and result",
        failovers,
    );
    reg.register(
        "lifeboat_site_up",
        "0 when the health watch finds an app on the site down",
        site_up,
    );
    reg.register(
        "lifeboat_repository_up",
        "1 when the status read the repository",
        repo_up,
    );
    reg.register(
        "lifeboat_repository_last_check_timestamp_seconds",
        "When `lifeboat check` last passed on the repository",
        repo_check,
    );
    reg.register(
        "lifeboat_leader",
        "1 on the serve instance that leads (or runs alone)",
        leader,
    );
    reg.register(
        "lifeboat_backup_attempts",
        "Backups by plan this process saw start",
        counters.attempts.clone(),
    );
    reg.register(
        "lifeboat_backup_failures",
        "Backups by plan this process saw fail",
        counters.failures.clone(),
    );
    reg.register(
        "lifeboat_backup_duration_seconds",
        "How long backups by plan took",
        counters.duration.clone(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_orchestrator::status::{collect, Sources};
    use lifeboat_plan::{App, Plan};
    use time::OffsetDateTime;

    fn plan(apps: &[&str]) -> Plan {
        let mut y = String::from(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {name: p}\nrepository: repo\nsites:\n  \
             a: {docker: {host: \"unix:///a.sock\", address: 127.0.0.1}}\n  b: {docker: {host: \"unix:///b.sock\", address: 127.0.0.1}}\napps:\n",
        );
        for a in apps {
            y += &format!("  - {{name: {a}, primary: a, standby: b, select: {{labels: {{app: {a}}}}}, objectives: {{rpo: 1h}}}}\n");
        }
        Plan::parse("p.yaml", &y).unwrap()
    }

    fn status(p: &Plan) -> PlanStatus {
        let router = |_: &App| Ok(None);
        collect(
            &Sources {
                plan: p,
                repo: Err("no repository in this test".into()),
                router: &router,
                refresh: std::time::Duration::from_secs(10),
                only: None,
            },
            OffsetDateTime::now_utc(),
        )
    }

    fn attempt(ok: bool) -> BackupAttempt {
        BackupAttempt {
            started: OffsetDateTime::now_utc(),
            seconds: 3.0,
            site: "a".into(),
            snapshot: None,
            bytes_added: 0,
            error: (!ok).then(|| "failed".to_string()),
            by: "schedule".into(),
        }
    }

    #[test]
    fn a_removed_apps_series_are_gone_at_the_next_scrape() {
        let c = Counters::default();
        c.set_plan("p");
        let two = status(&plan(&["web", "db"]));
        c.keep_only(two.apps.iter().map(|a| a.app.as_str()));
        c.attempt("db", &attempt(false));
        c.attempt("web", &attempt(true));
        let m = render(Some(&two), &c, true);
        assert!(
            m.contains("lifeboat_app_health{plan=\"p\",app=\"db\"} 3"),
            "unknown: {m}"
        );
        assert!(
            m.contains("lifeboat_app_rpo_objective_seconds{plan=\"p\",app=\"db\"} 3600"),
            "{m}"
        );
        assert!(
            m.contains("lifeboat_backup_attempts_total{plan=\"p\",app=\"db\"} 1"),
            "{m}"
        );
        assert!(
            !m.contains("lifeboat_app_rpo_seconds{"),
            "an unknown RPO gives no sample: {m}"
        );
        let one = status(&plan(&["web"]));
        c.keep_only(one.apps.iter().map(|a| a.app.as_str()));
        let m = render(Some(&one), &c, true);
        assert!(!m.contains("app=\"db\""), "{m}");
        assert!(
            m.contains("lifeboat_backup_attempts_total{plan=\"p\",app=\"web\"} 1"),
            "{m}"
        );
    }

    #[test]
    fn no_failure_counter_is_above_its_attempts() {
        let c = Counters::default();
        c.set_plan("p");
        for i in 0..50 {
            c.attempt("web", &attempt(i % 3 == 0));
        }
        let m = render(None, &c, false);
        let v = |name: &str| -> f64 {
            m.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        };
        let (attempts, failures) = (
            v("lifeboat_backup_attempts_total{"),
            v("lifeboat_backup_failures_total{"),
        );
        assert_eq!((attempts, failures), (50.0, 33.0));
        assert_eq!(v("lifeboat_backup_duration_seconds_count{"), attempts);
    }
}
