//! Helpers for the tests of `serve --listen`: a plan with no site to reach, tokens, a serve
//! with its API on loopback, a client that trusts only its certificate, JSON calls.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PASSWORD;

pub struct Serve {
    pub child: Child,
    /// What serve printed (shown when a test fails).
    pub log: Arc<std::sync::Mutex<String>>,
    pub base: String,
    pub cert: PathBuf,
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

/// The plan `shop` with one app `web` (RPO 1 h, RTO 5 m, backed up every hour).
pub fn plan(dir: &Path) -> PathBuf {
    plan_rpo(dir, "1h")
}

/// The plan `shop` with one app `web` of RPO `rpo`.
pub fn plan_rpo(dir: &Path, rpo: &str) -> PathBuf {
    let p = dir.join("plan.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: shop}}\nrepository: {repo}\nsites:\n  \
             a: {{docker: {{host: \"unix:///nonexistent/a.sock\", address: 127.0.0.1}}}}\n  \
             b: {{docker: {{host: \"unix:///nonexistent/b.sock\", address: 127.0.0.1}}}}\napps:\n  \
             - name: web\n    primary: a\n    standby: b\n    select: {{labels: {{app: web}}}}\n    \
             objectives: {{rpo: {rpo}, rto: 5m}}\n    backup: {{every: 1h}}\n",
            repo = dir.join("repo").display(),
        ),
    )
    .unwrap();
    p
}

/// A token of `role` named `name`, added to `file` by `lifeboat token new`.
pub fn token(file: &Path, name: &str, role: &str) -> String {
    let o = Command::new(super::bin())
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

/// `serve --listen 127.0.0.1:0` with a self-signed pair in `dir/tls`, refreshing every second
/// (the full check every 3 s).
pub fn start(dir: &Path, plan: &Path, tokens: &Path) -> Serve {
    start_with(dir, plan, tokens, &["--status-every", "1s", "--check-every", "3s"])
}

/// `serve --listen` with these arguments (and serve's own refresh intervals unless they say).
pub fn start_with(dir: &Path, plan: &Path, tokens: &Path, extra: &[&str]) -> Serve {
    let password = dir.join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut child = Command::new(super::bin())
        .arg("--password-file")
        .arg(&password)
        .args(["serve", "--no-watch", "--sync-every", "0", "--listen", "127.0.0.1:0"])
        .arg("--tokens")
        .arg(tokens)
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .args(extra)
        .arg(plan)
        .env_remove("LIFEBOAT_PASSWORD")
        .env_remove("LIFEBOAT_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = super::stderr_log(&mut child);
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
pub fn trusting(cert: &Path) -> ureq::Agent {
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
pub fn call(agent: &ureq::Agent, method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
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

pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains("app=\"web\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Creates the repository of [`plan`] in `dir/repo`.
pub fn init_repo(dir: &Path) {
    super::ok(dir.join("repo").to_str().unwrap(), &["repo", "init"]);
}

/// A recovery point of the app `web` of plan `shop`: a files snapshot of `dir/data` (its file
/// holding `content`) with the plan's tags.
pub fn recovery_point(dir: &Path, content: &str) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), content).unwrap();
    super::ok(
        dir.join("repo").to_str().unwrap(),
        &[
            "backup",
            "files",
            data.to_str().unwrap(),
            "--tag",
            "plan=shop",
            "--tag",
            "app=web",
        ],
    );
}
