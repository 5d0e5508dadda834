//! `lifeboat serve` with a coordination it cannot use, through the real binary against a real
//! etcd on loopback (Debian's `etcd-server`; skipped with a line when it is not installed): an
//! unreachable etcd, endpoints that are not etcd, and two plans of one name on one etcd. Each is
//! refused with one clear line, and nothing is acted on (the repository holds no journal, no
//! snapshot; etcd holds nothing of the refused instance).
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::PASSWORD;
use lifeboat_lab_support::etcd::{free_port, Etcd};

/// A plan `name` with one app on sites whose engines do not exist (serve refuses before it would
/// reach them), coordinated through the etcd at `endpoint`; `app` names the app (two plans of one
/// name differ in it).
fn plan(dir: &Path, file: &str, name: &str, app: &str, endpoint: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: {name}}}\nrepository: {repo}\n\
             coordination: {{etcd: {{endpoints: [\"{endpoint}\"], ttl: 4s}}, instances: 1}}\nsites:\n  \
             a: {{docker: {{host: \"unix:///nonexistent/a.sock\", address: 127.0.0.1}}}}\n  \
             b: {{docker: {{host: \"unix:///nonexistent/b.sock\", address: 127.0.0.1}}}}\napps:\n  \
             - name: {app}\n    primary: a\n    standby: b\n    select: {{labels: {{app: {app}}}}}\n    \
             backup: {{every: 1h}}\n",
            repo = dir.join("repo").display(),
        ),
    )
    .unwrap();
    p
}

/// `serve` as a service runs it: the password from a file beside the plan.
fn serve(plan: &Path, instance: &str) -> Command {
    let password = plan.with_file_name("password");
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut c = Command::new(common::bin());
    c.arg("--password-file")
        .arg(&password)
        .args(["serve", "--no-watch", "--sync-every", "0", "--instance", instance])
        .arg(plan)
        .env_remove("LIFEBOAT_PASSWORD")
        .env_remove("LIFEBOAT_REPO");
    c
}

/// Runs `serve` that must refuse: within 30 s, exit 1, and its stderr is one line.
fn refused(plan: &Path, instance: &str) -> String {
    let mut child = serve(plan, instance)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve {} did not refuse within 30 s", plan.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o: Output = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{err}");
    assert!(o.stdout.is_empty(), "{:?}", String::from_utf8_lossy(&o.stdout));
    eprintln!("refused: {}", lines[0]);
    lines[0].to_string()
}

/// What the repository holds: no journal of the plan and no snapshot (nothing was acted on).
fn untouched(repo: &Path) {
    let dr = repo.join("dr");
    let states: Vec<_> = std::fs::read_dir(&dr)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(states.is_empty(), "journal written: {states:?}");
    let out = common::ok(repo.to_str().unwrap(), &["snapshots"]);
    assert!(!out.contains("plan="), "a snapshot was taken: {out}");
}

/// An HTTP server on loopback that is not etcd: every request gets `answer`.
fn not_etcd(answer: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer.as_bytes());
        }
    });
    url
}

#[test]
fn serve_refuses_an_unreachable_etcd_and_endpoints_that_are_not_etcd_in_one_line_and_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    common::ok(dir.path().join("repo").to_str().unwrap(), &["repo", "init"]);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let line = refused(&plan(dir.path(), "p1.yaml", "shop", "web", &nobody), "x");
    assert!(
        line.contains(&nobody) && line.contains("serve did not start and did nothing"),
        "{line}"
    );
    let web_page = not_etcd(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 22\r\nConnection: close\r\n\r\n<html>a web app</html>",
    );
    let line = refused(&plan(dir.path(), "p2.yaml", "shop", "web", &web_page), "x");
    assert!(
        line.contains(&web_page) && line.contains("serve did not start and did nothing"),
        "{line}"
    );
    let not_found = not_etcd("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let line = refused(&plan(dir.path(), "p3.yaml", "shop", "web", &not_found), "x");
    assert!(
        line.contains(&not_found) && line.contains("serve did not start and did nothing"),
        "{line}"
    );
    untouched(&dir.path().join("repo"));
}

