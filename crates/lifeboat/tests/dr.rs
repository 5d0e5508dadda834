//! End-to-end tests of DR plans on two real Docker lab sites with the lab's BIND 9 (`scripts/test.sh`
//! starts them with `lab/lab up --docker 2 --kube 2 --dns`): watch and failover after `lab/lab kill a`,
//! failback, resume after `kill -9` at every step, the witness under `lab/lab partition a`, and
//! drills; and one app on the two Kubernetes sites, through backup, sync, failover, failback and a
//! drill. The tests run one at a time (they take sites down); each owns its app's objects (names
//! starting with its prefix), its DNS name and its repository.
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lab::{docker_sites, http_get, kube_sites, point, resolve, wait_for, KubeSite, Site};
use common::PASSWORD;

static SERIAL: Mutex<()> = Mutex::new(());

fn lab() -> PathBuf {
    lifeboat_lab_support::script()
}

fn lab_var(name: &str) -> String {
    lifeboat_lab_support::var(name)
        .unwrap_or_else(|| panic!("lab/lab env has no {name}: start the lab with `lab/lab up --docker 2 --dns`"))
}

/// Brings every site back after `lab kill` (with Kubernetes too when the lab runs it).
fn revive() {
    common::lab::lab_up(&["--docker", "2", "--dns"]);
}

/// One test's app: a web server with a data volume (items via CGI) and optionally PostgreSQL.
/// Its objects are removed from every site when it is dropped, also when the test fails.
struct App {
    name: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    plan: PathBuf,
    sites: Vec<Site>,
}

impl Drop for App {
    fn drop(&mut self) {
        for s in &self.sites {
            s.cleanup(&format!("{}-", self.name));
        }
    }
}

impl App {
    fn new(sites: &[Site], name: &'static str, port: u16, db_port: Option<u16>, extra: &str) -> App {
        for s in sites {
            s.cleanup(&format!("{name}-"));
        }
        let a = &sites[0];
        let vol = format!("{name}-www");
        a.docker(&["volume", "create", &vol]);
        a.docker(&[
            "run", "--rm", "-v", &format!("{vol}:/www"), "lifeboat-lab/web:1", "sh", "-c",
            "mkdir -p /www/cgi-bin /www/data && echo ok > /www/healthz && printf 'widget\\n' > /www/data/items \
             && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\ncat /www/data/items\\n' > /www/cgi-bin/items \
             && printf '#!/bin/sh\\necho \"$QUERY_STRING\" >> /www/data/items\\necho Content-Type: text/plain\\necho\\necho ok\\n' > /www/cgi-bin/add \
             && chmod 755 /www/cgi-bin/items /www/cgi-bin/add",
        ]);
        a.docker(&[
            "run",
            "-d",
            "--name",
            &format!("{name}-web"),
            "--label",
            &format!("app={name}"),
            "-p",
            &format!("{port}:8080"),
            "-v",
            &format!("{vol}:/www"),
            "lifeboat-lab/web:1",
        ]);
        let mut probes = format!("      - http: {{url: \"http://{{site}}:{port}/healthz\"}}\n        interval: 1s\n        timeout: 1s\n        failure_threshold: 3\n");
        if let Some(dp) = db_port {
            a.docker(&[
                "run",
                "-d",
                "--name",
                &format!("{name}-db"),
                "--label",
                &format!("app={name}"),
                "-p",
                &format!("{dp}:5432"),
                "-v",
                &format!("{name}-pgdata:/var/lib/postgresql/data"),
                "lifeboat-lab/postgres:15",
            ]);
            wait_for("postgres", Duration::from_secs(60), || {
                a.docker_try(&[
                    "exec",
                    &format!("{name}-db"),
                    "psql",
                    "-U",
                    "postgres",
                    "-c",
                    "select 1",
                ])
                .0
                .then_some(())
            });
            probes += &format!("      - tcp: {{address: \"{{site}}:{dp}\"}}\n");
        }
        wait_for("the web app on a", Duration::from_secs(30), || {
            http_get(&a.addr, port, "/healthz")
        });
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        common::ok(repo.to_str().unwrap(), &["repo", "init"]);
        let b = &sites[1];
        let plan = dir.path().join("plan.yaml");
        std::fs::write(
            &plan,
            format!(
                "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: {name}}}\nrepository: {repo}\n{extra}sites:\n  \
                 a: {{docker: {{host: \"{ah}\", address: {aa}}}}}\n  b: {{docker: {{host: \"{bh}\", address: {ba}}}}}\napps:\n  \
                 - name: {name}\n    primary: a\n    standby: b\n    standby_mode: hot\n    select: {{labels: {{app: {name}}}}}\n    \
                 objectives: {{rto: 60s, rpo: 5m}}\n    health:\n{probes}    traffic:\n      dns: {{server: \"127.0.0.1:5353\", \
                 zone: lab.test., name: {name}, ttl: 5, tsig_key: {key}, primary: {aa}, standby: {ba}}}\n    verify:\n      \
                 - http: {{url: \"http://{{site}}:{port}/cgi-bin/items\", expect_body_contains: widget}}\n",
                repo = repo.display(),
                ah = a.docker_host,
                aa = a.addr,
                bh = b.docker_host,
                ba = b.addr,
                key = lab_var("LAB_DNS_KEY"),
            ),
        )
        .unwrap();
        point(name, &a.addr, &lab_var("LAB_DNS_KEY"));
        App {
            name,
            port,
            dir,
            plan,
            sites: sites.to_vec(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(common::bin());
        c.args(args).arg(&self.plan);
        c.env("LIFEBOAT_PASSWORD", PASSWORD).env_remove("LIFEBOAT_REPO");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().unwrap();
        assert!(
            o.status.success(),
            "lifeboat {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.cmd(&a).output().unwrap();
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stderr)))
    }

    /// The line of `plan check --json` named `check`.
    fn check_line(&self, check: &str) -> serde_json::Value {
        let all = self.json(&["plan", "check"]);
        all["checks"]
            .as_array()
            .and_then(|lines| lines.iter().find(|l| l["check"] == check).cloned())
            .unwrap_or_else(|| panic!("no {check} line: {all}"))
    }

    fn items(&self, site: &Site) -> Option<String> {
        http_get(&site.addr, self.port, "/cgi-bin/items")
    }

    fn add(&self, site: &Site, item: &str) {
        http_get(&site.addr, self.port, &format!("/cgi-bin/add?{item}")).expect("add an item");
    }

    /// The rows of table `t`. A database just started by a failover accepts connections (its
    /// TCP probe passes) while it still replays its log and answers "starting up": waited for.
    fn rows(&self, site: &Site) -> String {
        let db = format!("{}-db", self.name);
        let q = [
            "exec",
            &db,
            "psql",
            "-U",
            "postgres",
            "-qAtc",
            "select string_agg(v, ',' order by v) from t",
        ];
        wait_for("the database to accept queries", Duration::from_secs(60), || {
            let (ok, out, err) = site.docker_try(&q);
            match ok {
                true => Some(out.trim().to_string()),
                // "starting up", or (recovery still replaying under load) "not yet accepting connections".
                false if err.contains("starting up") || err.contains("not yet accepting connections") => None,
                false => panic!("{q:?} on {} failed: {err}", site.name),
            }
        })
    }

    fn psql(&self, site: &Site, sql: &str) {
        site.docker(&[
            "exec",
            &format!("{}-db", self.name),
            "psql",
            "-U",
            "postgres",
            "-qc",
            sql,
        ]);
    }

    fn repo(&self) -> String {
        self.dir.path().join("repo").display().to_string()
    }

    /// Snapshots in the repository tagged `tag`.
    fn snapshots_tagged(&self, tag: &str) -> usize {
        let v = common::json(&self.repo(), &["snapshots"]);
        v.as_array()
            .or_else(|| v["snapshots"].as_array())
            .unwrap()
            .iter()
            .filter(|s| {
                s["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x.as_str().is_some_and(|x| x.starts_with(tag))))
            })
            .count()
    }
}

/// Reads a child's stderr lines into a shared buffer.
fn collect(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut g = b.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    buf
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// `lifeboat watch --witness` for `app`, run inside `site`'s network namespace (a partition between
/// this host and the site does not hide the site from it); it reports through the repository.
fn witness(app: &App, site: &Site) -> (Child, Arc<Mutex<String>>) {
    let mut w = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/lifeboat-{}", site.name))
        .arg(common::bin())
        .args(["watch", "--witness"])
        .arg(&app.plan)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env_remove("LIFEBOAT_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut w);
    (w, log)
}

/// The pid file of a site's dockerd (`lab/lab` keeps it next to the socket).
/// A container outside the app with restart policy `always`: it shows that an engine's restart
/// does restart such containers.
fn sentinel(site: &Site, name: &str) {
    let id = site.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--restart",
        "always",
        "lifeboat-lab/web:1",
        "sleep",
        "3600",
    ]);
    assert!(!id.is_empty());
}

/// The site's host "reboots": every daemon and container dies, then the engine starts again and
/// restarts its `always` containers (the `sentinel` among them).
fn reboot(site: &Site, sentinel: &str) {
    Command::new(lab()).args(["kill", &site.name]).status().unwrap();
    revive();
    let running = || site.docker(&["inspect", "-f", "{{.State.Running}}", sentinel]) == "true";
    wait_for(
        "the engine to restart its always containers",
        Duration::from_secs(60),
        || running().then_some(()),
    );
    std::thread::sleep(Duration::from_secs(3));
}

fn dockerd_pid(site: &Site) -> String {
    let sock = PathBuf::from(site.docker_host.trim_start_matches("unix://"));
    std::fs::read_to_string(sock.parent().unwrap().join("docker.pid"))
        .unwrap()
        .trim()
        .to_string()
}

/// Probes the app's health URL on two sites every 200 ms until stopped; counts the rounds in
/// which both answered (two active sites) and the rounds in which each did.
struct BothProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(usize, usize, usize)>,
}

