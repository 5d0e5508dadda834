//! `lifeboat serve --listen` through the real binary on loopback, with no site to reach (the
//! plan's engines do not exist, so every backup fails, which the status and metrics must say):
//! TLS with a self-signed certificate (a client that does not trust it is refused), tokens in two
//! roles, JSON errors that start nothing, the audit log, the metrics' invariants, and a
//! repository that goes away reading *unknown*, never green.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PASSWORD;
use serde_json::Value;

struct Serve {
    child: Child,
    /// What serve printed (shown when a test fails).
    log: Arc<std::sync::Mutex<String>>,
    base: String,
    cert: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("serve printed:\n{}", self.log.lock().unwrap());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plan(dir: &Path) -> PathBuf {
    let p = dir.join("plan.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: shop}}\nrepository: {repo}\nsites:\n  \
             a: {{docker: {{host: \"unix:///nonexistent/a.sock\", address: 127.0.0.1}}}}\n  \
             b: {{docker: {{host: \"unix:///nonexistent/b.sock\", address: 127.0.0.1}}}}\napps:\n  \
             - name: web\n    primary: a\n    standby: b\n    select: {{labels: {{app: web}}}}\n    \
             objectives: {{rpo: 1h, rto: 5m}}\n    backup: {{every: 1h}}\n",
            repo = dir.join("repo").display(),
        ),
    )
    .unwrap();
    p
}

/// A token of `role` named `name`, added to `file` by `lifeboat token new`.
fn token(file: &Path, name: &str, role: &str) -> String {
    let o = Command::new(common::bin())
        .args(["token", "new", name, "--role", role, "--file"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let t = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(t.starts_with("lbt_"), "{t}");
    assert!(
        !std::fs::read_to_string(file).unwrap().contains(&t),
        "the file holds only the hash"
    );
    t
}

fn start(dir: &Path, plan: &Path, tokens: &Path) -> Serve {
    let password = dir.join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut child = Command::new(common::bin())
        .arg("--password-file")
        .arg(&password)
        .args(["serve", "--no-watch", "--sync-every", "0", "--listen", "127.0.0.1:0"])
        .arg("--tokens")
        .arg(tokens)
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .args(["--status-every", "1s", "--check-every", "3s"])
        .arg(plan)
        .env_remove("LIFEBOAT_PASSWORD")
        .env_remove("LIFEBOAT_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::stderr_log(&mut child);
    let start = Instant::now();
    let base = loop {
        if let Some(l) = log.lock().unwrap().lines().find(|l| l.contains("on https://")) {
            let url = l.split("on https://").nth(1).unwrap().split(' ').next().unwrap();
            assert!(l.contains("SHA-256 "), "{l}");
            break format!("https://{url}");
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve ended: {}",
            log.lock().unwrap()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no API line: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Serve {
        child,
        log,
        base,
        cert: dir.join("tls/cert.pem"),
    }
}

/// A client that trusts only `cert`.
fn trusting(cert: &Path) -> ureq::Agent {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(10))
        .build()
}

/// Status code and body (JSON when it parses, else the text as a JSON string).
fn call(agent: &ureq::Agent, method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let mut r = agent.request(method, url);
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => r.set("Content-Type", "application/json").send_string(b),
        None => r.call(),
    };
    let (code, resp) = match res {
        Ok(resp) => (resp.status(), resp),
        Err(ureq::Error::Status(code, resp)) => (code, resp),
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let text = resp.into_string().unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_api_answers_by_role_refuses_bad_requests_in_json_and_audits_every_post() {
    let d = tempfile::tempdir().unwrap();
    let plan = plan(d.path());
    common::ok(d.path().join("repo").to_str().unwrap(), &["repo", "init"]);
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

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains("app=\"web\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn after_a_restart_the_gauges_come_back_from_the_repository_before_readyz_turns_true() {
    let d = tempfile::tempdir().unwrap();
    let plan = plan(d.path());
    let repo = d.path().join("repo");
    let repo = repo.to_str().unwrap();
    common::ok(repo, &["repo", "init"]);
    // A recovery point of the app (a files snapshot with the plan's tags).
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "x").unwrap();
    common::ok(
        repo,
        &["backup", "files", data.to_str().unwrap(), "--tag", "plan=shop", "--tag", "app=web"],
    );
    let tokens = d.path().join("tokens.yaml");
    let viewer = token(&tokens, "v", "viewer");
    let mut fingerprints = Vec::new();
    for round in 0..2 {
        let s = start(d.path(), &plan, &tokens);
        let line = s.log.lock().unwrap().clone();
        fingerprints.push(line.split("SHA-256 ").nth(1).unwrap().split(')').next().unwrap().to_string());
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
            assert_eq!(sample(&m, "lifeboat_app_rpo_seconds{"), None, "no gauge before ready: {m}");
            assert!(start.elapsed() < Duration::from_secs(20), "not ready in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_, app) = call(&agent, "GET", &url("/api/v1/plans/shop/apps/web"), Some(&viewer), None);
        let ratio = app["rpo"]["value"]["ratio"].as_f64().unwrap();
        assert!(ratio < 1.0, "{app}");
        drop(s);
    }
    assert_eq!(fingerprints[0], fingerprints[1], "the self-signed pair is kept across restarts");
}
