//! Timelines and reports of operations: text for the terminal, JSON, and the drill report as
//! Markdown, JSON, JUnit XML (one test case per app and step, for a CD pipeline stage) and HTML
//! with a timeline chart (inline SVG, no scripts, no external assets).
use lifeboat_plan::Plan;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::journal::{Operation, Step, StepOutcome};

fn secs(op: &Operation, t: OffsetDateTime) -> f64 {
    (t - op.trigger).as_seconds_f64()
}

/// The step whose end counts as "recovered": traffic switched if it was, else healthy.
fn recovered_step(op: &Operation) -> Option<Step> {
    [Step::Traffic, Step::Health, Step::Verify, Step::Start]
        .into_iter()
        .find(|s| op.finished(*s).is_some_and(|r| r.outcome == StepOutcome::Done))
}

/// RTO achieved: trigger to recovered (see [`recovered_step`]).
pub fn rto_seconds(op: &Operation) -> Option<f64> {
    if op.kind == crate::journal::Kind::Drill {
        return op.seconds_to(Step::Health);
    }
    recovered_step(op).and_then(|s| op.seconds_to(s))
}

/// A few lines for the terminal.
pub fn timeline_text(op: &Operation) -> String {
    let mut s = format!(
        "{} {} of {}: {} -> {} ({}), trigger {}\n",
        op.kind.as_str(),
        op.id,
        op.app,
        op.from,
        op.to,
        op.status,
        op.trigger
    );
    if let Some(d) = op.detected {
        s += &format!("  {:>7.2} s  detected (failure threshold reached)\n", secs(op, d));
    }
    for st in &op.steps {
        let end = st
            .finished
            .map(|f| format!("{:>7.2} s", secs(op, f)))
            .unwrap_or_else(|| "      - ".into());
        s += &format!("  {end}  {:<13} {:<8} {}\n", st.name, st.outcome, st.detail);
    }
    if let Some(r) = rto_seconds(op) {
        s += &format!("  RTO achieved: {r:.2} s\n");
    }
    if let Some(r) = op.rpo_seconds() {
        let rp = op.recovery_point.as_ref().expect("rpo implies a recovery point");
        s += &format!(
            "  RPO achieved: {r:.2} s (snapshot {} of {}{})\n",
            rp.snapshot.short(),
            rp.time,
            if rp.final_backup { ", taken after fencing" } else { "" }
        );
    }
    s
}

/// The operation as JSON, with its measured RTO and RPO.
pub fn json(op: &Operation) -> Value {
    let mut v = serde_json::to_value(op).expect("serialisable");
    v["rto_seconds"] = json!(rto_seconds(op));
    v["rpo_seconds"] = json!(op.rpo_seconds());
    v
}

/// What is wrong with a drill: its failed or unfinished steps and the objectives (RTO, RPO in
/// seconds) it missed. Empty: the drill passed.
pub fn drill_problems(op: &Operation, rto: Option<f64>, rpo: Option<f64>) -> Vec<String> {
    let mut out: Vec<String> = op
        .steps
        .iter()
        .filter(|s| s.outcome == StepOutcome::Failed || s.finished.is_none())
        .map(|s| format!("step {} failed: {}", s.name, s.detail))
        .collect();
    match (rto, rto_seconds(op)) {
        (Some(want), Some(got)) if got > want => out.push(format!("RTO {got:.1} s exceeds the objective {want:.0} s")),
        (_, None) => out.push("the copy never became healthy: no RTO".into()),
        _ => {}
    }
    if let (Some(want), Some(got)) = (rpo, op.rpo_seconds()) {
        if got > want {
            out.push(format!("RPO {got:.1} s exceeds the objective {want:.0} s"));
        }
    }
    out
}

/// An app's objectives in seconds: (RTO, RPO).
pub fn objectives(app: &lifeboat_plan::App) -> (Option<f64>, Option<f64>) {
    let o = app.objectives.as_ref();
    (
        o.and_then(|o| o.rto.as_ref()).map(|d| d.value.0.as_secs_f64()),
        o.and_then(|o| o.rpo.as_ref()).map(|d| d.value.0.as_secs_f64()),
    )
}

/// The report of a drill over one or more apps.
pub struct DrillReport {
    pub plan: String,
    pub operations: Vec<Operation>,
    /// Apps whose drill could not start, with why.
    pub errors: Vec<String>,
    /// Objectives by app: (rto, rpo) in seconds.
    objectives: Vec<(String, Option<f64>, Option<f64>)>,
}

