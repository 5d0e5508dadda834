//! Leader election, fencing tokens and verdicts against a real etcd (Debian's `etcd-server`),
//! started by each test on free loopback ports with its own data directory. Skipped, with a line
//! saying so, when `etcd` is not installed.
use std::time::{Duration, Instant};

use lifeboat_etcd::coord::{Campaign, CoordError, Coordinator};
use lifeboat_etcd::Endpoint;

use lifeboat_lab_support::etcd::{free_port, Etcd};

fn etcd() -> Option<Etcd> {
    Etcd::start()
}

fn coordinator(urls: &[&str]) -> Coordinator {
    let eps: Vec<Endpoint> = urls
        .iter()
        .map(|u| Endpoint {
            url: u.to_string(),
            ..Default::default()
        })
        .collect();
    Coordinator::new(&eps, "lifeboat/p/").unwrap()
}

/// Waits until `lease` is gone on etcd's clock (its TTL ran out without a keep-alive).
fn until_ended(c: &Coordinator, lease: i64) {
    let started = Instant::now();
    while c.time_to_live(lease).unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "lease {lease:x} did not end"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_instance_leads_the_others_stand_by_and_the_next_term_begins_when_its_lease_ends() {
    let Some(e) = etcd() else { return };
    let (a, b) = (coordinator(&[&e.url]), coordinator(&[&e.url]));
    let la = a.grant(Duration::from_secs(2)).unwrap();
    let lb = b.grant(Duration::from_secs(30)).unwrap();
    let Campaign::Won(ta) = a.campaign("a", la).unwrap() else {
        panic!("the first candidate wins")
    };
    assert_eq!(
        a.campaign("a", la).unwrap(),
        Campaign::Won(ta),
        "a campaign repeated keeps the term"
    );
    match b.campaign("b", lb).unwrap() {
        Campaign::Held(l) => assert_eq!((l.holder.as_str(), l.term), ("a", ta)),
        other => panic!("{other:?}"),
    }
    a.check(ta).unwrap();

    // a stops keeping its lease alive (dead, paused, cut off): its term ends on etcd's clock.
    until_ended(&b, la);
    let Campaign::Won(tb) = b.campaign("b", lb).unwrap() else {
        panic!("b wins once a's lease ended")
    };
    assert!(tb > ta, "a later term has a larger revision: {tb:?} after {ta:?}");
    match a.check(ta) {
        Err(CoordError::Deposed { term, now: Some(l) }) => assert_eq!((term, l.holder.as_str()), (ta, "b")),
        other => panic!("a's old term still holds: {other:?}"),
    }
    assert!(matches!(a.keep_alive(la), Err(CoordError::LeaseEnded { .. })));
}

#[test]
fn a_deposed_leader_s_fenced_write_is_refused_and_changes_nothing() {
    let Some(e) = etcd() else { return };
    let (a, b) = (coordinator(&[&e.url]), coordinator(&[&e.url]));
    let la = a.grant(Duration::from_secs(30)).unwrap();
    let Campaign::Won(ta) = a.campaign("a", la).unwrap() else {
        panic!()
    };
    a.put_fenced(ta, "state/web", b"active=a").unwrap();
    // a is deposed (its lease revoked, as when it ran out while a was paused); b wins.
    a.revoke(la).unwrap();
    let lb = b.grant(Duration::from_secs(30)).unwrap();
    let Campaign::Won(tb) = b.campaign("b", lb).unwrap() else {
        panic!()
    };
    let e = a.put_fenced(ta, "state/web", b"active=a-again").unwrap_err();
    assert!(matches!(e, CoordError::Deposed { .. }), "{e}");
    assert!(e.to_string().contains("b leads since term"), "{e}");
    assert_eq!(
        b.list("state/").unwrap(),
        [("state/web".to_string(), b"active=a".to_vec())],
        "the deposed leader wrote nothing"
    );
    b.put_fenced(tb, "state/web", b"active=b").unwrap();
    assert_eq!(b.list("state/").unwrap()[0].1, b"active=b");
}

#[test]
fn a_leader_that_resigns_lets_another_win_at_once() {
    let Some(e) = etcd() else { return };
    let (a, b) = (coordinator(&[&e.url]), coordinator(&[&e.url]));
    let (la, lb) = (
        a.grant(Duration::from_secs(30)).unwrap(),
        b.grant(Duration::from_secs(30)).unwrap(),
    );
    let Campaign::Won(ta) = a.campaign("a", la).unwrap() else {
        panic!()
    };
    a.resign(ta).unwrap();
    assert!(a.leader().unwrap().is_none());
    assert!(matches!(b.campaign("b", lb).unwrap(), Campaign::Won(_)));
    a.resign(ta).unwrap(); // a term that is over: nothing changes
    assert_eq!(a.leader().unwrap().unwrap().holder, "b");
}

#[test]
fn verdicts_held_by_a_lease_go_away_with_it() {
    let Some(e) = etcd() else { return };
    let c = coordinator(&[&e.url]);
    let (l1, l2) = (
        c.grant(Duration::from_secs(30)).unwrap(),
        c.grant(Duration::from_secs(1)).unwrap(),
    );
    c.publish("verdicts/a", b"{\"down\":false}", l1).unwrap();
    c.publish("verdicts/c", b"{\"down\":true}", l2).unwrap();
    c.publish("other", b"x", l1).unwrap();
    let names: Vec<String> = c.list("verdicts/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["verdicts/a", "verdicts/c"]);
    until_ended(&c, l2);
    let names: Vec<String> = c.list("verdicts/").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["verdicts/a"], "c stopped publishing: its verdict is gone");
}

#[test]
fn an_endpoint_that_does_not_answer_gives_way_to_the_next_and_none_answering_is_one_line() {
    let Some(e) = etcd() else { return };
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = coordinator(&[&dead, &e.url]);
    let lease = c.grant(Duration::from_secs(5)).unwrap();
    assert!(c.keep_alive(lease).unwrap() > Duration::ZERO);
    let none = coordinator(&[&dead]);
    let err = none.grant(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, CoordError::Unreachable { .. }), "{err}");
    assert_eq!(err.retry(), lifeboat_model::Retry::Later);
    let line = err.to_string();
    assert!(
        line.starts_with("coordination: no etcd endpoint answers") && !line.contains('\n'),
        "{line}"
    );
}
