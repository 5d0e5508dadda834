//! Coordinated `serve` instances against a real etcd (started per test on loopback; skipped with a
//! line when `etcd` is not installed): one leader, a take-over when it leaves, the quorum of
//! verdicts, the self-fence when etcd is gone, and what is refused at the start.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_lab_support::etcd::{free_port, Etcd};
use lifeboat_orchestrator::watch::{Verdict, Witness, WitnessReport};
use lifeboat_orchestrator::OrchestratorError;
use lifeboat_plan::{App, Plan};
use lifeboat_repo::keys::KdfParams;
use lifeboat_repo::Repository;
use lifeboat_server::{ActiveSites, Coordination, Event, Instance, QuorumWitness, ServeOptions, Server, ServerError};
use time::OffsetDateTime;

type Seen = Arc<Mutex<Vec<(String, Event)>>>;

fn plan(endpoints: &[&str], apps: &str) -> Plan {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let yaml = format!(
        "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: p}}\nrepository: repo\nsites:\n  \
         a: {{docker: {{host: \"unix:///a.sock\", address: 127.0.0.1}}}}\n  \
         b: {{docker: {{host: \"unix:///b.sock\", address: 127.0.0.1}}}}\n\
         coordination: {{etcd: {{endpoints: [{}], ttl: 2s}}, instances: 3, self_fence_after: 1s}}\n\
         apps:\n{apps}",
        eps.join(", ")
    );
    Plan::parse("plan.yaml", &yaml).unwrap()
}

const WEB: &str = "  - name: web\n    primary: a\n    standby: b\n    select: {labels: {app: web}}\n    \
                   backup: {every: 1h}\n";

fn repo(dir: &std::path::Path) -> Repository {
    let kdf = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    let backend = lifeboat_repo::open_location(dir.join("repo").to_str().unwrap()).unwrap();
    Repository::open(backend, b"pw")
        .or_else(|_| {
            Repository::init(
                lifeboat_repo::open_location(dir.join("repo").to_str().unwrap()).unwrap(),
                b"pw",
                kdf,
            )
        })
        .unwrap()
}