impl DrillReport {
    /// Every step detail, operation error and app error is passed through
    /// [`lifeboat_model::redact::redact`] once more (reports are plaintext, often CI artifacts):
    /// the places that write them already keep secrets out, this is the safety net.
    pub fn new(plan: &Plan, mut operations: Vec<Operation>, errors: Vec<String>) -> DrillReport {
        use lifeboat_model::redact::redact;
        for op in &mut operations {
            for st in &mut op.steps {
                st.detail = redact(&st.detail);
            }
            op.error = op.error.as_deref().map(redact);
        }
        let errors = errors.iter().map(|e| redact(e)).collect();
        let objectives = plan
            .apps
            .iter()
            .map(|a| {
                let (rto, rpo) = objectives(a);
                (a.name.value.clone(), rto, rpo)
            })
            .collect();
        DrillReport {
            plan: plan.metadata.name.clone(),
            operations,
            errors,
            objectives,
        }
    }

    fn objective(&self, app: &str) -> (Option<f64>, Option<f64>) {
        self.objectives
            .iter()
            .find(|(a, ..)| a == app)
            .map(|(_, r, p)| (*r, *p))
            .unwrap_or_default()
    }

    fn problems(&self, op: &Operation) -> Vec<String> {
        let (rto, rpo) = self.objective(&op.app);
        drill_problems(op, rto, rpo)
    }