impl BothProbe {
    fn start(a: &Site, b: &Site, port: u16) -> BothProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sa, sb, st) = (a.addr.clone(), b.addr.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let (mut both, mut on_a, mut on_b) = (0, 0, 0);
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                let ua = http_get(&sa, port, "/healthz").is_some();
                let ub = http_get(&sb, port, "/healthz").is_some();
                both += usize::from(ua && ub);
                on_a += usize::from(ua);
                on_b += usize::from(ub);
                std::thread::sleep(Duration::from_millis(200));
            }
            (both, on_a, on_b)
        });
        BothProbe { stop, handle }
    }

    /// (rounds both answered, rounds a answered, rounds b answered).
    fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn output_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn watch_fails_over_once_when_the_primary_dies_and_failback_brings_the_standbys_writes_home() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    // A dead primary cannot be stopped by Lifeboat: the witness (in a's network) confirms it.
    let app = App::new(&sites, "dr1", 8181, Some(5441), "witness: {max_age: 10s}\n");
    app.psql(
        a,
        "create table t (v text primary key); insert into t values ('one'), ('two')",
    );
    let out = app.ok(&["backup", "--plan"]);
    assert!(out.contains("staged on b"), "{out}");
    let rows_at_backup = app.rows(a);
    // Written after the last recovery point: lost with site a.
    app.add(a, "after-backup");
    app.psql(a, "insert into t values ('after-backup')");

    let (wit, _wlog) = witness(&app, a);
    let mut watch = app
        .cmd(&["watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut watch);
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    let o = Command::new(lab()).args(["kill", "a"]).output().unwrap();
    assert!(o.status.success());
    let result = std::panic::catch_unwind(|| {
        wait_for("the watch to fail over", Duration::from_secs(180), || {
            let l = log.lock().unwrap();
            (l.contains("failed over") || l.contains("failover failed")).then_some(())
        });
        let switched = killed.elapsed();
        let l = log.lock().unwrap().clone();
        assert!(l.contains("dr1: failed over"), "{l}");
        assert!(l.contains("DOWN"), "{l}");
        for step in [
            "detected",
            "fence",
            "final-backup",
            "data",
            "start",
            "health",
            "traffic",
            "verify",
        ] {
            assert!(l.contains(step), "the timeline lacks {step}: {l}");
        }
        assert!(
            l.contains("cannot be reached") && l.contains("the witness confirms it is down"),
            "the dead primary is fenced on the witness's word: {l}"
        );
        eprintln!("failure to switched traffic: {switched:?}");
        // Exactly one failover: the watch stopped after it, and the journal holds one.
        assert_eq!(l.matches("failed over").count(), 1, "{l}");
        assert_eq!(resolve("dr1"), b.addr);
        let items = app.items(b).expect("the app answers on b");
        assert!(items.contains("widget") && !items.contains("after-backup"), "{items}");
        assert_eq!(
            app.rows(b),
            rows_at_backup,
            "b holds the data of the last recovery point"
        );
    });
    kill(watch);
    kill(wit);
    revive();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    // A second failover finds the app already on b.
    assert!(app.ok(&["failover"]).contains("already on b"));

    // Failback brings what was written on b home to a.
    app.add(b, "written-on-b");
    app.psql(b, "insert into t values ('written-on-b')");
    let fb = app.json(&["failback"]);
    assert_eq!(fb["operations"][0]["status"], "done", "{fb}");
    assert_eq!(fb["operations"][0]["rpo_seconds"], 0.0, "{fb}");
    assert_eq!(resolve("dr1"), a.addr);
    let items = app.items(a).expect("the app answers on a");
    assert!(items.contains("written-on-b"), "{items}");
    assert!(app.rows(a).contains("written-on-b"));
    assert!(app.items(b).is_none(), "b is stopped again after the failback");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn failover_killed_after_each_step_resumes_and_repeats_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr2", 8182, None, "");
    app.ok(&["backup", "--plan"]);
    app.add(a, "after-backup");
    for step in ["fence", "final-backup", "data", "start", "health", "traffic"] {
        let o = app
            .cmd(&["failover"])
            .env("LIFEBOAT_FAULT_KILL_AFTER", step)
            .output()
            .unwrap();
        assert_eq!(
            o.status.signal(),
            Some(9),
            "killed after {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        if step != "fence" {
            assert!(err.contains("resuming failover"), "{err}");
            assert!(err.contains("fence: finished before"), "{err}");
        }
    }
    let v = app.json(&["failover"]);
    let op = &v["operations"][0];
    assert_eq!(op["status"], "done", "{v}");
    assert_eq!(op["resumed"], 6, "{v}");
    for s in op["steps"].as_array().unwrap() {
        assert_eq!(s["attempts"], 1, "a finished step ran again: {s}");
    }
    assert_eq!(app.snapshots_tagged("op="), 1, "one final backup, not one per run");
    assert_eq!(resolve("dr2"), b.addr);
    let items = app.items(b).expect("the app answers on b");
    assert!(
        items.contains("after-backup"),
        "the final backup after fencing lost nothing: {items}"
    );
    assert!(app.items(a).is_none(), "a is fenced");
    app.ok(&["failback"]);
    assert_eq!(resolve("dr2"), a.addr);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_partitioned_primary_that_the_witness_still_sees_is_not_failed_over() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "dr3", 8183, None, "witness: {max_age: 10s}\n");
    app.ok(&["backup", "--plan"]);
    // The witness runs inside site a's network: a partition between it and this host does not
    // hide the primary from it. It reports through the repository.
    let mut witness = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/lifeboat-{}", a.name))
        .arg(common::bin())
        .args(["watch", "--witness"])
        .arg(&app.plan)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _wlog = collect(&mut witness);
    let mut watch = app
        .cmd(&["watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut watch);
    std::thread::sleep(Duration::from_secs(3));
    Command::new(lab()).args(["partition", &a.name]).status().unwrap();
    let seen = std::panic::catch_unwind(|| {
        wait_for("the watch to consult the witness", Duration::from_secs(60), || {
            log.lock()
                .unwrap()
                .contains("no failover: the witness still sees a healthy")
                .then_some(())
        });
        std::thread::sleep(Duration::from_secs(5));
    });
    Command::new(lab()).args(["heal", &a.name]).status().unwrap();
    kill(watch);
    kill(witness);
    let l = log.lock().unwrap().clone();
    if let Err(e) = seen {
        eprintln!("{l}");
        std::panic::resume_unwind(e);
    }
    assert!(!l.contains("failed over"), "{l}");
    assert_eq!(resolve("dr3"), a.addr, "traffic stays on a");
    wait_for("the app on a again", Duration::from_secs(30), || app.items(a));
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_drill_reports_in_four_formats_and_leaves_production_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr4", 8184, None, "");
    app.ok(&["backup", "--plan"]);
    let before_a = a.objects("dr4-");
    let before_b = b.objects("dr4-");
    let report = app.dir.path().join("reports/drill");
    let o = app
        .cmd(&["drill", "--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap()).unwrap();
    assert_eq!(json["passed"], true, "{json}");
    let d = &json["drills"][0];
    assert!(d["rto_seconds"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["rpo_seconds"].as_f64().unwrap() >= 0.0, "{d}");
    let md = std::fs::read_to_string(report.with_extension("md")).unwrap();
    assert!(md.contains("PASSED") && md.contains("| RTO |"), "{md}");
    let xml = std::fs::read_to_string(report.with_extension("xml")).unwrap();
    assert!(xml.contains("<testsuites") && xml.contains("failures=\"0\""), "{xml}");
    let html = std::fs::read_to_string(report.with_extension("html")).unwrap();
    assert!(html.contains("<svg") && html.contains("teardown"), "timeline chart");
    // Production untouched: DNS, the primary's objects, the standby's objects (the copy is gone).
    assert_eq!(resolve("dr4"), a.addr);
    assert_eq!(a.objects("dr4-"), before_a);
    assert_eq!(b.objects("dr4-"), before_b);
    assert!(b.objects("drill-").is_empty(), "{:?}", b.objects("drill-"));
    assert!(app.items(a).is_some());
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn sync_brings_the_primarys_changed_and_new_workloads_to_the_hot_standby_without_starting_them() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr5", 8185, None, "");
    app.ok(&["backup", "--plan"]);
    let s = app.json(&["sync", "--once"]);
    assert_eq!(
        s["apps"][0]["drift"],
        serde_json::json!([]),
        "in step after staging: {s}"
    );

    // The primary changes: the web container gets a new setting, and a new container joins.
    a.docker(&["rm", "-f", "dr5-web"]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "dr5-web",
        "--label",
        "app=dr5",
        "-e",
        "GREETING=hello",
        "-p",
        "8185:8080",
        "-v",
        "dr5-www:/www",
        "lifeboat-lab/web:1",
    ]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "dr5-worker",
        "--label",
        "app=dr5",
        "lifeboat-lab/web:1",
        "sleep",
        "3600",
    ]);
    // Written on the standby's volume only: sync must leave volume data alone.
    b.docker(&[
        "run",
        "--rm",
        "-v",
        "dr5-www:/www",
        "lifeboat-lab/web:1",
        "sh",
        "-c",
        "echo standby >> /www/data/items",
    ]);
    let data_b = || {
        b.docker(&[
            "run",
            "--rm",
            "-v",
            "dr5-www:/www",
            "lifeboat-lab/web:1",
            "cat",
            "/www/data/items",
        ])
    };
    let data_before = data_b();
    let objects_b = b.objects("dr5-");

    let dry = app.json(&["sync", "--once", "--dry-run"]);
    let drift = dry["apps"][0]["drift"].as_array().unwrap().clone();
    let find = |what: &str, object: &str| {
        drift
            .iter()
            .find(|d| d["drift"] == what && d["object"] == object)
            .cloned()
    };
    let web = find("differs", "containers/dr5-web").unwrap_or_else(|| panic!("{dry}"));
    assert!(web["fields"].to_string().contains("Env"), "{web}");
    assert!(find("missing", "containers/dr5-worker").is_some(), "{dry}");
    assert_eq!(b.objects("dr5-"), objects_b, "a dry run changes nothing");

    let done = app.json(&["sync", "--once"]);
    let corrected = done["apps"][0]["corrected"].to_string();
    assert!(
        corrected.contains("dr5-web") && corrected.contains("dr5-worker"),
        "{done}"
    );
    let env = b.docker(&["inspect", "-f", "{{json .Config.Env}} {{.State.Running}}", "dr5-web"]);
    assert!(
        env.contains("GREETING=hello") && env.trim_end().ends_with("false"),
        "{env}"
    );
    let worker = b.docker(&["inspect", "-f", "{{.State.Running}}", "dr5-worker"]);
    assert_eq!(worker.trim(), "false", "a hot standby runs nothing");
    assert_eq!(data_b(), data_before, "volume data on the standby untouched");

    // In step now: nothing more to do, and the preflight agrees.
    let again = app.json(&["sync", "--once"]);
    assert_eq!(again["apps"][0]["drift"], serde_json::json!([]), "{again}");
    let line = app.check_line("drift");
    assert_eq!(line["status"], "ok", "{line}");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn plan_hooks_run_around_backups_and_after_a_drill_starts_the_copy_and_a_failing_pre_hook_stops_the_backup() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr6", 8186, None, "");
    let hooks = |pre: &str| {
        format!(
            "    hooks:\n      pre_backup: [{{exec: {{container: dr6-web, command: [sh, -c, '{pre}']}}}}]\n      \
             post_backup: [{{exec: {{container: dr6-web, command: [sh, -c, 'rm -f /www/data/dump; echo thawed > /www/thawed']}}}}]\n      \
             post_restore: [{{exec: {{container: dr6-web, command: [sh, -c, 'echo from-hook >> /www/data/items']}}}}]\n"
        )
    };
    let base = std::fs::read_to_string(&app.plan).unwrap();
    std::fs::write(&app.plan, base.clone() + &hooks("echo dumped > /www/data/dump")).unwrap();
    let out = app.ok(&["backup", "--plan"]);
    assert!(
        out.contains("pre_backup hook in dr6-web: ok") && out.contains("post_backup hook in dr6-web: ok"),
        "{out}"
    );
    let on = |s: &Site, cmd: &str| {
        s.docker(&[
            "run",
            "--rm",
            "-v",
            "dr6-www:/www",
            "lifeboat-lab/web:1",
            "sh",
            "-c",
            cmd,
        ])
    };
    // The backup saw what the pre hook wrote (staged on b), the post hook removed it on a.
    assert_eq!(on(b, "cat /www/data/dump").trim(), "dumped");
    assert_eq!(on(a, "ls /www/data/dump 2>/dev/null; cat /www/thawed").trim(), "thawed");

    // The drill runs the post_restore hook in its own copy (the prefix is added to the name).
    let report = app.dir.path().join("drill");
    let o = app
        .cmd(&["drill", "--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap()).unwrap();
    let steps = json["drills"][0]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"));
    let hook = steps
        .iter()
        .find(|s| s["name"] == "hook 1")
        .unwrap_or_else(|| panic!("{json}"));
    assert!(
        hook["detail"].as_str().unwrap().contains("post_restore hook in drill-"),
        "{hook}"
    );
    assert!(!app.items(a).unwrap().contains("from-hook"), "production untouched");

    // A failing pre hook: no snapshot, an error naming the hook, and the post hook still ran.
    std::fs::write(&app.plan, base + &hooks("echo frozen-fails >&2; exit 3")).unwrap();
    on(a, "rm /www/thawed");
    let before = app.snapshots_tagged("app=dr6");
    let o = app.cmd(&["backup", "--plan"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("pre_backup hook in container dr6-web")
            && text.contains("exit code 3")
            && text.contains("frozen-fails"),
        "{text}"
    );
    assert_eq!(app.snapshots_tagged("app=dr6"), before);
    assert_eq!(on(a, "cat /www/thawed").trim(), "thawed");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn serve_backs_up_on_the_plans_schedule_and_keeps_what_the_plan_says() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let app = App::new(&sites, "dr7", 8187, None, "");
    let base = std::fs::read_to_string(&app.plan).unwrap();
    std::fs::write(&app.plan, base + "    backup: {every: 4s, keep: {last: 2}}\n").unwrap();
    let mut serve = app
        .cmd(&["serve", "--no-watch", "--sync-every", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut serve);
    let snapshots = || log.lock().unwrap().matches(": snapshot ").count();
    wait_for("four scheduled backups", Duration::from_secs(60), || {
        (snapshots() >= 4).then_some(())
    });
    // A service manager's stop: serve ends by itself, with success, once a backup under way is done.
    let pid = rustix::process::Pid::from_raw(serve.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = wait_for("serve to end after SIGTERM", Duration::from_secs(120), || {
        serve.try_wait().unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "serve ended with {status} after SIGTERM\n{log}");
    assert!(log.contains("stopping: no new rounds"), "{log}");
    assert!(
        log.contains("backup every 4s, next in 0ns"),
        "never backed up: due at once\n{log}"
    );
    assert!(log.contains("retention removed"), "{log}");
    assert!(!log.contains("FAILED"), "{log}");
    // keep: {last: 2}: two snapshots left, the newest of them staged on the hot standby.
    assert_eq!(app.snapshots_tagged("app=dr7"), 2, "{log}");
    let rpo = app.check_line("recovery point");
    assert_eq!(rpo["status"], "ok", "{rpo}");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn flapping_health_below_the_threshold_never_fails_over_and_a_sustained_failure_fails_over_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    // Probes every 1 s, failure_threshold 3 (App::new's plan).
    let app = App::new(&sites, "dr8", 8188, None, "");
    app.ok(&["backup", "--plan"]);
    let mut watch = app
        .cmd(&["watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut watch);
    std::thread::sleep(Duration::from_secs(3));
    // Unhealthy for 1 s out of every 3, eight times: at most 2 failed probes in a row.
    a.docker(&[
        "exec",
        "dr8-web",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do rm -f /www/healthz; sleep 1; echo ok > /www/healthz; sleep 2; done",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    let flapping = log.lock().unwrap().clone();
    let result = std::panic::catch_unwind(|| {
        assert!(
            flapping.contains("dr8: probe failed (1 in a row)"),
            "the flapping was seen: {flapping}"
        );
        assert!(
            !flapping.contains("(3 in a row)") && !flapping.contains("DOWN"),
            "{flapping}"
        );
        assert!(!flapping.contains("failed over"), "{flapping}");
        assert_eq!(resolve("dr8"), a.addr);
        // Now it stays down: exactly one failover.
        a.docker(&["stop", "-t", "1", "dr8-web"]);
        wait_for("the watch to fail over", Duration::from_secs(120), || {
            let l = log.lock().unwrap();
            (l.contains("failed over") || l.contains("failover failed")).then_some(())
        });
        std::thread::sleep(Duration::from_secs(3));
        let l = log.lock().unwrap().clone();
        assert_eq!(l.matches("dr8: failed over").count(), 1, "{l}");
        assert_eq!(l.matches("DOWN").count(), 1, "{l}");
        assert_eq!(resolve("dr8"), b.addr);
        assert!(app.items(b).is_some_and(|i| i.contains("widget")));
    });
    kill(watch);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn sync_fences_again_a_primary_that_runs_after_a_failover() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr9", 8189, None, "");
    app.ok(&["backup", "--plan"]);
    let f = app.json(&["failover"]);
    assert_eq!(f["operations"][0]["status"], "done", "{f}");
    // The old primary comes back to life (as an engine with restart policies would do it).
    a.docker(&["start", "dr9-web"]);
    wait_for("the old primary to answer", Duration::from_secs(30), || app.items(a));
    let dry = app.json(&["sync", "--once", "--dry-run"]);
    let drift = dry["apps"][0]["drift"].to_string();
    assert!(drift.contains("\"running\"") && drift.contains("dr9-web"), "{dry}");
    assert!(app.items(a).is_some(), "a dry run stops nothing");
    let s = app.json(&["sync", "--once"]);
    assert!(s["apps"][0]["corrected"].to_string().contains("fenced again"), "{s}");
    let running = a.docker(&["inspect", "-f", "{{.State.Running}}", "dr9-web"]);
    assert_eq!(running.trim(), "false");
    assert!(
        app.items(b).is_some_and(|i| i.contains("widget")),
        "the active side still serves"
    );
    assert_eq!(resolve("dr9"), b.addr);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_primary_whose_engine_hangs_is_not_recorded_as_fenced() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr10", 8190, None, "");
    app.ok(&["backup", "--plan"]);
    let probe = BothProbe::start(a, b, app.port);
    // dockerd hangs; the app keeps serving through containerd's shims.
    let pid = dockerd_pid(a);
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let hung = std::panic::catch_unwind(|| {
        let o = app.cmd(&["failover"]).output().unwrap();
        let text = output_text(&o);
        assert!(!o.status.success(), "{text}");
        assert!(
            text.contains("a is not fenced")
                && text.contains("--fenced-by-hand a")
                && text.contains("Nothing was started on b"),
            "{text}"
        );
        assert!(!text.contains("recorded as fenced"), "{text}");
        assert!(app.items(a).is_some(), "a still serves");
        assert!(app.items(b).is_none(), "b was not started");
        // Nothing is left open: a second try is a new attempt, not a resume.
        let again = output_text(&app.cmd(&["failover"]).output().unwrap());
        assert!(!again.contains("resuming"), "{again}");
    });
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    if let Err(e) = hung {
        probe.finish();
        std::panic::resume_unwind(e);
    }
    // Once the engine answers, the failover fences a itself and goes on.
    let v = app.json(&["failover"]);
    let op = &v["operations"][0];
    assert_eq!(op["status"], "done", "{v}");
    let fence = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "fence")
        .unwrap();
    assert!(fence["detail"].as_str().unwrap().starts_with("a fenced"), "{fence}");
    wait_for("the app on b", Duration::from_secs(30), || app.items(b));
    std::thread::sleep(Duration::from_secs(2));
    let (both, on_a, on_b) = probe.finish();
    assert_eq!(both, 0, "never two active sites (a answered {on_a} times, b {on_b})");
    assert!(on_a > 0 && on_b > 0, "both were seen: a {on_a}, b {on_b}");
    assert!(app.items(a).is_none());
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn failover_with_fenced_by_hand_proceeds_and_journals_the_operator() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr11", 8191, None, "");
    app.ok(&["backup", "--plan"]);
    // Bad input changes nothing.
    let o = app.cmd(&["failover", "--fenced-by-hand", "c"]).output().unwrap();
    assert!(
        !o.status.success() && output_text(&o).contains("has no site \"c\""),
        "{}",
        output_text(&o)
    );
    let o = app.cmd(&["failover", "--fenced-by-hand", "b"]).output().unwrap();
    assert!(
        !o.status.success() && output_text(&o).contains("name the site being left"),
        "{}",
        output_text(&o)
    );
    assert!(app.items(a).is_some() && app.items(b).is_none());

    Command::new(lab()).args(["kill", "a"]).status().unwrap();
    let result = std::panic::catch_unwind(|| {
        // Dead, but nobody confirms it: no failover.
        let o = app.cmd(&["failover"]).output().unwrap();
        let text = output_text(&o);
        assert!(!o.status.success(), "{text}");
        assert!(
            text.contains("cannot be reached")
                && text.contains("the plan has no witness")
                && text.contains("--fenced-by-hand a"),
            "{text}"
        );
        assert!(app.items(b).is_none(), "nothing started on b");
        // The operator made sure a is off.
        let o = app
            .cmd(&["--json", "failover", "--fenced-by-hand", "a"])
            .env_remove("SUDO_USER")
            .env("USER", "dr-operator")
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&o)));
        let op = &v["operations"][0];
        assert_eq!(op["status"], "done", "{v}");
        let fence = op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "fence")
            .unwrap();
        let detail = fence["detail"].as_str().unwrap();
        assert!(
            detail.contains("operator dr-operator on ") && detail.contains("--fenced-by-hand a"),
            "{fence}"
        );
        let fb = op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "final-backup")
            .unwrap();
        assert_eq!(fb["outcome"], "skipped", "{fb}");
        assert_eq!(resolve("dr11"), b.addr);
        assert!(app.items(b).is_some_and(|i| i.contains("widget")));
    });
    revive();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_fenced_primary_with_restart_always_stays_stopped_after_its_engine_restarts() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dr12", 8192, None, "");
    let policy = |s: &Site, c: &str| s.docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", c]);
    let running = |s: &Site, c: &str| s.docker(&["inspect", "-f", "{{.State.Running}}", c]) == "true";
    a.docker(&["update", "--restart", "always", "dr12-web"]);
    // Not part of the app: it shows that the engine's restart does restart `always` containers.
    sentinel(a, "dr12-other");
    app.ok(&["backup", "--plan"]);
    let out = app.ok(&["failover"]);
    assert!(out.contains("restart policy always cleared"), "{out}");
    assert_eq!(policy(a, "dr12-web"), "no");
    assert_eq!(policy(a, "dr12-other"), "always", "other containers are left alone");

    // a's host "reboots": every daemon and container dies, then the engine starts again.
    reboot(a, "dr12-other");
    assert!(!running(a, "dr12-web"), "the fenced container stayed stopped");
    assert!(app.items(a).is_none(), "a does not serve beside b");
    assert!(app.items(b).is_some_and(|i| i.contains("widget")));

    // Failback gives a its policy back and fences b the same way.
    let out = app.ok(&["failback"]);
    assert!(out.contains("restart policy always restored"), "{out}");
    assert_eq!(policy(a, "dr12-web"), "always");
    assert!(running(a, "dr12-web"));
    assert_eq!(
        policy(b, "dr12-web"),
        "no",
        "b cannot restart on its own after the failback"
    );
    assert_eq!(resolve("dr12"), a.addr);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn an_unreachable_standby_is_found_before_the_primary_is_fenced() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "dr13", 8193, None, "");
    app.ok(&["backup", "--plan"]);
    Command::new(lab()).args(["kill", "b"]).status().unwrap();
    let result = std::panic::catch_unwind(|| {
        for _ in 0..2 {
            let o = app.cmd(&["failover"]).output().unwrap();
            let text = output_text(&o);
            assert!(!o.status.success(), "{text}");
            assert!(
                text.contains("b, which is to take over, cannot be used") && text.contains("nothing was fenced"),
                "{text}"
            );
            assert!(!text.contains("resuming") && !text.contains("fence: started"), "{text}");
            assert_eq!(a.docker(&["inspect", "-f", "{{.State.Running}}", "dr13-web"]), "true");
            assert!(app.items(a).is_some(), "a still serves");
        }
        assert_eq!(resolve("dr13"), a.addr);
    });
    revive();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A web app on Kubernetes site a: a Deployment serving the files of its claim on a host port.
/// Its namespace is deleted from both sites when dropped (without waiting).
struct KubeApp {
    ns: &'static str,
    port: u16,
    /// Holds the plan and the repository.
    _dir: tempfile::TempDir,
    plan: PathBuf,
    sites: Vec<KubeSite>,
}

impl Drop for KubeApp {
    fn drop(&mut self) {
        for s in &self.sites {
            for ns in s.kubectl(&["get", "namespaces", "-o", "name"]).lines() {
                let ns = ns.trim_start_matches("namespace/");
                if ns == self.ns || ns.starts_with("drill-") && ns.ends_with(self.ns) {
                    let _ = s.kubectl_try(&["delete", "namespace", ns, "--wait=false"], None);
                }
            }
        }
    }
}

impl KubeApp {
    fn new(sites: Vec<KubeSite>, ns: &'static str, port: u16) -> KubeApp {
        for s in &sites {
            s.drop_namespace(ns);
        }
        let (a, b) = (&sites[0], &sites[1]);
        a.apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: www, namespace: {ns}, labels: {{app: {ns}}}}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 10Mi}}}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: conf, namespace: {ns}, labels: {{app: {ns}}}}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}, labels: {{app: {ns}}}}}
spec: {{selector: {{app: {ns}}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}, labels: {{app: {ns}}}}}
spec:
  replicas: 1
  strategy: {{type: Recreate}}
  selector: {{matchLabels: {{app: {ns}}}}}
  template:
    metadata: {{labels: {{app: {ns}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: lifeboat-lab/web:1
          imagePullPolicy: Never
          command: [sh, -c, "[ -f /www/healthz ] || {{ echo ok > /www/healthz; echo widget > /www/items; echo old > /www/old; }}; exec httpd -f -p 8080 -h /www"]
          ports: [{{containerPort: 8080, hostPort: {port}}}]
          resources: {{requests: {{cpu: 100m, memory: 32Mi}}}}
          volumeMounts: [{{name: www, mountPath: /www}}]
      volumes: [{{name: www, persistentVolumeClaim: {{claimName: www}}}}]
"#
        ));
        wait_for("the web app on a", Duration::from_secs(90), || {
            http_get(&a.addr, port, "/items")
        });
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        common::ok(repo.to_str().unwrap(), &["repo", "init"]);
        let site = |s: &KubeSite| {
            format!(
                "{{kubernetes: {{kubeconfig: {}, context: {}, address: {}, helper_image: \"lifeboat-lab/web:1\"}}}}",
                s.kubeconfig, s.context, s.addr
            )
        };
        let plan = dir.path().join("plan.yaml");
        std::fs::write(
            &plan,
            format!(
                "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: {ns}}}\nrepository: {repo}\nsites:\n  a: {sa}\n  b: {sb}\n\
                 apps:\n  - name: {ns}\n    primary: a\n    standby: b\n    standby_mode: hot\n    \
                 select: {{namespaces: [{ns}], labels: {{app: {ns}}}}}\n    objectives: {{rto: 60s, rpo: 5m}}\n    health:\n      \
                 - http: {{url: \"http://{{site}}:{port}/healthz\"}}\n        interval: 1s\n        failure_threshold: 3\n    \
                 traffic:\n      dns: {{server: \"127.0.0.1:5353\", zone: lab.test., name: {ns}, ttl: 5, tsig_key: {key}, \
                 primary: {aa}, standby: {ba}}}\n    verify:\n      - http: {{url: \"http://{{site}}:{port}/items\", \
                 expect_body_contains: widget}}\n",
                repo = repo.display(),
                sa = site(a),
                sb = site(b),
                key = lab_var("LAB_DNS_KEY"),
                aa = a.addr,
                ba = b.addr,
            ),
        )
        .unwrap();
        point(ns, &a.addr, &lab_var("LAB_DNS_KEY"));
        KubeApp {
            ns,
            port,
            _dir: dir,
            plan,
            sites,
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = Command::new(common::bin())
            .args(args)
            .arg(&self.plan)
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .env_remove("LIFEBOAT_REPO")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "lifeboat {args:?} failed: {out}");
        out
    }

    fn items(&self, s: &KubeSite) -> Option<String> {
        http_get(&s.addr, self.port, "/items")
    }

    fn add(&self, s: &KubeSite, item: &str) {
        s.kubectl(&[
            "-n",
            self.ns,
            "exec",
            "deploy/web",
            "--",
            "sh",
            "-c",
            &format!("echo {item} >> /www/items"),
        ]);
    }

    /// The web Deployment's replicas and recorded count on `s`.
    fn replicas(&self, s: &KubeSite) -> (i64, Option<String>) {
        let d = s.get_json("deployment", Some(self.ns), "web").expect("the Deployment");
        (
            d["spec"]["replicas"].as_i64().unwrap(),
            d["metadata"]["annotations"]["lifeboat.io/replicas"]
                .as_str()
                .map(str::to_string),
        )
    }
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_kubernetes_app_fails_over_with_its_data_and_dns_and_back_and_drills_in_a_prefixed_namespace() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = KubeApp::new(kube_sites(2), "kdr-e2e", 18181);
    let (a, b) = (&app.sites[0], &app.sites[1]);

    // A hot standby: everything on b at zero replicas, the count recorded, the data staged.
    app.ok(&["backup", "--plan"]);
    assert_eq!(app.replicas(b), (0, Some("1".into())));
    assert!(b.get_json("pvc", Some(app.ns), "www").is_some());
    let check = app.ok(&["plan", "check"]);
    assert!(check.contains("4 objects identical on b"), "{check}");
    // Drift is seen and corrected by sync.
    a.kubectl(&[
        "-n",
        app.ns,
        "patch",
        "configmap",
        "conf",
        "-p",
        r#"{"data":{"greeting":"hi"}}"#,
    ]);
    let sync = app.ok(&["sync", "--once"]);
    assert!(sync.contains("replaced ConfigMap/kdr-e2e/conf"), "{sync}");
    assert_eq!(
        b.get_json("configmap", Some(app.ns), "conf").unwrap()["data"]["greeting"],
        "hi"
    );
    assert_eq!(app.replicas(b).0, 0, "sync starts nothing");

    // Failover: written on a after the last backup, still there on b (final backup after fencing);
    // only what changed since the staging goes to b's claim, and what is gone on a goes there too.
    assert!(b.get_json("pvc", Some(app.ns), "www").is_some());
    app.add(a, "gizmo");
    a.kubectl(&[
        "-n",
        app.ns,
        "exec",
        "deploy/web",
        "--",
        "sh",
        "-c",
        "busybox rm /www/old",
    ]);
    let out = app.ok(&["failover"]);
    assert!(out.contains("RPO achieved: 0.00 s"), "{out}");
    assert!(out.contains("kdr-e2e/www: 13 bytes of changed data written"), "{out}");
    assert_eq!(resolve(app.ns), b.addr);
    let on_b = wait_for("the app on b", Duration::from_secs(30), || app.items(b));
    assert!(on_b.contains("widget") && on_b.contains("gizmo"), "{on_b}");
    assert_eq!(
        http_get(&b.addr, app.port, "/old"),
        None,
        "removed on a, so removed on b"
    );
    assert_eq!(app.replicas(a), (0, Some("1".into())), "a is fenced");
    let pods: serde_json::Value =
        serde_json::from_str(&a.kubectl(&["-n", app.ns, "get", "pods", "-o", "json"])).unwrap();
    let running = pods["items"].as_array().unwrap().iter().any(|p| {
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["state"]["running"].is_object()))
    });
    assert!(!running, "fencing waits until a's pods stopped: {pods}");
    assert_eq!(app.replicas(b), (1, None));

    // Failback brings what was written on b home.
    app.add(b, "sprocket");
    app.ok(&["failback"]);
    assert_eq!(resolve(app.ns), a.addr);
    let on_a = wait_for("the app on a", Duration::from_secs(30), || app.items(a));
    assert!(on_a.contains("gizmo") && on_a.contains("sprocket"), "{on_a}");
    assert_eq!(app.replicas(b).0, 0);

    // A drill recovers into drill-ID-kdr-e2e on b, checks it and removes it; production stays.
    let drill = app.ok(&["drill"]);
    assert!(drill.contains("drill-") && drill.contains("teardown"), "{drill}");
    assert_eq!(resolve(app.ns), a.addr);
    assert_eq!(app.replicas(a), (1, None));
    assert_eq!(app.replicas(b).0, 0);
    let left: Vec<String> = b
        .kubectl(&["get", "namespaces", "-o", "name"])
        .lines()
        .filter(|n| n.contains("drill-") && n.ends_with(app.ns))
        .filter(|n| {
            let ns = n.trim_start_matches("namespace/");
            b.get_json("namespace", None, ns)
                .is_some_and(|v| v["status"]["phase"] != "Terminating")
        })
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "drill namespaces not removed: {left:?}");
}

