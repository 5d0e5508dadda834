//! End-to-end tests of the control plane on the lab (`lab/lab up --docker 3 --dns --etcd`, which
//! each test makes sure of): three `lifeboat serve` instances of one plan, each inside its site's
//! network namespace beside that site's etcd member, so that `lab/lab kill` or `partition` of a
//! site takes its instance and its member with it. They run one at a time (they take sites down).
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lab::{docker_sites, http_get, point, resolve, wait_for, Site};
use common::PASSWORD;

static SERIAL: Mutex<()> = Mutex::new(());

fn lab() -> PathBuf {
    lifeboat_lab_support::script()
}

fn lab_var(name: &str) -> String {
    lifeboat_lab_support::var(name).unwrap_or_else(|| panic!("lab/lab env has no {name}"))
}

/// Three Docker sites, DNS and the coordination etcd (and Kubernetes again when the lab runs it:
/// `kill` takes a site's control plane down too). `up` starts only what is missing.
fn lab_up() {
    common::lab::lab_up(&["--docker", "3", "--dns", "--etcd"]);
}

/// A web app with a data volume on site a, staged on b as a hot standby, in a plan whose serve
/// instances coordinate through the lab's etcd. Removed from every site when dropped.
struct App {
    name: &'static str,
    port: u16,
    _dir: tempfile::TempDir,
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
    /// `app_lines`: more of the app's YAML (indented as its fields).
    fn new(sites: &[Site], name: &'static str, port: u16, app_lines: &str) -> App {
        for s in sites {
            s.cleanup(&format!("{name}-"));
        }
        let (a, b) = (&sites[0], &sites[1]);
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
        wait_for("the web app on a", Duration::from_secs(30), || {
            http_get(&a.addr, port, "/healthz")
        });
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        common::ok(repo.to_str().unwrap(), &["repo", "init"]);
        let endpoints: Vec<String> = lab_var("LAB_COORD_ETCD")
            .split(',')
            .map(|u| format!("\"{u}\""))
            .collect();
        let plan = dir.path().join("plan.yaml");
        std::fs::write(
            &plan,
            format!(
                "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: {name}}}\nrepository: {repo}\n\
                 coordination: {{etcd: {{endpoints: [{eps}], ttl: 10s}}, instances: 3}}\nsites:\n  \
                 a: {{docker: {{host: \"{ah}\", address: {aa}}}}}\n  b: {{docker: {{host: \"{bh}\", address: {ba}}}}}\napps:\n  \
                 - name: {name}\n    primary: a\n    standby: b\n    standby_mode: hot\n    select: {{labels: {{app: {name}}}}}\n    \
                 objectives: {{rto: 60s, rpo: 5m}}\n    health:\n      - http: {{url: \"http://{{site}}:{port}/healthz\"}}\n        \
                 interval: 1s\n        timeout: 1s\n        failure_threshold: 3\n    traffic:\n      \
                 dns: {{server: \"{dns}\", zone: lab.test., name: {name}, ttl: 5, tsig_key: {key}, primary: {aa}, \
                 standby: {ba}}}\n    verify:\n      \
                 - http: {{url: \"http://{{site}}:{port}/cgi-bin/items\", expect_body_contains: widget}}\n{app_lines}",
                repo = repo.display(),
                eps = endpoints.join(", "),
                ah = a.docker_host,
                aa = a.addr,
                bh = b.docker_host,
                ba = b.addr,
                key = lab_var("LAB_DNS_KEY"),
                // The DNS server as the instances inside the sites reach it.
                dns = lab_var("LAB_DNS_SERVICE"),
            ),
        )
        .unwrap();
        point(name, &a.addr, &lab_var("LAB_DNS_KEY"));
        App {
            name,
            port,
            _dir: dir,
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

    /// `plan check --json`, passed or not.
    fn check(&self) -> serde_json::Value {
        let o = self.cmd(&["--json", "plan", "check"]).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
    }

    /// `lifeboat serve` inside `site`'s network namespace as instance `site`, guarding it when
    /// `guards` (a witness elsewhere does not).
    fn serve_in(&self, site: &str, guards: bool) -> Serve {
        self.serve_in_with(site, guards, &[])
    }

    /// [`App::serve_in`] with more arguments for serve.
    fn serve_in_with(&self, site: &str, guards: bool, extra: &[String]) -> Serve {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/lifeboat-{site}"))
            .arg(common::bin())
            .args(["serve", "--sync-every", "0", "--instance", site]);
        if guards {
            c.args(["--site", site]);
        }
        let mut child = c
            .args(extra)
            .arg(&self.plan)
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .env_remove("LIFEBOAT_REPO")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = common::stderr_log(&mut child);
        Serve { child, log }
    }
}

/// A running serve instance and what it printed.
struct Serve {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    fn until(&self, what: &str, within: Duration, needle: &str) {
        wait_for(what, within, || self.log().contains(needle).then_some(()));
    }
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn the_survivors_elect_a_leader_and_fail_over_once_when_the_primary_site_dies_with_the_leader() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab_up();
    let sites = docker_sites(3);
    let b = &sites[1];
    let app = App::new(&sites[..2], "ctl1", 8191, "");
    assert!(app.ok(&["backup", "--plan"]).contains("staged on b"));
    let mut sa = app.serve_in("a", true);
    sa.until("a to lead", Duration::from_secs(30), "leading (term");
    let sb = app.serve_in("b", true);
    let sc = app.serve_in("c", false);
    for s in [&sb, &sc] {
        s.until("the others to follow a", Duration::from_secs(30), "following a");
    }
    // plan check shows the coordination as etcd holds it.
    let check = app.ok(&["plan", "check"]);
    let line = check
        .lines()
        .find(|l| l.contains("coordination"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("a leads (term") && line.contains("3 of 3 instances run") && line.contains("guarded sites: a, b"),
        "{check}"
    );
    // Let every instance probe a few rounds (their verdicts: up).
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    sa.kill9();
    let o = Command::new(lab()).args(["kill", "a"]).output().unwrap();
    assert!(o.status.success());
    let result = std::panic::catch_unwind(|| {
        wait_for("the new leader to fail over", Duration::from_secs(120), || {
            let l = sb.log() + &sc.log();
            (l.contains("ctl1: failed over") || l.contains("failover failed")).then_some(())
        });
        let took = killed.elapsed();
        eprintln!(
            "site a killed (with the leader) to traffic on b: {:.1} s",
            took.as_secs_f64()
        );
        let (lb, lc) = (sb.log(), sc.log());
        let both = format!("{lb}{lc}");
        assert_eq!(
            both.matches("ctl1: failed over").count(),
            1,
            "exactly one failover:\n{both}"
        );
        let leader = if lb.contains("ctl1: failed over") { &lb } else { &lc };
        assert!(
            leader.contains("leading (term"),
            "the failover ran on the new leader: {leader}"
        );
        assert!(
            leader.contains("cannot be reached") && leader.contains("that guards site a lost its lease"),
            "the dead primary is fenced on its guard's lost lease:\n{leader}"
        );
        assert_eq!(resolve("ctl1"), b.addr);
        assert!(http_get(&b.addr, app.port, "/cgi-bin/items").is_some_and(|i| i.contains("widget")));
        // Only the leader acts: a failover by hand beside it is refused, naming it.
        let o = app.cmd(&["failover"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(" leads plan ") && err.contains("nothing was done here"),
            "{err}"
        );
    });
    if result.is_err() {
        eprintln!("--- b:\n{}\n--- c:\n{}", sb.log(), sc.log());
    }
    drop((sb, sc));
    lab_up();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A writer that adds an item to the app at `addr:port` every 100 ms, from inside `netns` (none:
/// from the host), and appends the time of each write the app confirmed to `log` (seconds since
/// the epoch, this machine's clock, shared by both writers).
fn writer(netns: Option<&str>, addr: &str, port: u16, log: &std::path::Path) -> Child {
    let script = format!(
        "while :; do t=$(date +%s.%N); curl -sf -m 1 -o /dev/null \"http://{addr}:{port}/cgi-bin/add?w$t\" && echo $t >> {log}; \
         sleep 0.1; done",
        log = log.display()
    );
    let mut c = match netns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &format!("lifeboat-{n}"), "sh", "-c", &script]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        }
    };
    c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// The times a writer logged.
fn writes(log: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_partitioned_primary_fences_itself_before_the_standby_starts_and_no_write_lands_on_both() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab_up();
    let sites = docker_sites(3);
    let (a, b) = (&sites[0], &sites[1]);
    let app = App::new(&sites[..2], "ctl2", 8192, "");
    assert!(app.ok(&["backup", "--plan"]).contains("staged on b"));
    // a leads: the worst case, the leader is cut off with the primary.
    let sa = app.serve_in("a", true);
    sa.until("a to lead", Duration::from_secs(30), "leading (term");
    let sb = app.serve_in("b", true);
    let sc = app.serve_in("c", false);
    for s in [&sb, &sc] {
        s.until("the others to follow a", Duration::from_secs(30), "following a");
    }
    let logs = tempfile::tempdir().unwrap();
    let (on_a, on_b) = (logs.path().join("a"), logs.path().join("b"));
    let mut wa = writer(Some("a"), &a.addr, app.port, &on_a);
    let mut wb = writer(None, &b.addr, app.port, &on_b);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!writes(&on_a).is_empty(), "the writer inside a does not write");
    let cut = Instant::now();
    let o = Command::new(lab()).args(["partition", "a"]).output().unwrap();
    assert!(o.status.success());
    let result = std::panic::catch_unwind(|| {
        wait_for("the survivors to fail over", Duration::from_secs(120), || {
            let l = sb.log() + &sc.log();
            (l.contains("ctl2: failed over") || l.contains("failover failed")).then_some(())
        });
        eprintln!("partition of a to traffic on b: {:.1} s", cut.elapsed().as_secs_f64());
        wait_for("a write on b", Duration::from_secs(30), || {
            (!writes(&on_b).is_empty()).then_some(())
        });
        std::thread::sleep(Duration::from_secs(2));
        let both = sb.log() + &sc.log();
        assert_eq!(both.matches("ctl2: failed over").count(), 1, "{both}");
        assert!(
            sa.log().contains("ctl2: SELF-FENCED on a"),
            "a did not fence itself:\n{}",
            sa.log()
        );
        let last_on_a = writes(&on_a).into_iter().fold(f64::MIN, f64::max);
        let first_on_b = writes(&on_b).into_iter().fold(f64::MAX, f64::min);
        let margin = first_on_b - last_on_a;
        eprintln!("last write on a to first write on b: {margin:.2} s (positive: no overlap)");
        assert!(margin > 0.0, "writes landed on both sides for {:.2} s", -margin);
        assert_eq!(resolve("ctl2"), b.addr);
    });
    let _ = wa.kill();
    let _ = wb.kill();
    let _ = (wa.wait(), wb.wait());
    // The writer inside a is stopped by now; the partition heals.
    let _ = Command::new(lab()).args(["heal", "a"]).output();
    if result.is_err() {
        eprintln!("--- a:\n{}\n--- b:\n{}\n--- c:\n{}", sa.log(), sb.log(), sc.log());
    }
    drop((sa, sb, sc));
    lab_up();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Sends `signal` to a serve instance.
fn signal(s: &Serve, signal: &str) {
    let o = Command::new("kill")
        .args([signal, &s.child.id().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "kill {signal}");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_killed_leader_is_replaced_within_its_lease_and_one_paused_past_it_does_nothing_when_it_wakes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab_up();
    let sites = docker_sites(3);
    let app = App::new(&sites[..2], "ctl3", 8193, "    backup: {every: 8s}\n");
    let mut sa = app.serve_in("a", true);
    sa.until("a to lead", Duration::from_secs(30), "leading (term");
    let mut others = vec![app.serve_in("b", true), app.serve_in("c", false)];
    for s in &others {
        s.until("the others to follow a", Duration::from_secs(30), "following a");
    }
    sa.until("a's first backup", Duration::from_secs(60), "ctl3: snapshot");
    // kill -9 of the leader (its site stays up): another leads once its lease ends.
    let killed = Instant::now();
    sa.kill9();
    let next = wait_for("a new leader", Duration::from_secs(30), || {
        others.iter().position(|s| s.log().contains("leading (term"))
    });
    let took = killed.elapsed();
    eprintln!(
        "leader killed to new leader: {:.1} s (lease TTL 10 s)",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(13), "{took:?}");
    let leader = others.remove(next);
    // Its schedule goes on from the last recovery point.
    leader.until("the new leader's backup", Duration::from_secs(30), "ctl3: snapshot");
    // Paused past its lease: the other one leads; the paused one wakes and is refused.
    let paused_at = leader.log().len();
    signal(&leader, "-STOP");
    let other = &others[0];
    wait_for("the other instance to lead", Duration::from_secs(30), || {
        other.log().contains("leading (term").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    signal(&leader, "-CONT");
    wait_for("the woken instance to stand by", Duration::from_secs(20), || {
        leader.log()[paused_at..].contains("standing by").then_some(())
    });
    std::thread::sleep(Duration::from_secs(10));
    let after = leader.log()[paused_at..].to_string();
    // A round that was due when it woke is refused by its fencing token, and says so.
    for line in after
        .lines()
        .filter(|l| l.contains("ctl3: snapshot") || l.contains("backup FAILED"))
    {
        assert!(
            line.contains("not the leader any more") && line.contains("did nothing"),
            "the woken instance backed up as if it led: {line}\n{after}"
        );
    }
    other.until("the current leader's backup", Duration::from_secs(30), "ctl3: snapshot");
    drop((leader, others));
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn the_leader_drills_on_its_schedule_lists_the_report_and_the_app_reads_readiness_level_3() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab_up();
    let sites = docker_sites(3);
    let app = App::new(
        &sites[..2],
        "ctl4",
        8194,
        "    backup: {every: 1h}\n    drill: {every: 1h, keep: 3}\n",
    );
    assert!(app.ok(&["backup", "--plan"]).contains("staged on b"));
    // Before any drill: level 1 at most, and the check says what level 2 needs.
    let before = app.check();
    let r = &before["readiness"][0];
    assert!(r["level"].as_u64().unwrap() <= 1, "{r}");
    let sa = app.serve_in("a", true);
    sa.until("a to lead", Duration::from_secs(30), "leading (term");
    let others = [app.serve_in("b", true), app.serve_in("c", false)];
    for s in &others {
        s.until("the others to follow a", Duration::from_secs(30), "following a");
    }
    // Never drilled: the first drill is due at once, on the leader only.
    sa.until(
        "the drill schedule",
        Duration::from_secs(10),
        "ctl4: drill every 1h 0m, next in 0s",
    );
    wait_for("the scheduled drill", Duration::from_secs(240), || {
        let l = sa.log();
        l.lines()
            .find(|l| l.contains("ctl4: drill ") && (l.contains("passed") || l.contains("FAILED")))
            .map(str::to_string)
    });
    let log = sa.log();
    let line = log.lines().find(|l| l.contains("ctl4: drill 2")).unwrap_or_default();
    assert!(line.contains("on b passed (RTO "), "{log}");
    for s in &others {
        assert!(!s.log().contains("ctl4: drill"), "a follower drilled: {}", s.log());
    }
    let listed: serde_json::Value = serde_json::from_str(&app.ok(&["--json", "drills"])).unwrap();
    let drills = listed["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 1, "{listed}");
    assert_eq!(drills[0]["outcome"], "passed", "{listed}");
    assert_eq!(drills[0]["site"], "b");
    assert!(drills[0]["rto_seconds"].as_f64().is_some(), "{listed}");
    // Everything level 3 asks for is there: coordination of 3 running instances, health probes,
    // DNS traffic, the drill schedule with a drill that passed.
    let check = app.check();
    let r = &check["readiness"][0];
    assert_eq!(
        (r["app"].as_str(), r["level"].as_u64()),
        (Some("ctl4"), Some(3)),
        "{check:#}"
    );
    assert_eq!(r["name"], "automated");
    let drill = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "drill")
        .unwrap();
    assert_eq!(drill["status"], "ok", "{drill}");
    assert_eq!(check["ok"], true, "{check:#}");
    let text = app.ok(&["plan", "check"]);
    assert!(text.contains("readiness ctl4: level 3 (automated)"), "{text}");
    drop((sa, others));
}

/// Adds (`-I`) or removes (`-D`) a rule in `site`'s namespace that refuses its connections to
/// `addr:port`.
fn refuse_from(site: &str, op: &str, addr: &str, port: u16) {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("lifeboat-{site}"),
            "iptables",
            op,
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            addr,
        ])
        .args(["--dport", &port.to_string(), "-j", "REJECT"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "iptables {op}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn probes_that_flap_on_a_minority_of_instances_never_fail_over() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab_up();
    let sites = docker_sites(3);
    let a = &sites[0];
    let app = App::new(&sites[..2], "ctl5", 8195, "");
    assert!(app.ok(&["backup", "--plan"]).contains("staged on b"));
    let sa = app.serve_in("a", true);
    sa.until("a to lead", Duration::from_secs(30), "leading (term");
    let (sb, sc) = (app.serve_in("b", true), app.serve_in("c", false));
    for s in [&sb, &sc] {
        s.until("the others to follow a", Duration::from_secs(30), "following a");
    }
    // c alone sees a's app fail, again and again: 4 s refused (past the threshold of 3 failed
    // 1 s probes, so c's verdict is "down"), 1 s through, five times.
    let result = std::panic::catch_unwind(|| {
        for _ in 0..5 {
            refuse_from("c", "-I", &a.addr, app.port);
            std::thread::sleep(Duration::from_secs(4));
            refuse_from("c", "-D", &a.addr, app.port);
            std::thread::sleep(Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_secs(3));
        let (la, lb, lc) = (sa.log(), sb.log(), sc.log());
        assert!(
            lc.contains("ctl5: verdict: a DOWN"),
            "c never saw the app down, the test proves nothing:\n{lc}"
        );
        for (who, l) in [("a", &la), ("b", &lb), ("c", &lc)] {
            assert!(
                !l.contains("failed over") && !l.contains("failover failed") && !l.contains("SELF-FENCED"),
                "{who} acted on a minority's verdict:\n{l}"
            );
        }
        assert!(
            !la.contains("ctl5: DOWN") && !la.contains("ctl5: verdict: a DOWN"),
            "the leader's own probes failed: {la}"
        );
        assert_eq!(resolve("ctl5"), a.addr, "traffic moved");
        assert!(
            http_get(&a.addr, app.port, "/healthz").is_some(),
            "the app on a stopped"
        );
    });
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            "lifeboat-c",
            "iptables",
            "-D",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &a.addr,
        ])
        .args(["--dport", &app.port.to_string(), "-j", "REJECT"])
        .output();
    if result.is_err() {
        eprintln!("--- a:\n{}\n--- b:\n{}\n--- c:\n{}", sa.log(), sb.log(), sc.log());
    }
    drop((sa, sb, sc));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn the_dashboard_on_the_standby_shows_the_failover_live_when_the_primary_site_dies() {
    if !common::cdp::available() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab_up();
    let sites = docker_sites(3);
    let b = &sites[1];
    let app = App::new(&sites[..2], "ctl6", 8196, "");
    assert!(app.ok(&["backup", "--plan"]).contains("staged on b"));
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let operator = common::api::token(&tokens, "oncall", "operator");
    // Each instance serves the API on its site's address (the one on b is what the page uses).
    let api = |site: &str, addr: &str| -> Vec<String> {
        vec![
            "--listen".into(),
            format!("{addr}:9443"),
            "--tokens".into(),
            tokens.display().to_string(),
            "--tls-dir".into(),
            dir.path().join(format!("tls-{site}")).display().to_string(),
            "--status-every".into(),
            "1s".into(),
        ]
    };
    let mut sa = app.serve_in_with("a", true, &api("a", &sites[0].addr));
    sa.until("a to lead", Duration::from_secs(30), "leading (term");
    let sb = app.serve_in_with("b", true, &api("b", &b.addr));
    let sc = app.serve_in("c", false);
    for s in [&sb, &sc] {
        s.until("the others to follow a", Duration::from_secs(30), "following a");
    }
    sb.until("b's API", Duration::from_secs(10), "on https://");
    let mut browser = common::cdp::Browser::start();
    let shots = common::cdp::artifacts();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser.navigate(&format!("https://{}:9443/#token={operator}", b.addr));
        let active = "document.querySelector('#row-ctl6 [data-field=active]')?.textContent";
        assert_eq!(browser.until("the app's row", Duration::from_secs(30), active), "a");
        let rpo = browser.eval("document.querySelector('#row-ctl6 [data-field=rpo]').className");
        assert_eq!(rpo, "rpo-green", "backed up a moment ago, RPO 5 m");
        browser.screenshot(&shots.join("dashboard-before-failover.png"));
        browser.eval("window.__marker = 1");
        std::thread::sleep(Duration::from_secs(3));
        let killed = Instant::now();
        sa.kill9();
        let o = Command::new(lab()).args(["kill", "a"]).output().unwrap();
        assert!(o.status.success());
        let shown = browser.until(
            "b active on the page",
            Duration::from_secs(120),
            &format!("{active} === 'b' && {active}"),
        );
        assert_eq!(shown, "b");
        eprintln!(
            "site a killed to b shown active on the dashboard: {:.1} s (no reload)",
            killed.elapsed().as_secs_f64()
        );
        assert_eq!(browser.eval("window.__marker"), 1, "the page was not reloaded");
        let traffic = browser.until(
            "the traffic on b",
            Duration::from_secs(30),
            "(t => t && t.startsWith('b') && t)(document.querySelector('#row-ctl6 [data-field=traffic]')?.textContent)",
        );
        assert_eq!(traffic, "b");
        browser.screenshot(&shots.join("dashboard-after-failover.png"));
        assert!(browser.errors.is_empty(), "console errors: {:?}", browser.errors);
    }));
    if result.is_err() {
        eprintln!("--- b:\n{}\n--- c:\n{}", sb.log(), sc.log());
    }
    drop((sb, sc, browser));
    lab_up();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
