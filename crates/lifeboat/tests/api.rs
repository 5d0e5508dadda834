//! `lifeboat serve --listen` through the real binary on loopback, with no site to reach (the
//! plan's engines do not exist, so every backup fails, which the status and metrics must say):
//! TLS with a self-signed certificate (a client that does not trust it is refused), tokens in two
//! roles, JSON errors that start nothing, the audit log, the metrics' invariants, and a
//! repository that goes away reading *unknown*, never green.
mod common;

use std::time::{Duration, Instant};

use common::api::{call, init_repo, plan, recovery_point, sample, start, token, trusting, wait_for};
use serde_json::Value;

#[test]
fn the_api_answers_by_role_refuses_bad_requests_in_json_and_audits_every_post() {
    let d = tempfile::tempdir().unwrap();
    let plan = plan(d.path());
    init_repo(d.path());
    let tokens = d.path().join("tokens.yaml");
    let viewer = token(&tokens, "grafana", "viewer");
    let operator = token(&tokens, "oncall", "operator");
    let s = start(d.path(), &plan, &tokens);
    assert!(s.log.lock().unwrap().contains("self-signed, made now"));
    let agent = trusting(&s.cert);
    let url = |p: &str| format!("{}{p}", s.base);

    // A client that does not trust the certificate gets no answer at all.
    match ureq::get(&url("/healthz")).call() {
        Err(ureq::Error::Transport(t)) => eprintln!("untrusted client refused: {t}"),
        other => panic!("an untrusting client got {other:?}"),
    }

    // No token: only the probes, the metrics and the page's files answer.
    assert_eq!(call(&agent, "GET", &url("/healthz"), None, None).0, 200);
    assert_eq!(call(&agent, "GET", &url("/metrics"), None, None).0, 200);
    assert_eq!(call(&agent, "GET", &url("/"), None, None).0, 200);
    wait_for("ready", Duration::from_secs(20), || {
        call(&agent, "GET", &url("/readyz"), None, None).0 == 200
    });
    let gets = [
        "/api/v1/status",
        "/api/v1/openapi.json",
        "/api/v1/audit",
        "/api/v1/plans",
        "/api/v1/plans/shop",
        "/api/v1/plans/shop/checks",
        "/api/v1/plans/shop/apps",
        "/api/v1/plans/shop/apps/web",
        "/api/v1/plans/shop/apps/web/snapshots",
        "/api/v1/plans/shop/apps/web/operations",
        "/api/v1/plans/shop/apps/web/drills",
    ];
    for p in gets {
        let (code, body) = call(&agent, "GET", &url(p), None, None);
        assert_eq!(
            (code, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{p}: {body}"
        );
        let (code, _) = call(&agent, "GET", &url(p), Some("lbt_not-a-token"), None);
        assert_eq!(code, 401, "{p} with an unknown token");
        for t in [&viewer, &operator] {
            let (code, body) = call(&agent, "GET", &url(p), Some(t), None);
            assert_eq!(code, 200, "{p}: {body}");
        }
    }
    let posts = ["backup", "drill", "failover", "failback"];
    for a in posts {
        let p = url(&format!("/api/v1/plans/shop/apps/web/{a}"));
        assert_eq!(call(&agent, "POST", &p, None, Some("{}")).0, 401, "{a}");
        let (code, body) = call(&agent, "POST", &p, Some(&viewer), Some("{}"));
        assert_eq!((code, body["code"].as_str()), (403, Some("forbidden")), "{a}: {body}");
    }

    // Bad requests: a clear 4xx, in JSON, and nothing started.
    let post = |path: &str, body: &str| call(&agent, "POST", &url(path), Some(&operator), Some(body));
    let (code, body) = post("/api/v1/plans/shop/apps/web/failover", "{}");
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("confirmation_required")),
        "{body}"
    );
    let (code, body) = post("/api/v1/plans/shop/apps/web/failover", r#"{"confirm": "db"}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = post("/api/v1/plans/shop/apps/web/drill", "{not json");
    assert_eq!((code, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (code, body) = post("/api/v1/plans/shop/apps/web/drill", r#"{"site": "z"}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no site \"z\""), "{body}");
    let (code, body) = post("/api/v1/plans/shop/apps/nope/backup", "{}");
    assert_eq!((code, body["code"].as_str()), (404, Some("not_found")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("apps: web"), "{body}");
    let (code, _) = post("/api/v1/plans/other/apps/web/backup", "{}");
    assert_eq!(code, 404);
    let (code, _) = call(&agent, "GET", &url("/api/v1/plans/other"), Some(&viewer), None);
    assert_eq!(code, 404);
    let (_, audit) = call(&agent, "GET", &url("/api/v1/audit"), Some(&viewer), None);
    let refused: Vec<&Value> = audit.as_array().unwrap().iter().collect();
    assert!(
        refused
            .iter()
            .all(|e| e["result"].as_str().unwrap().starts_with("refused")),
        "{audit}"
    );
    assert!(refused
        .iter()
        .any(|e| e["who"] == "oncall" && e["action"] == "failover" && e["status"] == 400));
    assert!(!audit.to_string().contains(&operator), "no token in the audit log");
    let ops = call(
        &agent,
        "GET",
        &url("/api/v1/plans/shop/apps/web/operations"),
        Some(&viewer),
        None,
    )
    .1;
    assert_eq!(ops, Value::Array(vec![]), "no operation started");

    // An accepted backup: 202, audited as started then finished (it fails: no engine).
    let (code, body) = post("/api/v1/plans/shop/apps/web/backup", "{}");
    assert_eq!(code, 202, "{body}");
    wait_for("the backup's end in the audit log", Duration::from_secs(30), || {
        let (_, a) = call(&agent, "GET", &url("/api/v1/audit"), Some(&viewer), None);
        a.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "backup" && e["result"].as_str().unwrap().starts_with("finished"))
    });
    wait_for("the failed attempt in the status", Duration::from_secs(10), || {
        let (_, a) = call(&agent, "GET", &url("/api/v1/plans/shop/apps/web"), Some(&viewer), None);
        a["backups"]["value"]["last"]["by"] == "api:oncall"
    });
    let (_, app) = call(&agent, "GET", &url("/api/v1/plans/shop/apps/web"), Some(&viewer), None);
    // The schedule's first backup (there is no recovery point) failed too.
    assert!(
        app["backups"]["value"]["failures_in_a_row"].as_u64().unwrap() >= 1,
        "{app}"
    );
    assert_eq!(app["backups"]["value"]["last_success"], Value::Null, "{app}");
    assert_eq!(app["health"], "critical", "no recovery point: {app}");
    assert_eq!(app["rpo"]["state"], "fresh");
    assert_eq!(app["rpo"]["value"]["age_seconds"], Value::Null);

    // The metrics: the objectives, the attempt and its failure, never more successes than attempts.
    let (_, m) = call(&agent, "GET", &url("/metrics"), None, None);
    let m = m.as_str().unwrap().to_string();
    let sample = |name: &str| sample(&m, name);
    assert_eq!(sample("lifeboat_app_rpo_objective_seconds{"), Some(3600.0), "{m}");
    assert_eq!(sample("lifeboat_app_rto_objective_seconds{"), Some(300.0), "{m}");
    // Counted since serve started: at least the API's backup; every one failed.
    let attempts = sample("lifeboat_backup_attempts_total{").unwrap();
    assert!(attempts >= 1.0, "{m}");
    assert_eq!(sample("lifeboat_backup_failures_total{"), Some(attempts), "{m}");
    assert!(
        m.contains("lifeboat_backup_duration_seconds_count{plan=\"shop\",app=\"web\"}"),
        "{m}"
    );
    assert_eq!(sample("lifeboat_app_health{"), Some(2.0), "{m}");
    assert_eq!(
        sample("lifeboat_app_rpo_seconds{"),
        None,
        "no recovery point, no RPO sample: {m}"
    );
    assert!(m.contains("lifeboat_leader{plan=\"shop\",instance=\"serve\"} 1"), "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "OpenMetrics text");

    // The repository goes away: within two refreshes every repository fact reads unknown.
    std::fs::rename(d.path().join("repo"), d.path().join("repo-gone")).unwrap();
    wait_for("the app unknown", Duration::from_secs(15), || {
        let (_, a) = call(&agent, "GET", &url("/api/v1/plans/shop/apps/web"), Some(&viewer), None);
        a["health"] == "unknown" && a["rpo"]["state"] == "unknown"
    });
    let (_, st) = call(&agent, "GET", &url("/api/v1/status"), Some(&viewer), None);
    assert_eq!(st["repository"]["state"], "unknown", "{st}");
    assert!(st["repository"]["why"].as_str().is_some());
    let (_, m) = call(&agent, "GET", &url("/metrics"), None, None);
    assert!(
        m.as_str().unwrap().contains("lifeboat_repository_up{plan=\"shop\"} 0"),
        "{m}"
    );
    // With the audit log out of reach, a POST starts nothing.
    let (code, body) = post("/api/v1/plans/shop/apps/web/backup", "{}");
    assert_eq!(code, 503, "{body}");
    drop(s);
}

#[test]
fn after_a_restart_the_gauges_come_back_from_the_repository_before_readyz_turns_true() {
    let d = tempfile::tempdir().unwrap();
    let plan = plan(d.path());
    init_repo(d.path());
    recovery_point(d.path(), "x");
    let tokens = d.path().join("tokens.yaml");
    let viewer = token(&tokens, "v", "viewer");
    let mut fingerprints = Vec::new();
    for round in 0..2 {
        let s = start(d.path(), &plan, &tokens);
        let line = s.log.lock().unwrap().clone();
        fingerprints.push(
            line.split("SHA-256 ")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
                .to_string(),
        );
        let agent = trusting(&s.cert);
        let url = |p: &str| format!("{}{p}", s.base);
        let start = Instant::now();
        loop {
            let (code, _) = call(&agent, "GET", &url("/readyz"), None, None);
            let (_, m) = call(&agent, "GET", &url("/metrics"), None, None);
            let m = m.as_str().unwrap().to_string();
            if code == 200 {
                // Ready: the gauges are there, read from the repository.
                let rpo = sample(&m, "lifeboat_app_rpo_seconds{").unwrap_or_else(|| panic!("round {round}: {m}"));
                assert!(rpo < 3600.0, "{rpo}");
                assert_eq!(sample(&m, "lifeboat_app_rpo_objective_seconds{"), Some(3600.0));
                break;
            }
            assert_eq!(code, 503);
            assert_eq!(
                sample(&m, "lifeboat_app_rpo_seconds{"),
                None,
                "no gauge before ready: {m}"
            );
            assert!(start.elapsed() < Duration::from_secs(20), "not ready in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_, app) = call(&agent, "GET", &url("/api/v1/plans/shop/apps/web"), Some(&viewer), None);
        let ratio = app["rpo"]["value"]["ratio"].as_f64().unwrap();
        assert!(ratio < 1.0, "{app}");
        drop(s);
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "the self-signed pair is kept across restarts"
    );
}