/// Regression (review finding 19): a delta stage trusted the journal's record of what the
/// standby's claim holds, so a claim changed by hand kept the change after a failover.
#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_hot_standby_claim_changed_by_hand_is_written_in_full_at_failover() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = KubeApp::new(kube_sites(2), "kst-hand", 18184);
    let (a, b) = (&app.sites[0], &app.sites[1]);
    app.ok(&["backup", "--plan"]);
    // Someone writes into b's staged claim while nothing of the app runs there.
    b.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: by-hand, namespace: {ns}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
    - name: hand
      image: lifeboat-lab/web:1
      imagePullPolicy: Never
      command: [sh, -c, "echo intruder > /www/intruder; echo tampered > /www/items"]
      volumeMounts: [{{name: www, mountPath: /www}}]
  volumes: [{{name: www, persistentVolumeClaim: {{claimName: www}}}}]
"#,
        ns = app.ns
    ));
    wait_for("the hand-made change on b", Duration::from_secs(90), || {
        let p = b.get_json("pod", Some(app.ns), "by-hand")?;
        (p["status"]["phase"] == "Succeeded").then_some(())
    });
    b.kubectl(&["-n", app.ns, "delete", "pod", "by-hand", "--wait=true"]);
    app.add(a, "gizmo");
    let out = app.ok(&["failover"]);
    assert!(
        out.contains("kst-hand/www: it held other files than the snapshot staged on it"),
        "{out}"
    );
    assert!(out.contains("bytes of data written in full"), "{out}");
    let on_b = wait_for("the app on b", Duration::from_secs(30), || app.items(b));
    assert!(
        on_b.contains("widget") && on_b.contains("gizmo") && !on_b.contains("tampered"),
        "{on_b}"
    );
    assert_eq!(
        http_get(&b.addr, app.port, "/intruder"),
        None,
        "the hand-made file is gone"
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn an_authentication_error_fails_the_fence_step() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = KubeApp::new(kube_sites(2), "kfence-auth", 18182);
    let (a, b) = (&app.sites[0], &app.sites[1]);
    app.ok(&["backup", "--plan"]);
    // Site a's credentials expire: a copy of its kubeconfig whose token is `invalid`.
    let kc: String = std::fs::read_to_string(&a.kubeconfig)
        .unwrap()
        .lines()
        .map(|l| match l.trim_start().strip_prefix("token:") {
            Some(_) => format!("{}token: invalid", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(kc.contains("token: invalid"), "the lab's kubeconfig has a token line");
    let expired = app.plan.parent().unwrap().join("a-expired.kubeconfig");
    std::fs::write(&expired, kc).unwrap();
    let plan = std::fs::read_to_string(&app.plan).unwrap();
    std::fs::write(&app.plan, plan.replace(&a.kubeconfig, expired.to_str().unwrap())).unwrap();

    let o = Command::new(common::bin())
        .arg("failover")
        .arg(&app.plan)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env_remove("LIFEBOAT_REPO")
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("a is not fenced") && text.contains("authentication failed") && text.contains("401"),
        "{text}"
    );
    assert!(
        !text.contains("recorded as fenced") && !text.contains("cannot be reached"),
        "{text}"
    );
    assert_eq!(app.replicas(a), (1, None), "a still runs the app");
    assert_eq!(app.replicas(b).0, 0, "nothing started on b");
    assert!(app.items(a).is_some());
    assert_eq!(resolve(app.ns), a.addr);
}

impl App {
    /// Ids of the snapshots carrying every one of `tags`, oldest first.
    fn snapshot_ids(&self, tags: &[&str]) -> Vec<String> {
        let v = common::json(&self.repo(), &["snapshots"]);
        let list = v.as_array().or_else(|| v["snapshots"].as_array()).unwrap().clone();
        list.iter()
            .filter(|s| {
                tags.iter().all(|t| {
                    s["tags"]
                        .as_array()
                        .is_some_and(|have| have.iter().any(|x| x.as_str() == Some(*t)))
                })
            })
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Everything a snapshot holds, restored to a directory: the text of every file.
    fn snapshot_text(&self, id: &str) -> String {
        let out = tempfile::tempdir().unwrap();
        common::ok(
            &self.repo(),
            &["restore", id, "--to", &format!("files:{}", out.path().display())],
        );
        let mut text = String::new();
        let mut stack = vec![out.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    stack.push(p);
                } else if md.is_file() {
                    text += &String::from_utf8_lossy(&std::fs::read(&p).unwrap());
                }
            }
        }
        text
    }

    /// Failover with `a` unreachable. A build where an unreachable primary needs the operator's
    /// word (`--fenced-by-hand`) gets it: this test is about what happens after.
    fn failover_with_a_down(&self) {
        let o = self.cmd(&["failover"]).output().unwrap();
        if o.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("--fenced-by-hand"), "failover failed: {err}");
        self.ok(&["failover", "--fenced-by-hand", "a"]);
    }

    /// The step `name` of the first operation in a `--json` result.
    fn step(v: &serde_json::Value, name: &str) -> serde_json::Value {
        v["operations"][0]["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no step {name}: {v}"))
    }
}

