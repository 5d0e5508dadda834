//! Prometheus alerting rules for a plan, derived from each app's objectives and intervals (the
//! metrics are those of [`crate::metrics`]): one rule group per app, and one for the plan.
//!
//! Every threshold comes from the plan: the RPO ratio from `objectives.rpo`, the drill age from
//! `drill.every` (or the default interval), how long a drift or an unknown status may last from
//! the status refresh intervals `serve` runs with. The output is YAML that `promtool check rules`
//! accepts (strings are written double-quoted, JSON-escaped, which YAML reads the same).
use std::fmt::Write;
use std::time::Duration;

use lifeboat_plan::{Plan, Profile};

/// What the rules assume of the `serve` they watch.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    /// How long the RPO may be above its objective before the alert fires (default 5 m).
    pub rpo_for: Duration,
    /// How often the full check runs in `serve` (drift and readiness are as fresh as it).
    pub check_refresh: Duration,
    /// How often `lifeboat check` is expected to pass on the repository.
    pub repository_check_every: Duration,
}

struct Rule {
    name: String,
    expr: String,
    for_: Duration,
    severity: &'static str,
    summary: String,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn dur(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn group(out: &mut String, name: &str, rules: &[Rule]) {
    let _ = writeln!(out, "  - name: {}", q(name));
    let _ = writeln!(out, "    rules:");
    for r in rules {
        let _ = writeln!(out, "      - alert: {}", q(&r.name));
        let _ = writeln!(out, "        expr: {}", q(&r.expr));
        let _ = writeln!(out, "        for: {}", dur(r.for_));
        let _ = writeln!(out, "        labels:");
        let _ = writeln!(out, "          severity: {}", r.severity);
        let _ = writeln!(out, "        annotations:");
        let _ = writeln!(out, "          summary: {}", q(&r.summary));
    }
}

/// The rules file for `plan`.
pub fn rules(plan: &Plan, o: &AlertOptions) -> String {
    let p = &plan.metadata.name;
    let mut out = format!(
        "# Alerting rules for DR plan {p}, written by `lifeboat alerts`; thresholds come from the plan's\n\
         # objectives and intervals. Load them in Prometheus (rule_files) next to a scrape of `lifeboat serve`.\n\
         groups:\n"
    );
    let settle = o.check_refresh * 2;
    group(
        &mut out,
        &format!("lifeboat-{p}"),
        &[
            Rule {
                name: "LifeboatSiteDown".into(),
                expr: format!("lifeboat_site_up{{plan={}}} == 0", q(p)),
                for_: Duration::from_secs(60),
                severity: "critical",
                summary: format!("plan {p}: the health watch finds site {{{{ $labels.site }}}} down"),
            },
            Rule {
                name: "LifeboatRepositoryUnreachable".into(),
                expr: format!("lifeboat_repository_up{{plan={}}} == 0", q(p)),
                for_: settle,
                severity: "critical",
                summary: format!("plan {p}: serve cannot read the repository"),
            },
            Rule {
                name: "LifeboatRepositoryCheckStale".into(),
                expr: format!(
                    "time() - lifeboat_repository_last_check_timestamp_seconds{{plan={}}} > {} or absent(lifeboat_repository_last_check_timestamp_seconds{{plan={}}})",
                    q(p),
                    o.repository_check_every.as_secs(),
                    q(p)
                ),
                for_: Duration::from_secs(3600),
                severity: "warning",
                summary: format!(
                    "plan {p}: no passing `lifeboat check` of the repository within {}",
                    dur(o.repository_check_every)
                ),
            },
            Rule {
                name: "LifeboatNoLeader".into(),
                expr: format!("max(lifeboat_leader{{plan={}}}) < 1", q(p)),
                for_: Duration::from_secs(60),
                severity: "critical",
                summary: format!("plan {p}: no serve instance leads: nothing backs up or fails over"),
            },
        ],
    );
    for app in &plan.apps {
        let a = &app.name.value;
        let sel = format!("plan={},app={}", q(p), q(a));
        let mut rules = Vec::new();
        if let Some(rpo) = app.objectives.as_ref().and_then(|o| o.rpo.as_ref()) {
            let secs = rpo.value.0.as_secs_f64();
            for (name, x, severity) in [
                ("LifeboatRpoAboveObjective", 1, "warning"),
                ("LifeboatRpoTwiceObjective", 2, "critical"),
            ] {
                rules.push(Rule {
                    name: name.into(),
                    expr: format!("lifeboat_app_rpo_seconds{{{sel}}} / {secs} > {x}"),
                    for_: o.rpo_for,
                    severity,
                    summary: format!(
                        "{a}: the newest recovery point is older than {x}x the RPO ({})",
                        dur(rpo.value.0)
                    ),
                });
            }
        }
        rules.push(Rule {
            name: "LifeboatStatusUnknown".into(),
            expr: format!("lifeboat_app_health{{{sel}}} == 3"),
            for_: settle,
            severity: "warning",
            summary: format!("{a}: serve cannot tell where the app stands (a source it reads does not answer)"),
        });
        if app.profile == Profile::Dr && app.standby.is_some() {
            let interval = app.drill.interval();
            rules.push(Rule {
                name: "LifeboatDrillFailed".into(),
                expr: format!("lifeboat_drill_last_success{{{sel}}} == 0"),
                for_: Duration::from_secs(60),
                severity: "critical",
                summary: format!("{a}: the last drill failed: the recovery it rehearses does not work"),
            });
            rules.push(Rule {
                name: "LifeboatDrillOverdue".into(),
                expr: format!(
                    "time() - lifeboat_drill_last_timestamp_seconds{{{sel}}} > {} or absent(lifeboat_drill_last_timestamp_seconds{{{sel}}})",
                    interval.as_secs()
                ),
                for_: settle,
                severity: "warning",
                summary: format!("{a}: no drill within its interval ({})", dur(interval)),
            });
            rules.push(Rule {
                name: "LifeboatStandbyDrift".into(),
                expr: format!("lifeboat_standby_drift_objects{{{sel}}} > 0"),
                for_: settle,
                severity: "warning",
                summary: format!("{a}: {{{{ $value }}}} objects differ on the standby (`lifeboat sync` corrects it)"),
            });
        }
        if app.traffic.is_some() {
            rules.push(Rule {
                name: "LifeboatTrafficDisagreesWithJournal".into(),
                expr: format!("lifeboat_traffic_agrees{{{sel}}} == 0"),
                for_: Duration::from_secs(60),
                severity: "critical",
                summary: format!("{a}: traffic does not go where the journal says the app is active"),
            });
        }
        group(&mut out, &format!("lifeboat-{p}-{a}"), &rules);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_come_from_each_apps_objectives() {
        let yaml = [
            "apiVersion: lifeboat.dev/v1",
            "kind: DRPlan",
            "metadata: {name: p}",
            "repository: repo",
            "sites:",
            "  a: {docker: {host: \"unix:///a.sock\", address: 127.0.0.1}}",
            "  b: {docker: {host: \"unix:///b.sock\", address: 127.0.0.1}}",
            "apps:",
            "  - {name: web, primary: a, standby: b, select: {labels: {app: web}}, objectives: {rpo: 90s, rto: 5m}, drill: {every: 2h}}",
            "  - {name: db, primary: a, standby: b, select: {labels: {app: db}}, objectives: {rpo: 1h}}",
        ]
        .join("\n");
        let plan = Plan::parse("p.yaml", &yaml).unwrap();
        let r = rules(
            &plan,
            &AlertOptions {
                rpo_for: Duration::from_secs(300),
                check_refresh: Duration::from_secs(60),
                repository_check_every: Duration::from_secs(7 * 86400),
            },
        );
        assert!(
            r.contains(r#"lifeboat_app_rpo_seconds{plan=\"p\",app=\"web\"} / 90 > 1"#),
            "{r}"
        );
        assert!(
            r.contains(r#"lifeboat_app_rpo_seconds{plan=\"p\",app=\"db\"} / 3600 > 2"#),
            "{r}"
        );
        assert!(r.contains("> 7200 or absent"), "web's drill.every: {r}");
        assert!(r.contains("> 2592000 or absent"), "db: the default drill interval: {r}");
        assert!(r.contains("for: 5m") && r.contains("severity: critical"));
    }
}