    /// Every app drilled, healthy, verified, torn down and within its objectives.
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
            && !self.operations.is_empty()
            && self.operations.iter().all(|o| self.problems(o).is_empty())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "plan": self.plan,
            "passed": self.passed(),
            "errors": self.errors,
            "drills": self.operations.iter().map(|op| {
                let (rto, rpo) = self.objective(&op.app);
                let mut v = json(op);
                v["objectives"] = json!({"rto_seconds": rto, "rpo_seconds": rpo});
                v["problems"] = json!(self.problems(op));
                v
            }).collect::<Vec<_>>(),
        })
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# DR drill: plan {}\n\nResult: **{}**\n\n",
            self.plan,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        for e in &self.errors {
            s += &format!("- could not drill: {e}\n");
        }
        for op in &self.operations {
            let (rto, rpo) = self.objective(&op.app);
            let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2} s")).unwrap_or_else(|| "-".into());
            s += &format!(
                "\n## {} on {} ({})\n\n| | achieved | objective |\n|---|---|---|\n| RTO | {} | {} |\n| RPO | {} | {} |\n\n",
                op.app,
                op.to,
                op.id,
                fmt(rto_seconds(op)),
                fmt(rto),
                fmt(op.rpo_seconds()),
                fmt(rpo)
            );
            if let Some(rp) = &op.recovery_point {
                s += &format!("Recovery point: snapshot `{}` of {}.\n\n", rp.snapshot.short(), rp.time);
            }
            s += "| step | outcome | seconds from trigger | detail |\n|---|---|---|---|\n";
            for st in &op.steps {
                s += &format!(
                    "| {} | {} | {} | {} |\n",
                    st.name,
                    st.outcome,
                    st.finished
                        .map(|f| format!("{:.2}", secs(op, f)))
                        .unwrap_or_else(|| "-".into()),
                    st.detail.replace('|', "\\|").replace('\n', " ")
                );
            }
            for p in self.problems(op) {
                s += &format!("\n- problem: {p}");
            }
            s += "\n";
        }
        s
    }

    /// JUnit XML: a test suite per app, a test case per step and per objective.
    pub fn junit(&self) -> String {
        let mut cases = String::new();
        let mut tests = 0;
        let mut failures = 0;
        for e in &self.errors {
            tests += 1;
            failures += 1;
            cases += &format!(
                "  <testsuite name=\"drill\" tests=\"1\" failures=\"1\">\n    <testcase classname=\"drill\" name=\"start\"><failure message=\"{}\"/></testcase>\n  </testsuite>\n",
                xml(e)
            );
        }
        for op in &self.operations {
            let mut suite = String::new();
            let mut n = 0;
            let mut f = 0;
            for st in &op.steps {
                n += 1;
                let t = st.finished.map(|e| (e - st.started).as_seconds_f64()).unwrap_or(0.0);
                suite += &format!(
                    "    <testcase classname=\"drill.{}\" name=\"{}\" time=\"{t:.3}\">",
                    xml(&op.app),
                    xml(&st.name.to_string())
                );
                if st.outcome == StepOutcome::Failed || st.finished.is_none() {
                    f += 1;
                    suite += &format!("<failure message=\"{}\"/>", xml(&st.detail));
                } else if st.outcome == StepOutcome::Skipped {
                    suite += &format!("<skipped message=\"{}\"/>", xml(&st.detail));
                }
                suite += "</testcase>\n";
            }
            let (rto, rpo) = self.objective(&op.app);
            for (name, want, got) in [("rto", rto, rto_seconds(op)), ("rpo", rpo, op.rpo_seconds())] {
                n += 1;
                suite += &format!("    <testcase classname=\"drill.{}\" name=\"{name}\">", xml(&op.app));
                match (want, got) {
                    (_, None) => {
                        f += 1;
                        suite += &format!("<failure message=\"no {name} measured\"/>");
                    }
                    (Some(w), Some(g)) if g > w => {
                        f += 1;
                        suite += &format!("<failure message=\"{name} {g:.2} s exceeds the objective {w:.0} s\"/>");
                    }
                    (_, Some(g)) => suite += &format!("<system-out>{name} {g:.2} s</system-out>"),
                }
                suite += "</testcase>\n";
            }
            tests += n;
            failures += f;
            cases += &format!(
                "  <testsuite name=\"drill.{}\" tests=\"{n}\" failures=\"{f}\" timestamp=\"{}\">\n{suite}  </testsuite>\n",
                xml(&op.app),
                rfc3339(op.trigger)
            );
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"lifeboat drill {}\" tests=\"{tests}\" failures=\"{failures}\">\n{cases}</testsuites>\n",
            xml(&self.plan)
        )
    }

    /// A self-contained HTML page with a timeline chart per app.
    pub fn html(&self) -> String {
        let mut body = format!(
            "<h1>DR drill: plan {}</h1>\n<p class=\"{}\">{}</p>\n",
            xml(&self.plan),
            if self.passed() { "pass" } else { "fail" },
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        for e in &self.errors {
            body += &format!("<p class=\"fail\">could not drill: {}</p>\n", xml(e));
        }
        for op in &self.operations {
            let (rto, rpo) = self.objective(&op.app);
            let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2} s")).unwrap_or_else(|| "-".into());
            body += &format!(
                "<h2>{} on {}</h2>\n<table><tr><th></th><th>achieved</th><th>objective</th></tr>\n<tr><td>RTO</td><td>{}</td><td>{}</td></tr>\n<tr><td>RPO</td><td>{}</td><td>{}</td></tr></table>\n",
                xml(&op.app),
                xml(&op.to),
                fmt(rto_seconds(op)),
                fmt(rto),
                fmt(op.rpo_seconds()),
                fmt(rpo)
            );
            body += &timeline_svg(op);
            body += "<table><tr><th>step</th><th>outcome</th><th>s</th><th>detail</th></tr>\n";
            for st in &op.steps {
                body += &format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    xml(&st.name.to_string()),
                    xml(st.outcome.as_str()),
                    st.finished
                        .map(|f| format!("{:.2}", secs(op, f)))
                        .unwrap_or_else(|| "-".into()),
                    xml(&st.detail)
                );
            }
            body += "</table>\n";
            for p in self.problems(op) {
                body += &format!("<p class=\"fail\">{}</p>\n", xml(&p));
            }
        }
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>DR drill {}</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.pass{{color:#070;font-weight:bold}}.fail{{color:#b00;font-weight:bold}}</style></head><body>\n{body}</body></html>\n",
            xml(&self.plan)
        )
    }
}