fn volume_ls(site: &Site, volume: &str, dir: &str) -> String {
    site.docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{volume}:/www"),
        "lifeboat-lab/web:1",
        "ls",
        "-a",
        dir,
    ])
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_restored_docker_volume_holds_exactly_the_snapshot() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dra", 8207, None, "");
    a.docker(&["exec", "dra-web", "sh", "-c", "echo private > /www/data/deleted-later"]);
    app.ok(&["backup", "--plan"]);
    assert!(volume_ls(b, "dra-www", "/www/data").contains("deleted-later"));
    a.docker(&["exec", "dra-web", "busybox", "rm", "/www/data/deleted-later"]);
    app.ok(&["backup", "--plan"]);
    let staged = volume_ls(b, "dra-www", "/www/data");
    assert!(
        !staged.contains("deleted-later"),
        "a deletion reaches the staged copy: {staged}"
    );
    assert!(staged.contains("items"), "{staged}");
    let top = volume_ls(b, "dra-www", "/www");
    assert!(!top.contains(".lifeboat"), "no staging leftovers: {top}");
    app.ok(&["failover"]);
    assert_eq!(
        http_get(&b.addr, 8207, "/data/deleted-later"),
        None,
        "the deleted file came back"
    );
    assert!(app.items(b).is_some_and(|i| i.contains("widget")));
    app.ok(&["failback"]);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_damaged_recovery_point_leaves_the_standbys_staged_copy_intact() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "drb", 8208, None, "");
    a.docker(&[
        "exec",
        "drb-web",
        "sh",
        "-c",
        "echo a > /www/data/a.txt && busybox head -c 8000000 /dev/urandom > /www/data/big && echo z > /www/data/z.txt",
    ]);
    app.ok(&["backup", "--plan"]);
    let sum = |s: &Site| {
        s.docker(&[
            "run",
            "--rm",
            "-v",
            "drb-www:/www",
            "lifeboat-lab/web:1",
            "busybox",
            "md5sum",
            "/www/data/big",
        ])
    };
    let staged = sum(b);
    // One bit of the largest pack (the big file's chunks) flipped.
    let mut packs: Vec<(u64, PathBuf)> = Vec::new();
    let mut stack = vec![PathBuf::from(app.repo()).join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                packs.push((std::fs::metadata(&p).unwrap().len(), p));
            }
        }
    }
    packs.sort();
    let (len, pack) = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[len as usize / 2] ^= 0x04;
    std::fs::write(&pack, bytes).unwrap();
    // The next backup deduplicates against the damaged chunk: staging it would stop half way.
    // (Another file changes: a change to the big one could drop the damaged chunk, its last.)
    a.docker(&["exec", "drb-web", "sh", "-c", "echo more >> /www/data/z.txt"]);
    let o = app.cmd(&["backup", "--plan"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("not staged on b") && out.contains("damaged"), "{out}");
    assert_eq!(sum(b), staged, "the staged copy is intact");
    let top = volume_ls(b, "drb-www", "/www");
    assert!(!top.contains(".lifeboat"), "{top}");
    // The failover finds the newest recovery point damaged and recovers from the staged one.
    let v = app.json(&["failover", "--no-final-backup"]);
    assert_eq!(v["operations"][0]["status"], "done", "{v}");
    let data = App::step(&v, "data");
    let detail = data["detail"].as_str().unwrap();
    assert!(
        detail.contains("damaged") && detail.contains("recovering from the one before it"),
        "{detail}"
    );
    assert!(detail.contains("already staged"), "{detail}");
    assert_eq!(sum(b), staged);
    assert!(app.items(b).is_some_and(|i| i.contains("widget")));
    assert!(v["operations"][0]["rpo_seconds"].as_f64().is_some(), "{v}");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn an_incomplete_final_backup_is_not_accepted_when_the_failover_resumes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "drc", 8209, None, "");
    // A second volume, bind-backed: it cannot be mounted once its source is gone.
    let src = app.dir.path().join("cache-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("file"), "precious").unwrap();
    a.docker(&[
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        &format!("device={}", src.display()),
        "drc-cache",
    ]);
    a.docker(&["rm", "-f", "drc-web"]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "drc-web",
        "--label",
        "app=drc",
        "-p",
        "8209:8080",
        "-v",
        "drc-www:/www",
        "-v",
        "drc-cache:/cache",
        "lifeboat-lab/web:1",
    ]);
    wait_for("the web app on a", Duration::from_secs(30), || app.items(a));
    app.ok(&["backup", "--plan"]);
    let complete = app.snapshot_ids(&["app=drc"]);
    assert_eq!(complete.len(), 1);
    std::fs::remove_dir_all(&src).unwrap();
    for attempt in 1..=2 {
        let o = app.cmd(&["failover"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "attempt {attempt}: {err}");
        assert!(
            err.contains("final-backup") && err.contains("incomplete"),
            "attempt {attempt}: {err}"
        );
        assert!(
            err.contains("not used as the recovery point"),
            "attempt {attempt}: {err}"
        );
        assert!(
            !err.contains("taken before an interruption"),
            "attempt {attempt}: {err}"
        );
        assert!(app.items(b).is_none(), "b must not start from an incomplete backup");
    }
    let incomplete = app.snapshot_ids(&["app=drc", "incomplete"]);
    assert!(!incomplete.is_empty(), "the incomplete final backups are marked");
    // With the source back, the operator recovers from the latest complete backup.
    std::fs::create_dir_all(&src).unwrap();
    let v = app.json(&["failover", "--no-final-backup"]);
    assert_eq!(v["operations"][0]["status"], "done", "{v}");
    let rp = v["operations"][0]["recovery_point"]["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        complete[0].starts_with(&rp) || rp.starts_with(&complete[0]),
        "recovered from {rp}, not the complete {}: {v}",
        complete[0]
    );
    app.ok(&["failback"]);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn failback_keeps_a_quarantine_snapshot_of_writes_only_the_old_primary_has() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "drd", 8194, None, "");
    app.ok(&["backup", "--plan"]);
    app.add(a, "only-on-a");
    let o = Command::new(lab()).args(["kill", "a"]).output().unwrap();
    assert!(o.status.success());
    let result = std::panic::catch_unwind(|| app.failover_with_a_down());
    revive();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let v = app.json(&["failback"]);
    assert_eq!(v["operations"][0]["status"], "done", "{v}");
    let q = App::step(&v, "quarantine");
    assert!(q["detail"].as_str().unwrap().contains("quarantine snapshot"), "{q}");
    let ids = app.snapshot_ids(&["quarantine", "app=drd", "site=a"]);
    assert_eq!(ids.len(), 1, "one quarantine snapshot of a");
    assert!(
        app.snapshot_text(&ids[0]).contains("only-on-a"),
        "the write only a had is kept"
    );
    // It is never a recovery point: a later failover recovers from an ordinary snapshot.
    let v = app.json(&["failover", "--no-final-backup"]);
    let rp = v["operations"][0]["recovery_point"]["snapshot"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!ids[0].starts_with(&rp) && !rp.starts_with(&ids[0]), "{v}");
    app.ok(&["failback"]);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn the_data_step_stops_the_target_before_writing_its_volumes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "dre", 8195, None, "");
    app.ok(&["backup", "--plan"]);
    app.ok(&["failover"]);
    // The old primary comes back running (a restart policy, a hand): both sites serve.
    a.docker(&["start", "dre-web"]);
    wait_for("the app on a again", Duration::from_secs(30), || app.items(a));
    app.add(a, "split-brain-write");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    std::thread::sleep(Duration::from_millis(1100));
    let since = now().to_string();
    let v = app.json(&["failback"]);
    assert_eq!(v["operations"][0]["status"], "done", "{v}");
    let data = App::step(&v, "data");
    let detail = data["detail"].as_str().unwrap();
    assert!(
        detail.contains("split brain") && detail.contains("quarantine snapshot"),
        "{detail}"
    );
    let ids = app.snapshot_ids(&["split-brain", "app=dre", "site=a"]);
    assert_eq!(ids.len(), 1, "{detail}");
    assert!(app.snapshot_text(&ids[0]).contains("split-brain-write"));
    // On a, the app's container died before any helper container touched its volume.
    let events = a.docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &(now() + 1).to_string(),
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}} helper={{index .Actor.Attributes \"io.lifeboat.helper\"}}",
    ]);
    let lines: Vec<&str> = events.lines().collect();
    let died = lines
        .iter()
        .position(|l| l.starts_with("die dre-web"))
        .unwrap_or_else(|| panic!("{events}"));
    let helper = lines
        .iter()
        .position(|l| l.starts_with("create ") && l.contains("helper=1"))
        .unwrap_or_else(|| panic!("{events}"));
    assert!(died < helper, "the volume was touched while the app ran: {events}");
}

