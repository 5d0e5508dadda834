//! The metrics and alerting rules against the real Prometheus (Debian's `prometheus` package:
//! `prometheus` and `promtool`; each test is skipped with a line when it is not installed):
//! `promtool check rules` accepts what `lifeboat alerts` writes, `promtool test rules` fires the
//! RPO alert when backups stop and clears it when they resume, and a real Prometheus scrapes a
//! running `serve` over TLS (trusting only its certificate) and evaluates the same rules live.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{init_repo, plan_rpo, recovery_point, start_with, token, wait_for};
use lifeboat_lab_support::etcd::free_port;
use serde_json::Value;

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {tool} is not installed (apt-get install prometheus; scripts/test.sh does it)");
    }
    found
}

fn alerts(plan: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(common::bin())
        .arg("alerts")
        .arg(plan)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let o = Command::new("promtool").args(args).current_dir(dir).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_and_the_rpo_alert_fires_when_backups_stop_and_clears_when_they_resume() {
    if !have("promtool") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let plan = plan_rpo(d.path(), "10m");
    alerts(&plan, &d.path().join("rules.yaml"), &[]);
    let out = promtool(&["check", "rules", "rules.yaml"], d.path());
    assert!(out.contains("SUCCESS"), "{out}");
    // The RPO grows by 60 s a minute from 0 (backups stopped), then drops to 0 at minute 20
    // (a backup) and grows again. Objective 10 m, `for` 5 m: warning from 15 m (above 1x since
    // 10 m), critical never (2x would be 20 m); none once the backup is in.
    let tests = "rule_files: [rules.yaml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      \
        - series: 'lifeboat_app_rpo_seconds{plan=\"shop\",app=\"web\"}'\n        values: '0+60x19 0+60x10'\n    alert_rule_test:\n      \
        - {eval_time: 9m, alertname: LifeboatRpoAboveObjective, exp_alerts: []}\n      \
        - {eval_time: 14m, alertname: LifeboatRpoAboveObjective, exp_alerts: []}\n      \
        - eval_time: 16m\n        alertname: LifeboatRpoAboveObjective\n        exp_alerts:\n          \
          - exp_labels: {severity: warning, plan: shop, app: web}\n            exp_annotations:\n              \
              summary: 'web: the newest recovery point is older than 1x the RPO (10m)'\n      \
        - {eval_time: 19m, alertname: LifeboatRpoTwiceObjective, exp_alerts: []}\n      \
        - {eval_time: 21m, alertname: LifeboatRpoAboveObjective, exp_alerts: []}\n";
    std::fs::write(d.path().join("tests.yaml"), tests).unwrap();
    let out = promtool(&["test", "rules", "tests.yaml"], d.path());
    assert!(out.contains("SUCCESS"), "{out}");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(port: u16, path: &str) -> Value {
    let url = format!("http://127.0.0.1:{port}{path}");
    match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => serde_json::from_str(&r.into_string().unwrap()).unwrap(),
        Err(e) => Value::String(e.to_string()),
    }
}

fn firing(port: u16, alert: &str) -> bool {
    let v = query(port, "/api/v1/alerts");
    v["data"]["alerts"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["labels"]["alertname"] == alert && x["state"] == "firing")
    })
}

#[test]
fn a_real_prometheus_scrapes_serve_over_tls_and_the_rpo_alert_fires_and_clears_live() {
    if !have("prometheus") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // A small objective, so that backups stopping shows within seconds.
    let plan = plan_rpo(d.path(), "4s");
    init_repo(d.path());
    let backup = |n: u32| recovery_point(d.path(), &n.to_string());
    backup(0);
    let tokens = d.path().join("tokens.yaml");
    token(&tokens, "v", "viewer");
    let s = start_with(d.path(), &plan, &tokens, &["--status-every", "1s"]);
    let target = s.base.trim_start_matches("https://").to_string();
    alerts(&plan, &d.path().join("rules.yaml"), &["--rpo-for", "1s"]);
    let port = free_port();
    std::fs::write(
        d.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\nscrape_configs:\n  \
             - job_name: lifeboat\n    scheme: https\n    tls_config: {{ca_file: {}}}\n    static_configs:\n      \
             - targets: ['{target}']\n",
            s.cert.display()
        ),
    )
    .unwrap();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", d.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", d.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(d.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Scraped over TLS: the target is up and the objective is there.
    wait_for("the objective scraped", Duration::from_secs(60), || {
        let v = query(port, "/api/v1/query?query=lifeboat_app_rpo_objective_seconds");
        v["data"]["result"][0]["value"][1] == "4"
    });
    let up = query(port, "/api/v1/query?query=up%7Bjob%3D%22lifeboat%22%7D");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    // Backups stopped: the RPO passes its objective and the alert fires.
    let t = Instant::now();
    wait_for("the RPO alert firing", Duration::from_secs(60), || {
        firing(port, "LifeboatRpoAboveObjective")
    });
    eprintln!(
        "LifeboatRpoAboveObjective firing {:.1} s after the watch began",
        t.elapsed().as_secs_f64()
    );
    // Backups resume (one every second): the alert clears.
    let t = Instant::now();
    let mut n = 1;
    wait_for("the RPO alert cleared", Duration::from_secs(60), || {
        backup(n);
        n += 1;
        !firing(port, "LifeboatRpoAboveObjective")
    });
    eprintln!("cleared {:.1} s after backups resumed", t.elapsed().as_secs_f64());
    drop(s);
}