/// The SVG timeline of an operation's steps (the drill report and the dashboard draw it): a
/// horizontal bar per step, from its start to its end, on a time axis from the trigger.
pub fn timeline_svg(op: &Operation) -> String {
    let end = op
        .steps
        .iter()
        .filter_map(|s| s.finished)
        .map(|f| secs(op, f))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let (w, left, row) = (720.0, 110.0, 26.0);
    let scale = (w - left - 20.0) / end;
    let h = row * op.steps.len() as f64 + 40.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"timeline\">\n");
    for (i, st) in op.steps.iter().enumerate() {
        let y = 10.0 + row * i as f64;
        let x0 = left + secs(op, st.started).max(0.0) * scale;
        let x1 = left + st.finished.map(|f| secs(op, f)).unwrap_or(end) * scale;
        let color = match st.outcome {
            StepOutcome::Done => "#4a8",
            StepOutcome::Skipped => "#bbb",
            _ => "#d44",
        };
        s += &format!(
            "<text x=\"4\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"18\" fill=\"{color}\"><title>{}: {}</title></rect>\n",
            y + 13.0,
            xml(&st.name.to_string()),
            (x1 - x0).max(2.0),
            xml(&st.name.to_string()),
            xml(&st.detail)
        );
    }
    let y = row * op.steps.len() as f64 + 24.0;
    s += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#333\"/><text x=\"{left}\" y=\"{}\" font-size=\"11\">0 s (trigger)</text><text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{end:.2} s</text>\n</svg>\n",
        y - 8.0,
        left + end * scale,
        y - 8.0,
        y + 6.0,
        left + end * scale,
        y + 6.0
    );
    s
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Escapes text for XML and HTML.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Kind, OpStatus, RecoveryPoint, StepRecord};
    use std::time::Duration;

    const PLAN: &str = "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {name: p}\nrepository: r\nsites:\n  a: {docker: {address: 10.0.0.1}}\n  b: {docker: {address: 10.0.0.2}}\napps:\n  - {name: web, primary: a, standby: b, objectives: {rto: 10s, rpo: 1m}}\n";

    fn op(health_secs: u64, failed: bool) -> Operation {
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let step = |name: Step, end: u64, outcome: StepOutcome| StepRecord {
            name,
            started: t,
            finished: (outcome != StepOutcome::Failed).then_some(t + Duration::from_secs(end)),
            outcome,
            detail: "<d&>".into(),
            attempts: 1,
            fenced_by: None,
            term: None,
        };
        Operation {
            id: "20270115T080000Z-0001-drill".into(),
            plan: "p".into(),
            app: "web".into(),
            kind: Kind::Drill,
            from: "b".into(),
            to: "b".into(),
            trigger: t,
            reason: "drill".into(),
            detected: None,
            recovery_point: Some(RecoveryPoint {
                snapshot: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                    .parse()
                    .unwrap(),
                time: t - Duration::from_secs(30),
                final_backup: false,
            }),
            steps: vec![
                step(Step::Data, 1, StepOutcome::Done),
                step(Step::Health, health_secs, StepOutcome::Done),
                step(
                    Step::Verify,
                    health_secs,
                    if failed { StepOutcome::Failed } else { StepOutcome::Done },
                ),
            ],
            status: OpStatus::Done,
            error: None,
            resumed: 0,
            prefix: None,
        }
    }

    #[test]
    fn a_drill_within_its_objectives_passes_in_every_format() {
        let plan = Plan::parse("p.yaml", PLAN).unwrap();
        let r = DrillReport::new(&plan, vec![op(4, false)], vec![]);
        assert!(r.passed());
        assert_eq!(r.to_json()["drills"][0]["rto_seconds"], 4.0);
        assert_eq!(r.to_json()["drills"][0]["rpo_seconds"], 30.0);
        assert!(r.markdown().contains("PASSED"));
        let x = r.junit();
        assert!(x.contains("tests=\"5\" failures=\"0\""), "{x}");
        assert!(r.html().contains("<svg"));
    }

    #[test]
    fn a_failed_step_or_a_missed_objective_fails_the_drill() {
        let plan = Plan::parse("p.yaml", PLAN).unwrap();
        let slow = DrillReport::new(&plan, vec![op(12, false)], vec![]);
        assert!(!slow.passed());
        assert!(slow.junit().contains("rto 12.00 s exceeds the objective 10 s"));
        let broken = DrillReport::new(&plan, vec![op(4, true)], vec![]);
        assert!(!broken.passed());
        let x = broken.junit();
        assert!(x.contains("failures=\"1\""), "{x}");
        assert!(
            x.contains("<failure message=\"&lt;d&amp;&gt;\"/>"),
            "the step's detail, escaped: {x}"
        );
        assert!(!DrillReport::new(&plan, vec![], vec!["web: no backup".into()]).passed());
    }
}