/// The pods of `ns` on `s` (names).
fn pods_in(s: &KubeSite, ns: &str) -> Vec<String> {
    s.kubectl(&["-n", ns, "get", "pods", "-o", "name"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn staging_suspends_cronjobs_and_jobs_and_starts_no_pods() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = KubeApp::new(kube_sites(2), "kst-hold", 18182);
    let (a, b) = (&app.sites[0], &app.sites[1]);
    let ns = app.ns;
    // What runs without replicas: a CronJob (batch/v1beta1 on Kubernetes 1.20), a standalone Job,
    // a DaemonSet and a bare Pod, all the app's (its label).
    let pod = |extra: &str| {
        format!(
            "{{restartPolicy: {extra}, terminationGracePeriodSeconds: 1, containers: [{{name: c, image: lifeboat-lab/web:1, \
             imagePullPolicy: Never, command: [sleep, \"3600\"]}}]}}"
        )
    };
    a.apply(&format!(
        r#"
apiVersion: batch/v1beta1
kind: CronJob
metadata: {{name: tick, namespace: {ns}, labels: {{app: {ns}}}}}
spec:
  schedule: "*/1 * * * *"
  jobTemplate: {{spec: {{template: {{spec: {never}}}}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once, namespace: {ns}, labels: {{app: {ns}}}}}
spec: {{template: {{spec: {never}}}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}, labels: {{app: {ns}}}}}
spec:
  selector: {{matchLabels: {{app: {ns}, part: agent}}}}
  template:
    metadata: {{labels: {{app: {ns}, part: agent}}}}
    spec: {always}
---
apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: {ns}, labels: {{app: {ns}}}}}
spec: {never}
"#,
        never = pod("Never"),
        always = pod("Always"),
    ));
    // And a run of the CronJob (its Job and pod carry the job template's labels, not the app's:
    // the regression this waits for is one that kept running on the fenced primary).
    wait_for("the agent, solo and tick pods on a", Duration::from_secs(150), || {
        let p = pods_in(a, ns);
        (p.iter().any(|n| n.contains("agent-"))
            && p.iter().any(|n| n.ends_with("/solo"))
            && p.iter().any(|n| n.contains("/tick-")))
        .then_some(())
    });

    // Staged on b: everything is there, nothing runs.
    let out = app.ok(&["backup", "--plan"]);
    assert!(out.contains("held back until start"), "{out}");
    let cj = b
        .get_json("cronjob.v1beta1.batch", Some(ns), "tick")
        .expect("the CronJob on b");
    assert_eq!(cj["spec"]["suspend"], true, "{cj}");
    assert_eq!(cj["metadata"]["annotations"]["lifeboat.io/suspend"], "false");
    let ds = b.get_json("daemonset", Some(ns), "agent").expect("the DaemonSet on b");
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["lifeboat.io/held-back"], "no-node-has-this",
        "{ds}"
    );
    // Kubernetes 1.20 cannot suspend Jobs: the Job and the bare Pod wait for the start, kept
    // in Secrets of the namespace.
    assert!(
        b.get_json("job", Some(ns), "once").is_none(),
        "a Job was created on the standby"
    );
    assert!(
        b.get_json("pod", Some(ns), "solo").is_none(),
        "a bare Pod was created on the standby"
    );
    let held = b.kubectl(&[
        "-n",
        ns,
        "get",
        "secrets",
        "-l",
        "io.lifeboat.held-back=1",
        "-o",
        "name",
    ]);
    assert_eq!(held.lines().count(), 2, "{held}");
    // The DaemonSet controller, the scheduler and the CronJob controller had time to act.
    std::thread::sleep(Duration::from_secs(15));
    let ds = b.get_json("daemonset", Some(ns), "agent").unwrap();
    assert_eq!(ds["status"]["desiredNumberScheduled"], 0, "{ds}");
    assert_eq!(pods_in(b, ns), Vec::<String>::new(), "pods run on the staged standby");
    assert_eq!(
        b.kubectl(&["-n", ns, "get", "jobs", "-o", "name"]),
        "",
        "jobs run on the standby"
    );

    // Failover starts it all on b: what was held back is released, exactly as the user set it.
    let out = app.ok(&["failover"]);
    assert!(
        out.contains("resumed") && out.contains("released onto its nodes"),
        "{out}"
    );
    // The fence stopped all of it on a, not only what has replicas: no pod runs there, the
    // CronJob is suspended, the DaemonSet is off its nodes, the Job and the Pod are kept.
    assert!(
        out.contains("Pod kst-hold/solo: a bare Pod: kept for the start and deleted"),
        "{out}"
    );
    // No pod of the app runs or waits to run there (pods that ended may stay listed a while; on a
    // loaded machine a kubelet takes its time to remove them).
    let live = || {
        a.kubectl(&[
            "-n",
            ns,
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase}{\"\\n\"}{end}",
        ])
        .lines()
        .filter(|l| !l.ends_with("=Succeeded") && !l.ends_with("=Failed"))
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let started = Instant::now();
    while !live().is_empty() && started.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(live(), Vec::<String>::new(), "pods on the fenced primary");
    let cj = a.get_json("cronjob.v1beta1.batch", Some(ns), "tick").unwrap();
    assert_eq!(cj["spec"]["suspend"], true, "{cj}");
    let ds = a.get_json("daemonset", Some(ns), "agent").unwrap();
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["lifeboat.io/held-back"], "no-node-has-this",
        "{ds}"
    );
    let cj = b.get_json("cronjob.v1beta1.batch", Some(ns), "tick").unwrap();
    assert_eq!(cj["spec"]["suspend"], false, "{cj}");
    assert!(cj["metadata"]["annotations"]["lifeboat.io/suspend"].is_null(), "{cj}");
    assert!(
        b.get_json("job", Some(ns), "once").is_some(),
        "the Job is created at start"
    );
    wait_for("the agent, solo and once pods on b", Duration::from_secs(60), || {
        let p = pods_in(b, ns);
        (p.iter().any(|n| n.contains("agent-"))
            && p.iter().any(|n| n.ends_with("/solo"))
            && p.iter().any(|n| n.contains("once-")))
        .then_some(())
    });
    let held = b.kubectl(&[
        "-n",
        ns,
        "get",
        "secrets",
        "-l",
        "io.lifeboat.held-back=1",
        "-o",
        "name",
    ]);
    assert_eq!(held, "", "the held-back records are gone once started");
    let ds = b.get_json("daemonset", Some(ns), "agent").unwrap();
    assert!(ds["spec"]["template"]["spec"]["nodeSelector"]["lifeboat.io/held-back"].is_null());
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_kubernetes_drill_replaces_no_cluster_scoped_object() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let app = KubeApp::new(kube_sites(2), "kdr-iso", 18183);
    let (a, b) = (&app.sites[0], &app.sites[1]);
    let ns = app.ns;
    let crd = "widgets.kdr-iso.lab.test";
    let drop_cluster = |s: &KubeSite| {
        for (kind, name) in [
            ("clusterrole", "kdr-iso-reader"),
            ("clusterrole", "kdr-iso-extra"),
            ("crd", crd),
        ] {
            let _ = s.kubectl_try(&["delete", kind, name, "--ignore-not-found"], None);
        }
    };
    drop_cluster(a);
    drop_cluster(b);
    struct Dropped<'a>(&'a [KubeSite], &'a dyn Fn(&KubeSite));
    impl Drop for Dropped<'_> {
        fn drop(&mut self) {
            for s in self.0 {
                (self.1)(s);
            }
        }
    }
    let _d = Dropped(&app.sites, &drop_cluster);
    // Cluster-scoped objects the app's namespace refers to: two ClusterRoles bound in it, and a
    // two-version CRD with a conversion webhook in the app's namespace, with one custom resource.
    a.apply(&format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {crd}, labels: {{app: {ns}}}}}