/// A server of `plan` whose sites cannot be reached, joined as `name` (on `site`), its events
/// recorded in `seen` under its name.
fn instance(plan: Plan, dir: &std::path::Path, name: &str, site: Option<&str>, seen: &Seen) -> Arc<Server> {
    let me = Instance {
        name: name.into(),
        site: site.map(str::to_string),
    };
    let c = Coordination::join(&plan, dir, me).unwrap();
    let (tag, seen) = (name.to_string(), seen.clone());
    Arc::new(Server {
        connect: Arc::new(|site: &str, _: &App| {
            Err(OrchestratorError::Unreachable {
                site: site.to_string(),
                source: "no route to host".into(),
            })
        }),
        routers: lifeboat_server::routers(dir.to_path_buf()),
        plan: Arc::new(plan),
        plan_dir: dir.to_path_buf(),
        repo: Arc::new(repo(dir)),
        events: Arc::new(move |e| seen.lock().unwrap().push((tag.clone(), e))),
        coordination: Some(Arc::new(c)),
        by_hand: None,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (up to `within`) until `seen` has an event of `who` that `f` accepts.
async fn until(seen: &Seen, within: Duration, what: &str, f: impl Fn(&str, &Event) -> bool) {
    let started = Instant::now();
    loop {
        if seen.lock().unwrap().iter().any(|(w, e)| f(w, e)) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "no {what} within {within:?}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn one_instance_leads_and_acts_and_the_other_takes_over_at_once_when_it_leaves() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let a = instance(plan(&[&etcd.url], WEB), dir.path(), "a", Some("a"), &seen);
    let b = instance(plan(&[&etcd.url], WEB), dir.path(), "b", Some("b"), &seen);
    let rt = runtime();
    let opts = ServeOptions::default();
    let (stop_a, a_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
    rt.block_on(async {
        let (o1, o2) = (opts.clone(), opts.clone());
        let ja = tokio::spawn(async move {
            a.serve(&o1, async {
                let _ = a_stopped.await;
            })
            .await
        });
        // b joins once a leads: a is the first leader.
        until(&seen, Duration::from_secs(10), "leader a", |w, e| {
            w == "a" && matches!(e, Event::Leading { .. })
        })
        .await;
        let jb = tokio::spawn(async move {
            b.serve(&o2, async {
                let _ = b_stopped.await;
            })
            .await
        });
        until(&seen, Duration::from_secs(10), "b following a", |w, e| {
            w == "b" && matches!(e, Event::Following { leader, .. } if leader == "a")
        })
        .await;
        // Only the leader backs up (the due backup fails: the sites cannot be reached).
        until(&seen, Duration::from_secs(10), "a's backup round", |w, e| {
            w == "a" && matches!(e, Event::BackedUp { .. })
        })
        .await;
        assert!(
            !seen
                .lock()
                .unwrap()
                .iter()
                .any(|(w, e)| w == "b" && matches!(e, Event::BackedUp { .. })),
            "a follower backed up"
        );
        let left = Instant::now();
        let _ = stop_a.send(());
        ja.await.unwrap().unwrap();
        // a resigned: b leads within one keep-alive period (TTL/5), not after the lease ran out.
        until(&seen, Duration::from_secs(2), "b leading", |w, e| {
            w == "b" && matches!(e, Event::Leading { .. })
        })
        .await;
        let took = left.elapsed();
        assert!(took < Duration::from_millis(1500), "b took over after {took:?}");
        until(&seen, Duration::from_secs(10), "b's backup round", |w, e| {
            w == "b" && matches!(e, Event::BackedUp { .. })
        })
        .await;
        let _ = stop_b.send(());
        jb.await.unwrap().unwrap();
    });
    drop(rt);
    let terms: Vec<i64> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Leading { term } => Some(*term),
            _ => None,
        })
        .collect();
    assert_eq!(terms.len(), 2, "{terms:?}");
    assert!(terms[1] > terms[0], "the new leader's term is later: {terms:?}");
}

#[test]
fn a_deposed_leader_is_refused_by_its_next_check() {
    use lifeboat_orchestrator::leadership::Leadership;
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let a = instance(plan(&[&etcd.url], WEB), dir.path(), "a", None, &seen);
    let c = a.coordination.clone().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let run = tokio::spawn(c.clone().run(a.events.clone()));
        until(&seen, Duration::from_secs(5), "a leading", |_, e| {
            matches!(e, Event::Leading { .. })
        })
        .await;
        let term = tokio::task::spawn_blocking({
            let c = c.clone();
            move || c.check()
        })
        .await
        .unwrap()
        .unwrap();
        // Paused past its lease: the keep-alives stop, etcd ends the lease.
        run.abort();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let err = tokio::task::spawn_blocking(move || c.check())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, OrchestratorError::Deposed { term: t, .. } if *t == term),
            "{err}"
        );
        assert!(err.to_string().contains("nothing more was done here"), "{err}");
    });
}