#[test]
fn a_second_plan_of_the_same_name_on_one_etcd_is_refused_and_the_first_goes_on() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    common::ok(dir.path().join("repo").to_str().unwrap(), &["repo", "init"]);
    let first = plan(dir.path(), "first.yaml", "shop", "web", &etcd.url);
    let (mut running, log) = leading(&first, Duration::from_secs(30));
    let other = plan(dir.path(), "other.yaml", "shop", "db", &etcd.url);
    let line = refused(&other, "two");
    assert!(
        line.contains("another plan named shop runs on this etcd (instance one")
            && line.contains("serve did not start"),
        "{line}"
    );
    // The same plan under a name already running is refused too.
    let line = refused(&first, "one");
    assert!(line.contains("a serve instance named one already runs"), "{line}");
    // The first instance goes on leading, and nothing of the refused ones is in etcd.
    std::thread::sleep(Duration::from_secs(1));
    assert!(running.try_wait().unwrap().is_none(), "{}", log.lock().unwrap());
    let check = Command::new(common::bin())
        .args(["plan", "check"])
        .arg(&first)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env_remove("LIFEBOAT_REPO")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    let coord = out.lines().find(|l| l.contains("coordination")).unwrap_or_default();
    assert!(
        coord.contains("one leads (term") && coord.contains("1 of 1 instances run: one;"),
        "{out}"
    );
    let _ = running.kill();
    let _ = running.wait();
}

/// `serve` of `plan` as instance `one`, once it leads (within `within`), with its stderr.
fn leading(plan: &Path, within: Duration) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = serve(plan, "one")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = common::stderr_log(&mut child);
    let start = Instant::now();
    while !log.lock().unwrap().contains("leading (term") {
        assert!(
            start.elapsed() < within,
            "not leading within {within:?}: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, log)
}

/// `lifeboat ARGS` as an operator runs it by hand beside the plan's serve instances.
fn by_hand(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env("USER", "ops")
        .env_remove("LIFEBOAT_REPO")
        .output()
        .unwrap()
}

#[test]
fn commands_by_hand_are_refused_while_a_serve_instance_leads_and_lead_when_none_does() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    common::ok(repo.to_str().unwrap(), &["repo", "init"]);
    let p = plan(dir.path(), "plan.yaml", "shop", "web", &etcd.url);
    let ps = p.to_str().unwrap();
    let (mut running, log) = leading(&p, Duration::from_secs(30));
    // Every command that acts is refused in one line naming the leader; nothing is acted on.
    for args in [
        vec!["failover", ps],
        vec!["failback", ps],
        vec!["drill", ps],
        vec!["backup", "--plan", ps],
        vec!["sync", "--once", ps],
    ] {
        let o = by_hand(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, not:\n{err}");
        assert!(
            lines[0].contains("one leads plan shop (term") && lines[0].contains("nothing was done here"),
            "{args:?}: {}",
            lines[0]
        );
    }
    // Acting without the coordination is only for an etcd that does not answer.
    let o = by_hand(&["failover", "--without-coordination", ps]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("answers (one (term") && err.contains("--without-coordination is only for"),
        "{err}"
    );
    // A long-running sync would hold the leadership from serve.
    let o = by_hand(&["sync", ps]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("runs the sync rounds"),
        "{o:?}"
    );
    let listing = || {
        let mut all: Vec<String> = walk(&repo.join("dr"));
        all.retain(|f| !f.contains("/backups/")); // the leader's own attempts at its schedule
        all
    };
    assert_eq!(listing(), Vec::<String>::new(), "no journal, no state");
    assert!(running.try_wait().unwrap().is_none(), "{}", log.lock().unwrap());
    // SIGTERM: the instance resigns. A command now leads while it runs (its backup fails on the
    // engine that does not exist), and the instance that starts after it leads at once.
    let pid = rustix::process::Pid::from_raw(running.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let _ = running.wait();
    let o = by_hand(&["backup", "--plan", ps]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("operator ops on ") && err.contains("leads plan shop while this command runs"),
        "{err}"
    );
    assert!(
        err.contains("web: FAILED on a") || String::from_utf8_lossy(&o.stdout).contains("FAILED on a"),
        "{o:?}"
    );
    // Within 3 s: the command's lease was not left behind for its TTL.
    let (mut again, _) = leading(&p, Duration::from_secs(3));
    let _ = again.kill();
    let _ = again.wait();
    // No etcd answers: a command cannot lead, and may act only when told to.
    drop(etcd);
    let o = by_hand(&["backup", "--plan", ps]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no etcd endpoint answers") && err.contains("--without-coordination"),
        "{err}"
    );
    let o = by_hand(&["backup", "--plan", ps, "--without-coordination"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("acting on plan shop without coordination"), "{err}");
}

/// Every file under `dir`, by path.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
