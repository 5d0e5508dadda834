//! The figures of bench/api.sh (ignored here; `bench/api.sh` runs it): `/metrics` and
//! `/api/v1/status` latency with 200 apps in the plan while a backup runs into the same
//! repository, and the dashboard's first paint with those 200 apps in headless Chromium.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{call, start_with, token, trusting, wait_for};

const APPS: usize = 200;

fn plan(dir: &Path) -> std::path::PathBuf {
    let mut y = format!(
        "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: shop}}\nrepository: {}\nsites:\n  \
         a: {{docker: {{host: \"unix:///nonexistent/a.sock\", address: 127.0.0.1}}}}\n  \
         b: {{docker: {{host: \"unix:///nonexistent/b.sock\", address: 127.0.0.1}}}}\napps:\n",
        dir.join("repo").display()
    );
    for i in 0..APPS {
        y += &format!(
            "  - {{name: app{i:03}, primary: a, standby: b, select: {{labels: {{app: app{i:03}}}}}, \
             objectives: {{rpo: 1h, rto: 5m}}, backup: {{every: 24h}}}}\n"
        );
    }
    let p = dir.join("plan.yaml");
    std::fs::write(&p, y).unwrap();
    p
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), v[v.len() - 1])
}

#[test]
#[ignore = "benchmark: run bench/api.sh"]
fn bench_api_latency_and_dashboard_paint_with_200_apps() {
    let d = tempfile::tempdir().unwrap();
    let plan = plan(d.path());
    let repo = d.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    common::ok(repo_s, &["repo", "init"]);
    // One recovery point for every app (a snapshot tagged with all of them).
    let small = d.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("f"), "x").unwrap();
    let mut args: Vec<String> = vec![
        "backup".into(),
        "files".into(),
        small.display().to_string(),
        "--tag".into(),
        "plan=shop".into(),
    ];
    for i in 0..APPS {
        args.push("--tag".into());
        args.push(format!("app=app{i:03}"));
    }
    common::ok(repo_s, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let tokens = d.path().join("tokens.yaml");
    let viewer = token(&tokens, "bench", "viewer");
    let s = start_with(d.path(), &plan, &tokens, &[]);
    let agent = trusting(&s.cert);
    wait_for("ready", Duration::from_secs(60), || {
        call(&agent, "GET", &format!("{}/readyz", s.base), None, None).0 == 200
    });
    // A backup of 400 MiB of random data into the same repository, again and again, meanwhile.
    let big = d.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 419430400 /dev/urandom > {}/data", big.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, repo2, big2) = (stop.clone(), repo_s.to_string(), big.display().to_string());
    let backups = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            std::fs::write(format!("{big2}/n"), n.to_string()).unwrap();
            let o = common::cmd(&repo2, &["backup", "files", &big2])
                .stdout(Stdio::null())
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            n += 1;
        }
        n
    });
    std::thread::sleep(Duration::from_secs(1));
    for (path, auth) in [("/metrics", None), ("/api/v1/status", Some(viewer.as_str()))] {
        let url = format!("{}{path}", s.base);
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..300 {
            let mut r = agent.get(&url);
            if let Some(t) = auth {
                r = r.set("Authorization", &format!("Bearer {t}"));
            }
            let t = Instant::now();
            let resp = r.call().unwrap();
            let body = resp.into_string().unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            bytes = body.len();
        }
        let (p50, p99, max) = percentiles(times);
        println!("bench: {path} with {APPS} apps during a backup: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({bytes} bytes) target p99 < 50 ms");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = backups.join().unwrap();
    println!("bench: backups of 400 MiB run meanwhile: {rounds} (status refreshed every 10 s, serve's default)");
    if common::cdp::available() {
        let mut firsts = Vec::new();
        let mut fcps = Vec::new();
        for _ in 0..5 {
            let mut b = common::cdp::Browser::start();
            b.navigate(&format!("{}/#token={viewer}", s.base));
            b.until(
                "200 rows",
                Duration::from_secs(30),
                &format!("document.querySelectorAll('#apps tbody tr').length === {APPS}"),
            );
            firsts.push(b.eval("window.lifeboatFirstDraw").as_f64().unwrap());
            fcps.push(
                b.eval("(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime")
                    .as_f64()
                    .unwrap(),
            );
        }
        let (p50, _, max) = percentiles(firsts);
        let (fcp50, _, fcpmax) = percentiles(fcps);
        println!(
            "bench: dashboard with {APPS} apps, all rows drawn: median {p50:.0} ms, max {max:.0} ms (first contentful paint median {fcp50:.0} ms, max {fcpmax:.0} ms) target < 1000 ms"
        );
    }
    drop(s);
}