#[test]
fn a_failover_needs_a_majority_of_fresh_down_verdicts_about_the_active_site() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let servers: Vec<Arc<Server>> = ["a", "b", "c"]
        .iter()
        .map(|n| instance(plan(&[&etcd.url], WEB), dir.path(), n, None, &seen))
        .collect();
    let coords: Vec<Arc<Coordination>> = servers.iter().map(|s| s.coordination.clone().unwrap()).collect();
    let rt = runtime();
    rt.block_on(async {
        // Their leases kept alive (their probes are this test's verdicts).
        for (s, c) in servers.iter().zip(&coords) {
            tokio::spawn(c.clone().run(s.events.clone()));
        }
        let sites = Arc::new(ActiveSites::new(servers[0].plan.clone(), servers[0].repo.clone()));
        let quorum = QuorumWitness::new(coords[0].clone(), sites, Duration::from_secs(5));
        let mut seq = 0;
        let mut say = |who: &[(usize, bool)]| {
            seq += 1;
            for (i, down) in who {
                let r = WitnessReport {
                    time: OffsetDateTime::now_utc(),
                    sequence: seq,
                    site: "a".into(),
                    down: *down,
                    failures: if *down { 3 } else { 0 },
                    error: None,
                };
                coords[*i].publish_verdict("web", &r).unwrap();
            }
        };
        // Flapping on one instance (a minority): no failover, however often it says so.
        for _ in 0..3 {
            say(&[(0, false), (1, false), (2, true)]);
            let v = quorum.verdict("web").await;
            assert!(matches!(v, Verdict::Disagrees(_)), "{v:?}");
        }
        let Verdict::Disagrees(why) = quorum.verdict("web").await else {
            panic!()
        };
        assert!(why.contains("see a down"), "{why}");
        // Two of three: a majority.
        say(&[(0, false), (1, true), (2, true)]);
        assert_eq!(quorum.verdict("web").await, Verdict::Agrees);
        // A verdict that stops changing goes stale: one fresh "down" is no majority.
        tokio::time::sleep(Duration::from_secs(6)).await;
        say(&[(2, true)]);
        let v = quorum.verdict("web").await;
        assert!(matches!(&v, Verdict::Disagrees(w) if w.starts_with("1 of 3")), "{v:?}");
    });
}

#[test]
fn an_instance_cut_off_from_etcd_fences_its_site_after_self_fence_after() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let a = instance(plan(&[&etcd.url], WEB), dir.path(), "a", Some("a"), &seen);
    let rt = runtime();
    rt.block_on(async {
        let opts = ServeOptions {
            watch: false,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let j = tokio::spawn(async move {
            a.serve(&opts, async {
                let _ = stopped.await;
            })
            .await
        });
        until(&seen, Duration::from_secs(5), "a leading", |_, e| {
            matches!(e, Event::Leading { .. })
        })
        .await;
        let cut = Instant::now();
        drop(etcd);
        // The self-fence starts 1 s after the last keep-alive; these sites cannot be reached, so it
        // is tried and reported as failed (the lab test stops a real app).
        until(
            &seen,
            Duration::from_secs(5),
            "a self-fence",
            |_, e| matches!(e, Event::SelfFenceFailed { app, site, .. } if app == "web" && site == "a"),
        )
        .await;
        let took = cut.elapsed();
        assert!(took < Duration::from_secs(2), "fenced {took:?} after etcd went");
        assert!(
            seen.lock().unwrap().iter().any(|(_, e)| matches!(e, Event::StandingBy)),
            "it kept leading"
        );
        let _ = stop.send(());
        j.await.unwrap().unwrap();
    });
}