spec:
  group: kdr-iso.lab.test
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  conversion:
    strategy: Webhook
    webhook:
      conversionReviewVersions: [v1]
      clientConfig: {{service: {{namespace: {ns}, name: convert, path: /convert, port: 443}}}}
  versions:
    - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
    - {{name: v1beta1, served: true, storage: false, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
"#
    ));
    a.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd", crd]);
    a.apply(&format!(
        r#"
apiVersion: kdr-iso.lab.test/v1
kind: Widget
metadata: {{name: w1, namespace: {ns}, labels: {{app: {ns}}}}}
spec: {{size: 3}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: kdr-iso-reader, labels: {{app: {ns}}}}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: kdr-iso-extra, labels: {{app: {ns}}}}}
rules: [{{apiGroups: [""], resources: [services], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader, namespace: {ns}, labels: {{app: {ns}}}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kdr-iso-reader}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: extra, namespace: {ns}, labels: {{app: {ns}}}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kdr-iso-extra}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {ns}}}]
"#
    ));
    // Staged on b (production names): b has the CRD and the ClusterRoles now.
    app.ok(&["backup", "--plan"]);
    let crd_b = b.get_json("crd", None, crd).expect("the CRD staged on b");
    // b's own state of its cluster-scoped objects: a change made there, and one of them missing.
    b.kubectl(&["annotate", "clusterrole", "kdr-iso-reader", "site=b-own"]);
    b.kubectl(&["delete", "clusterrole", "kdr-iso-extra"]);
    let reader_b = b.get_json("clusterrole", None, "kdr-iso-reader").unwrap();

    // The drill runs while b is watched for the ClusterRole it lacks.
    let child = Command::new(common::bin())
        .arg("drill")
        .arg(&app.plan)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env_remove("LIFEBOAT_REPO")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let mut seen = None;
    while child.try_wait().unwrap().is_none() {
        if seen.is_none() {
            seen = b.get_json("clusterrole", None, "kdr-iso-extra");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = child.wait_with_output().unwrap();
    let drill = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "lifeboat drill failed: {drill}");
    assert!(drill.contains("teardown"), "{drill}");
    let made = seen.expect("the drill's copy got the ClusterRole b lacked");
    assert!(
        made["metadata"]["labels"]["io.lifeboat.drill"]
            .as_str()
            .is_some_and(|l| l.starts_with("drill-")),
        "{made}"
    );
    // Nothing cluster-scoped that b had was replaced: same version, b's own change kept, and the
    // CRD's conversion webhook still points at the app's namespace, not the drill's (deleted).
    let reader_after = b.get_json("clusterrole", None, "kdr-iso-reader").unwrap();
    assert_eq!(
        reader_after["metadata"]["resourceVersion"], reader_b["metadata"]["resourceVersion"],
        "the drill replaced b's ClusterRole"
    );
    assert_eq!(reader_after["metadata"]["annotations"]["site"], "b-own");
    let crd_after = b.get_json("crd", None, crd).unwrap();
    assert_eq!(
        crd_after["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["namespace"], ns,
        "{crd_after}"
    );
    assert_eq!(
        crd_after["metadata"]["resourceVersion"], crd_b["metadata"]["resourceVersion"],
        "the drill replaced b's CRD"
    );
    // What b lacked, the drill created for its copy and its teardown removed.
    assert!(
        b.get_json("clusterrole", None, "kdr-iso-extra").is_none(),
        "the drill left the ClusterRole it created"
    );
    // The copy's namespace was isolated by a default-deny NetworkPolicy before it started. The
    // lab's kubelets run without a network plugin, so the policy is stored, not enforced here.
    assert!(
        drill.contains("NetworkPolicy") && drill.contains("lifeboat-drill-isolation"),
        "{drill}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_global_swarm_service_is_not_started_on_a_hot_standby() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "drg", 8210, None, "");
    a.docker(&[
        "service",
        "create",
        "--detach",
        "--mode",
        "global",
        "--label",
        "app=drg",
        "--name",
        "drg-agent",
        "--no-resolve-image",
        "lifeboat-lab/web:1",
        "sleep",
        "3600",
    ]);
    let tasks = |s: &Site| {
        s.docker(&[
            "service",
            "ps",
            "drg-agent",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ])
    };
    wait_for("the global service's task on a", Duration::from_secs(60), || {
        tasks(a).contains("Running").then_some(())
    });

    app.ok(&["backup", "--plan"]);
    let spec = b.docker(&["service", "inspect", "-f", "{{json .Spec}}", "drg-agent"]);
    assert!(
        spec.contains("node.id==lifeboat-held-back") && spec.contains("io.lifeboat.held-back"),
        "{spec}"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(tasks(b), "", "a task of the global service runs on the hot standby");
    // The drift check sees the held-back service as in step with a's.
    let line = app.check_line("drift");
    assert_eq!(line["status"], "ok", "{line}");

    // Failover: a's global service is held back (fenced), b's released.
    let out = app.ok(&["failover"]);
    assert!(out.contains("released onto its nodes"), "{out}");
    wait_for("the global service's task on b", Duration::from_secs(60), || {
        tasks(b).contains("Running").then_some(())
    });
    wait_for("no task of the global service on a", Duration::from_secs(60), || {
        tasks(a).is_empty().then_some(())
    });
    let spec = b.docker(&["service", "inspect", "-f", "{{json .Spec}}", "drg-agent"]);
    assert!(!spec.contains("lifeboat-held-back"), "{spec}");
}

/// Everything under `dir` (recursively) as (path, bytes).
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn no_secret_marker_appears_in_any_output_of_a_failover_and_a_drill() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let app = App::new(&sites, "sec", 8211, None, "");
    // Secrets where a plan carries them: a probe's user info, a check's query token, the TSIG
    // key of the DNS traffic, the repository's password.
    let plan = std::fs::read_to_string(&app.plan).unwrap();
    let plan = plan
        .replace(
            "\"http://{site}:8211/healthz\"",
            "\"http://u:MRKPROBEPW7@{site}:8211/healthz\"",
        )
        .replace(
            "\"http://{site}:8211/cgi-bin/items\"",
            "\"http://{site}:8211/cgi-bin/items?token=MRKCHECKTOKEN7\"",
        );
    assert!(
        plan.contains("MRKPROBEPW7") && plan.contains("MRKCHECKTOKEN7"),
        "{plan}"
    );
    std::fs::write(&app.plan, plan).unwrap();
    let key = std::fs::read_to_string(lab_var("LAB_DNS_KEY")).unwrap();
    let tsig = key
        .split('"')
        .skip_while(|s| !s.trim_end().ends_with("secret"))
        .nth(1)
        .unwrap_or_else(|| panic!("no secret in the lab's key file"))
        .to_string();
    let markers = ["MRKPROBEPW7", "MRKCHECKTOKEN7", tsig.as_str(), common::PASSWORD];

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut run = |args: &[&str], must_pass: bool| {
        let o = app.cmd(args).output().unwrap();
        assert!(
            !must_pass || o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        outputs.push((format!("the stdout of {args:?}"), o.stdout));
        outputs.push((format!("the stderr of {args:?}"), o.stderr));
    };
    let report = app.dir.path().join("reports/drill");
    run(&["backup", "--plan"], true);
    run(&["drill", "--report", report.to_str().unwrap()], true);
    run(&["--json", "failover"], true);
    // With a fenced, its probes fail: their errors name the URL too.
    run(&["--json", "plan", "check"], false);
    run(&["plan", "check"], false);
    run(&["runbook"], true);
    run(&["--json", "failback"], true);
    for (path, bytes) in all_files(&app.dir.path().join("reports")) {
        outputs.push((format!("the report {}", path.display()), bytes));
    }
    // At rest: the repository holds the journal, the drill's record and the state, all sealed.
    for (path, bytes) in all_files(&app.dir.path().join("repo")) {
        outputs.push((format!("the repository file {}", path.display()), bytes));
    }
    assert!(
        outputs.iter().any(|(w, _)| w.contains("drill.html")),
        "the reports were written"
    );
    for (what, bytes) in &outputs {
        let text = String::from_utf8_lossy(bytes);
        for m in markers {
            assert!(
                !text.contains(m),
                "a secret ({}...) appears in {what}:\n{text}",
                &m[..4]
            );
        }
    }
    // The outputs did say where they probed, without the secrets.
    let all: String = outputs
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(all.contains(":8211/healthz"), "the probe is named");
}

/// A tmpfs of `mib` MiB mounted at `dir` while it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every snapshot of `repo` restores, and `repo check --read-data` passes.
fn every_snapshot_restores(repo: &str) -> usize {
    let check = common::run(repo, &["repo", "check", "--read-data"]);
    assert!(check.status.success(), "{}", output_text(&check));
    let v = common::json(repo, &["snapshots"]);
    let list = v.as_array().or_else(|| v["snapshots"].as_array()).unwrap().clone();
    for s in &list {
        let id = s["id"].as_str().unwrap();
        let out = tempfile::tempdir().unwrap();
        common::ok(
            repo,
            &["restore", id, "--to", &format!("files:{}", out.path().display())],
        );
    }
    list.len()
}

/// The contents of the file `name` anywhere in what `id` restores to.
fn restored_file(repo: &str, id: &str, name: &str) -> Option<Vec<u8>> {
    let out = tempfile::tempdir().unwrap();
    common::ok(
        repo,
        &["restore", id, "--to", &format!("files:{}", out.path().display())],
    );
    let mut stack = vec![out.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name) {
                return Some(std::fs::read(&p).unwrap());
            }
        }
    }
    None
}

/// `serve` with the plan's schedule, its stderr collected.
fn serve(app: &App) -> (Child, Arc<Mutex<String>>) {
    let mut s = app
        .cmd(&["serve", "--no-watch", "--sync-every", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut s);
    (s, log)
}

fn wait_for_snapshots(log: &Arc<Mutex<String>>, n: usize, what: &str) {
    wait_for(what, Duration::from_secs(120), || {
        (log.lock().unwrap().matches(": snapshot ").count() >= n).then_some(())
    });
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn serve_survives_a_full_repository_disk_without_committing_broken_snapshots() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "drf", 8201, None, "");
    // The repository on a 64 MiB file system, 36 MiB of it taken by something else.
    let small = Tmpfs::mount(app.dir.path().join("small"), 64);
    let repo = small.0.join("repo").display().to_string();
    common::ok(&repo, &["repo", "init"]);
    let plan = std::fs::read_to_string(&app.plan)
        .unwrap()
        .replace(
            &format!("repository: {}\n", app.repo()),
            &format!("repository: {repo}\n"),
        )
        .replace("standby_mode: hot", "standby_mode: cold")
        + "    backup: {every: 5s}\n";
    std::fs::write(&app.plan, plan).unwrap();
    std::fs::write(small.0.join("junk"), vec![7u8; 36_000_000]).unwrap();
    let fill = |name: &str, bytes: u32| {
        a.docker(&[
            "exec",
            "drf-web",
            "sh",
            "-c",
            &format!("busybox head -c {bytes} /dev/urandom > /www/data/{name}"),
        ]);
    };
    fill("big1", 16_000_000);
    let (s, log) = serve(&app);
    wait_for_snapshots(&log, 1, "the first backup, which fits");
    // The next backups do not fit: they fail, each in its own session.
    fill("big2", 24_000_000);
    wait_for(
        "a backup that fails for want of space",
        Duration::from_secs(120),
        || log.lock().unwrap().contains("FAILED").then_some(()),
    );
    std::thread::sleep(Duration::from_secs(6));
    // Space comes back: the same process backs up again, and what it commits is whole.
    std::fs::remove_file(small.0.join("junk")).unwrap();
    let before = log.lock().unwrap().matches(": snapshot ").count();
    wait_for_snapshots(&log, before + 1, "a backup after the space came back");
    kill(s);
    let text = log.lock().unwrap().clone();
    assert!(
        text.to_lowercase().contains("no space left"),
        "the failure names its cause: {text}"
    );
    let n = every_snapshot_restores(&repo);
    assert!(n >= 2, "{n} snapshots\n{text}");
    let latest = restored_file(&repo, "latest", "big2").expect("big2 is in the newest snapshot");
    let live = a.docker(&["exec", "drf-web", "busybox", "md5sum", "/www/data/big2"]);
    let sum = format!("{:x}", md5_of(&latest));
    assert!(live.starts_with(&sum), "big2 restores exactly: {sum} vs {live}");
}

/// The MD5 of `bytes`, as busybox md5sum prints it (computed by the system's md5sum).
fn md5_of(bytes: &[u8]) -> Md5Hex {
    use std::io::Write;
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    Md5Hex(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string(),
    )
}

struct Md5Hex(String);

impl std::fmt::LowerHex for Md5Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn serve_with_an_external_prune_keeps_every_snapshot_restorable() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "drp", 8202, None, "");
    let plan = std::fs::read_to_string(&app.plan)
        .unwrap()
        .replace("standby_mode: hot", "standby_mode: cold")
        + "    backup: {every: 4s, keep: {last: 1}}\n";
    std::fs::write(&app.plan, plan).unwrap();
    let toggle = |v: &str| {
        a.docker(&["exec", "drp-web", "sh", "-c", &format!("echo {v} > /www/data/toggle")]);
    };
    toggle("AAAA");
    let (s, log) = serve(&app);
    wait_for_snapshots(&log, 1, "a snapshot holding AAAA");
    toggle("BBBB");
    wait_for_snapshots(
        &log,
        2,
        "a snapshot holding BBBB, after which retention forgets the first",
    );
    // Another process prunes what retention forgot, with no margin, while serve goes on.
    let prune = common::run(&app.repo(), &["--lock-wait", "120", "prune", "--min-age", "0s"]);
    assert!(prune.status.success(), "{}", output_text(&prune));
    // AAAA again: the long-lived process must not take it for stored.
    toggle("AAAA");
    let before = log.lock().unwrap().matches(": snapshot ").count();
    wait_for_snapshots(&log, before + 2, "two snapshots after the prune");
    kill(s);
    let text = log.lock().unwrap().clone();
    assert!(!text.contains("FAILED"), "{text}");
    every_snapshot_restores(&app.repo());
    assert_eq!(
        restored_file(&app.repo(), "latest", "toggle").as_deref(),
        Some(&b"AAAA\n"[..])
    );
    // A failover from the cold standby reads the newest snapshot through the same repository.
    app.ok(&["failover", "--no-final-backup"]);
    assert!(app.items(&sites[1]).is_some_and(|i| i.contains("widget")));
    app.ok(&["failback"]);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_volume_stream_that_stalls_times_out_and_releases_the_app_lock() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let a = &sites[0];
    let app = App::new(&sites, "drs", 8203, None, "");
    a.docker(&[
        "exec",
        "drs-web",
        "sh",
        "-c",
        "busybox head -c 400000000 /dev/urandom > /www/data/big",
    ]);
    let mut backup = app
        .cmd(&["backup", "--plan"])
        .env("LIFEBOAT_STREAM_STALL_SECS", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(&mut backup);
    // The read of the volume has begun (its helper container exists: it is read, never run);
    // then the engine hangs.
    wait_for("the helper container", Duration::from_secs(60), || {
        if let Some(st) = backup.try_wait().unwrap() {
            panic!(
                "the backup ended ({st}) before its read was seen: {}",
                log.lock().unwrap()
            );
        }
        let helpers = a.docker(&["ps", "-aq", "--filter", "label=io.lifeboat.helper"]);
        (!helpers.is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let pid = dockerd_pid(a);
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the backup to give up", Duration::from_secs(90), || {
            backup.try_wait().unwrap()
        })
    }));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let status = match ended {
        Ok(s) => s,
        Err(e) => {
            let _ = backup.kill();
            std::panic::resume_unwind(e);
        }
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut backup.stdout.take().unwrap(), &mut text).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    text += &log.lock().unwrap();
    assert!(!status.success(), "{status}: {text}");
    assert!(text.contains("no data for 3 s: the engine stalled"), "{text}");
    assert!(
        !text.contains("IoError(Custom"),
        "the cause, not its debug form: {text}"
    );
    // What was read is kept, marked incomplete: never a recovery point.
    assert_eq!(app.snapshots_tagged("app=drs"), 1, "{text}");
    assert_eq!(app.snapshots_tagged("incomplete"), 1, "{text}");
    // The app's lock went with the process: the next backup takes it at once and finishes.
    let out = app.ok(&["backup", "--plan"]);
    assert!(out.contains(": snapshot "), "{out}");
    assert_eq!(app.snapshots_tagged("app=drs"), 2);
    assert_eq!(app.snapshots_tagged("incomplete"), 1);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn failback_leaves_the_standbys_containers_unable_to_restart_on_their_own() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "drr", 8204, None, "");
    let running = |s: &Site, c: &str| s.docker(&["inspect", "-f", "{{.State.Running}}", c]) == "true";
    a.docker(&["update", "--restart", "always", "drr-web"]);
    app.ok(&["backup", "--plan"]);
    app.ok(&["failover"]);
    assert!(app.items(b).is_some());
    let out = app.ok(&["failback"]);
    assert!(out.contains("restart policy always restored"), "{out}");
    assert!(running(a, "drr-web"));
    // b's host reboots after the failback: its engine comes back, the app's copy stays stopped.
    sentinel(b, "drr-other");
    reboot(b, "drr-other");
    assert!(!running(b, "drr-web"), "the standby's copy stayed stopped");
    assert!(app.items(b).is_none(), "b does not serve beside a");
    assert!(app.items(a).is_some_and(|i| i.contains("widget")));
    assert_eq!(resolve("drr"), a.addr);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_failover_left_open_after_start_is_finished_or_rolled_back_by_the_watch() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "dro", 8205, None, "");
    app.ok(&["backup", "--plan"]);
    // The failover dies right after the standby started: a fenced, b running, traffic on a.
    let o = app
        .cmd(&["failover"])
        .env("LIFEBOAT_FAULT_KILL_AFTER", "start")
        .output()
        .unwrap();
    assert_eq!(o.status.signal(), Some(9), "{}", output_text(&o));
    assert_eq!(resolve("dro"), a.addr, "traffic not yet moved");
    assert!(app.items(b).is_some(), "b was started");
    // The primary answers again (someone restarted it by hand): the watch still finishes the
    // operation instead of leaving two sites up with traffic split.
    a.docker(&["start", "dro-web"]);
    let mut w = app.cmd(&["watch"]).stderr(Stdio::piped()).spawn().unwrap();
    let log = collect(&mut w);
    wait_for("the watch to finish the failover", Duration::from_secs(120), || {
        (resolve("dro") == b.addr).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    kill(w);
    let text = log.lock().unwrap().clone();
    assert!(text.contains("resuming failover"), "{text}");
    assert!(text.contains("on resume, a ran the app again"), "{text}");
    assert!(
        app.items(a).is_none(),
        "a fenced again by the resumed operation: {text}"
    );
    assert!(app.items(b).is_some_and(|i| i.contains("widget")));
    app.ok(&["failback"]);
    assert_eq!(resolve("dro"), a.addr);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_drill_copy_cannot_reach_the_primary_site() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites, "drt", 8206, None, "");
    let primary = format!("http://{}:8206/healthz", a.addr);
    // An ordinary container on b reaches the primary: the lab does not keep them apart. (This
    // busybox's wget crashes with -q or -T: a timeout around it instead.)
    let (reach, out, err) = b.docker_try(&[
        "run",
        "--rm",
        "lifeboat-lab/web:1",
        "busybox",
        "timeout",
        "5",
        "busybox",
        "wget",
        "-O-",
        &primary,
    ]);
    assert!(reach && out.contains("ok"), "b's containers reach a: {out} {err}");
    // The drill's copy: it finds itself by its own name, and the primary not at all (a hook
    // that reaches the primary fails, and with it the drill).
    let hooks = format!(
        "    hooks:\n      post_restore:\n        \
         - exec: {{container: drt-web, command: [busybox, timeout, '5', busybox, wget, -O-, 'http://drt-web:8080/healthz']}}\n        \
         - exec: {{container: drt-web, command: [sh, -c, '! busybox timeout 5 busybox wget -O- {primary}']}}\n"
    );
    let base = std::fs::read_to_string(&app.plan).unwrap();
    std::fs::write(&app.plan, base + &hooks).unwrap();
    app.ok(&["backup", "--plan"]);
    let report = app.dir.path().join("drill");
    let o = app
        .cmd(&["drill", "--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap()).unwrap();
    let steps = json["drills"][0]["steps"].as_array().unwrap().clone();
    for hook in ["hook 1", "hook 2"] {
        let s = steps
            .iter()
            .find(|s| s["name"] == hook)
            .unwrap_or_else(|| panic!("{json}"));
        assert_eq!(s["outcome"], "done", "{s}");
    }
    // Health and verify reached the copy through its gateway; teardown left nothing behind.
    assert!(b.objects("drill-").is_empty(), "{:?}", b.objects("drill-"));
    let nets = b.docker(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("drill-"), "{nets}");
    assert!(app.items(a).is_some());
}