#[test]
fn another_plan_of_the_same_name_a_second_instance_of_one_name_and_no_etcd_are_refused() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = || plan(&[&etcd.url], WEB);
    let _a = Coordination::join(
        &p(),
        dir.path(),
        Instance {
            name: "a".into(),
            site: None,
        },
    )
    .unwrap();
    let twice = Coordination::join(
        &p(),
        dir.path(),
        Instance {
            name: "a".into(),
            site: None,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(twice, ServerError::InstanceRunning { .. }), "{twice}");
    let other = plan(&[&etcd.url], &WEB.replace("name: web", "name: shop"));
    let err = Coordination::join(
        &other,
        dir.path(),
        Instance {
            name: "z".into(),
            site: None,
        },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .starts_with("another plan named p runs on this etcd (instance a"),
        "{err}"
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    let err = Coordination::join(
        &plan(&[&dead], WEB),
        dir.path(),
        Instance {
            name: "a".into(),
            site: None,
        },
    )
    .err()
    .unwrap();
    let line = err.to_string();
    assert!(
        line.starts_with("coordination: no etcd endpoint answers") && line.contains("serve did not start"),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn a_command_by_hand_leads_while_it_runs_and_never_beside_a_serve_leader() {
    use lifeboat_orchestrator::leadership::Leadership;
    use lifeboat_server::ByHand;
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let p = || plan(&[&etcd.url], WEB);
    // Nobody leads: the command does, for longer than its lease (kept alive meanwhile).
    let hand = ByHand::take(&p(), dir.path(), "operator o on h").unwrap();
    let term = hand.check().unwrap();
    assert_eq!(term, hand.term.revision);
    assert!(
        matches!(hand.site_fenced("a"), Some(Err(why)) if why.contains("no serve instance guards site a")),
        "an unguarded site is no evidence"
    );
    let a = instance(p(), dir.path(), "a", Some("a"), &seen);
    let c = a.coordination.clone().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let run = tokio::spawn(c.clone().run(a.events.clone()));
        until(&seen, Duration::from_secs(5), "a following the command", |_, e| {
            matches!(e, Event::Following { leader, .. } if leader == "operator o on h")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.leads(), None, "a serve instance never leads beside the command");
        let (second, checked, without) = tokio::task::block_in_place(|| {
            let second = ByHand::take(&p(), dir.path(), "operator p on h").err().unwrap();
            let checked = hand.check();
            let without = ByHand::without(&p(), dir.path()).unwrap_err();
            // Ending: another leads at once (no waiting for the lease).
            hand.release();
            (second, checked, without)
        });
        assert!(
            matches!(&second, ServerError::Led { leader, term: t, .. } if leader == "operator o on h" && *t == term),
            "{second}"
        );
        assert!(second.to_string().contains("nothing was done here"), "{second}");
        assert_eq!(checked.unwrap(), term, "the lease outlived its TTL: kept alive");
        assert!(
            matches!(&without, ServerError::CoordinationAnswers { leader: Some(l), .. } if l.starts_with("operator o on h")),
            "{without}"
        );
        let released = Instant::now();
        until(&seen, Duration::from_secs(3), "a leading after the command", |_, e| {
            matches!(e, Event::Leading { .. })
        })
        .await;
        assert!(released.elapsed() < Duration::from_millis(1500), "{:?}", released.elapsed());
        let led = tokio::task::block_in_place(|| ByHand::take(&p(), dir.path(), "operator o on h").err().unwrap());
        assert!(matches!(&led, ServerError::Led { leader, .. } if leader == "a"), "{led}");
        run.abort();
    });
    // No etcd answering: no command can lead, and only then may one act without.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let err = ByHand::take(&plan(&[&dead], WEB), dir.path(), "operator o on h")
        .err()
        .unwrap();
    let line = err.to_string();
    assert!(
        line.starts_with("coordination: no etcd endpoint answers") && line.contains("--without-coordination"),
        "{line}"
    );
    let warn = ByHand::without(&plan(&[&dead], WEB), dir.path()).unwrap();
    assert!(warn.contains("without coordination"), "{warn}");
}

#[test]
fn a_command_by_hand_whose_term_ended_is_refused_by_its_next_check() {
    use lifeboat_orchestrator::leadership::Leadership;
    use lifeboat_server::ByHand;
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = plan(&[&etcd.url], WEB);
    let hand = ByHand::take(&p, dir.path(), "operator o on h").unwrap();
    // Its lease ended (paused past it, or revoked): its term is over.
    let other = lifeboat_etcd::coord::Coordinator::new(
        &[lifeboat_etcd::Endpoint {
            url: etcd.url.clone(),
            cacert: None,
            cert: None,
            key: None,
        }],
        "lifeboat/p/",
    )
    .unwrap();
    other.revoke(hand.term.lease).unwrap();
    let err = hand.check().unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::Deposed { term, .. } if *term == hand.term.revision),
        "{err}"
    );
}
