//! Traffic routers against real servers: the lab's BIND 9 and HAProxy (`lab/lab up --dns --haproxy`,
//! which `scripts/test.sh` runs; started from here when `lab/lab env` does not show them, which needs
//! root), and a small HTTP server of the test's own for webhooks. `dig` (Debian's dnsutils, installed
//! by the lab) checks DNS independently of the code under test.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lifeboat_lab_support::{env as lab_env, script as lab_script};
use lifeboat_plan::Traffic;
use lifeboat_traffic::{router, webhook_signature, Route, Router, Side, SwitchContext, TrafficAfter, TrafficError};

struct Lab {
    dns_server: String,
    dns_zone: String,
    dns_key: PathBuf,
    haproxy_socket: String,
    haproxy_tcp_socket: Option<String>,
    haproxy_backend: String,
    haproxy_state_file: PathBuf,
}

/// The lab's traffic servers; starts them (once per test run) when they are not up.
fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let mut vars = lab_env();
        if !vars.contains_key("LAB_DNS_SERVER") || !vars.contains_key("LAB_HAPROXY_SOCKET") {
            eprintln!("lab: DNS or HAProxy not up; running `lab/lab up --dns --haproxy`");
            let out = Command::new(lab_script())
                .args(["up", "--dns", "--haproxy"])
                .output()
                .expect("run lab/lab up");
            assert!(
                out.status.success(),
                "`lab/lab up --dns --haproxy` failed (it needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            vars = lab_env();
        }
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("lab/lab env has no {k}; start the lab with `lab/lab up --dns --haproxy`"))
        };
        Lab {
            dns_server: get("LAB_DNS_SERVER"),
            dns_zone: get("LAB_DNS_ZONE"),
            dns_key: PathBuf::from(get("LAB_DNS_KEY")),
            haproxy_socket: get("LAB_HAPROXY_SOCKET"),
            haproxy_tcp_socket: vars.get("LAB_HAPROXY_TCP_SOCKET").cloned(),
            haproxy_backend: get("LAB_HAPROXY_BACKEND"),
            haproxy_state_file: PathBuf::from(get("LAB_HAPROXY_STATE_FILE")),
        }
    })
}

const SITE_A: &str = "10.77.1.2";
const SITE_B: &str = "10.77.2.2";

fn ctx() -> SwitchContext {
    SwitchContext {
        plan: "lab".into(),
        app: "app".into(),
        reason: "drill".into(),
        operation: "20260102T030405Z-lab1".into(),
        sequence: 1,
    }
}

// ---- DNS ------------------------------------------------------------------------------------

/// A name of this test run only (tests run in parallel and the lab outlives them).
fn unique(test: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000_000;
    format!("t-{test}-{}-{t}", std::process::id())
}

/// Tests that change the zone, one at a time (the idempotence test watches the zone's serial).
static DNS: Mutex<()> = Mutex::new(());

fn dns_lock() -> std::sync::MutexGuard<'static, ()> {
    DNS.lock().unwrap_or_else(|e| e.into_inner())
}

fn dns_traffic(server: &str, name: &str, key: &Path) -> Traffic {
    let lab = lab();
    Traffic::Dns {
        server: server.to_string(),
        zone: lab.dns_zone.clone(),
        name: name.to_string(),
        ttl: 5,
        tsig_key: key.to_path_buf(),
        primary: SITE_A.into(),
        standby: SITE_B.into(),
    }
}

fn dns_router(name: &str) -> Box<dyn Router> {
    let lab = lab();
    router(&dns_traffic(&lab.dns_server, name, &lab.dns_key), Path::new("/")).expect("dns router")
}

/// `dig` of NAME TYPE at the lab server: the records' data, sorted.
fn dig(name: &str, rtype: &str) -> Vec<String> {
    let lab = lab();
    let (host, port) = lab.dns_server.rsplit_once(':').unwrap();
    let fqdn = if name == "@" {
        lab.dns_zone.clone()
    } else {
        format!("{name}.{}", lab.dns_zone)
    };
    let out = Command::new("dig")
        .args([
            "-p",
            port,
            &format!("@{host}"),
            &fqdn,
            rtype,
            "+short",
            "+norecurse",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("run dig (Debian's dnsutils)");
    assert!(
        out.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn soa_serial() -> String {
    let soa = dig("@", "SOA");
    soa.first()
        .and_then(|s| s.split_whitespace().nth(2))
        .expect("an SOA")
        .to_string()
}

/// Removes a test's name from the lab zone (with nsupdate: independent of the code under test).
fn cleanup(name: &str) {
    let lab = lab();
    let (host, port) = lab.dns_server.rsplit_once(':').unwrap();
    let script = format!(
        "server {host} {port}\nzone {zone}\nupdate delete {name}.{zone} A\nsend\n",
        zone = lab.dns_zone
    );
    let mut c = Command::new("nsupdate")
        .arg("-k")
        .arg(&lab.dns_key)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nsupdate");
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let _ = c.wait();
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn dns_switch_and_back_seen_by_dig() {
    let _guard = dns_lock();
    let name = unique("switch");
    let r = dns_router(&name);
    assert!(
        r.describe().starts_with(&format!("dns {name}.lab.test. at ")),
        "{}",
        r.describe()
    );
    assert!(matches!(r.current().unwrap(), Route::Unknown(why) if why.contains("does not exist")));

    r.switch(Side::Standby, &ctx()).unwrap();
    assert_eq!(dig(&name, "A"), [SITE_B]);
    assert_eq!(r.current().unwrap(), Route::On(Side::Standby));

    r.switch(Side::Primary, &ctx()).unwrap();
    assert_eq!(dig(&name, "A"), [SITE_A]);
    assert_eq!(r.current().unwrap(), Route::On(Side::Primary));

    // A record set of exactly one record with the plan's TTL.
    let lab = lab();
    let (host, port) = lab.dns_server.rsplit_once(':').unwrap();
    let out = Command::new("dig")
        .args([
            "-p",
            port,
            &format!("@{host}"),
            &format!("{name}.{}", lab.dns_zone),
            "A",
            "+noall",
            "+answer",
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 1, "{answer}");
    assert_eq!(lines[0].split_whitespace().nth(1), Some("5"), "{answer}");
    cleanup(&name);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn dns_switch_is_idempotent() {
    let _guard = dns_lock();
    let name = unique("idem");
    let r = dns_router(&name);
    r.switch(Side::Standby, &ctx()).unwrap();
    let serial = soa_serial();
    // Switching to where traffic is: success, and nothing visible changes (BIND does not even bump
    // the zone's serial for an update without net effect).
    r.switch(Side::Standby, &ctx()).unwrap();
    r.switch(Side::Standby, &ctx()).unwrap();
    assert_eq!(dig(&name, "A"), [SITE_B]);
    assert_eq!(soa_serial(), serial);
    cleanup(&name);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn dns_wrong_secret_is_rejected_and_record_unchanged() {
    let _guard = dns_lock();
    let name = unique("badsig");
    let good = dns_router(&name);
    good.switch(Side::Primary, &ctx()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read_to_string(&lab().dns_key).unwrap();
    let key_name = real.split('"').nth(1).unwrap().to_string();
    // The same key name and algorithm with another secret; relative path, resolved against the plan's dir.
    std::fs::write(
        dir.path().join("wrong.key"),
        format!("key \"{key_name}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=\";\n}};\n"),
    )
    .unwrap();
    let bad = router(
        &dns_traffic(&lab().dns_server, &name, Path::new("wrong.key")),
        dir.path(),
    )
    .unwrap();
    let e = bad.switch(Side::Standby, &ctx()).unwrap_err();
    match &e {
        TrafficError::TsigRejected { code, key, .. } => {
            assert_eq!(code, "BADSIG", "{e}");
            assert_eq!(key, &key_name);
        }
        other => panic!("expected TsigRejected, got {other:?}"),
    }
    assert!(e.to_string().contains("the record is unchanged"), "{e}");
    assert!(!e.to_string().contains("d3Jvbmc"), "{e}");
    assert_eq!(e.traffic_after(), TrafficAfter::Unchanged);
    assert!(!e.retry_may_help());
    assert_eq!(dig(&name, "A"), [SITE_A]);

    // A key the server does not know at all.
    std::fs::write(
        dir.path().join("unknown.key"),
        "key \"no-such-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"d3Jvbmctc2VjcmV0\";\n};\n",
    )
    .unwrap();
    let unknown = router(
        &dns_traffic(&lab().dns_server, &name, Path::new("unknown.key")),
        dir.path(),
    )
    .unwrap();
    let e = unknown.switch(Side::Standby, &ctx()).unwrap_err();
    assert!(
        matches!(&e, TrafficError::TsigRejected { code, .. } if code == "BADKEY"),
        "{e}"
    );
    assert_eq!(dig(&name, "A"), [SITE_A]);
    cleanup(&name);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn dns_unreachable_server_fails_fast_and_clearly() {
    // A port nothing listens on: bound, then released.
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("127.0.0.1:{port}");
    let r = router(&dns_traffic(&server, "app", &lab().dns_key), Path::new("/")).unwrap();
    let start = Instant::now();
    let e = r.switch(Side::Standby, &ctx()).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(7), "{:?}", start.elapsed());
    assert!(
        matches!(&e, TrafficError::Unreachable { server: s, .. } if *s == server),
        "{e}"
    );
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert!(e.retry_may_help());
    assert_eq!(e.traffic_after(), TrafficAfter::Unchanged);
    assert!(matches!(r.current(), Err(TrafficError::Unreachable { .. })));

    // A server that never answers: two tries of 3 s, then a timeout that says the change may have
    // been applied.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap().to_string();
    let r = router(&dns_traffic(&server, "app", &lab().dns_key), Path::new("/")).unwrap();
    let start = Instant::now();
    let e = r.switch(Side::Standby, &ctx()).unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        matches!(
            &e,
            TrafficError::Timeout {
                tries: 2,
                change_sent: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.traffic_after(), TrafficAfter::Unknown);
    assert!(e.to_string().contains("may or may not have been applied"), "{e}");
    drop(silent);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn dns_lab_record_is_readable() {
    // The zone's own record `app` (10.77.1.2 when the lab starts; tests do not change it).
    let r = dns_router("app");
    assert!(r.current().is_ok());
}

// ---- HAProxy --------------------------------------------------------------------------------

/// HAProxy tests share backend app's servers a and b: one at a time.
static HAPROXY: Mutex<()> = Mutex::new(());

fn haproxy_traffic(socket: &str, primary: &str, standby: &str) -> Traffic {
    Traffic::Haproxy {
        socket: socket.to_string(),
        backend: lab().haproxy_backend.clone(),
        primary: primary.into(),
        standby: standby.into(),
        state_file: None,
    }
}

/// A runtime API command over the unix socket, independent of the code under test.
fn haproxy_cmd(cmd: &str) -> String {
    let path = lab().haproxy_socket.strip_prefix("unix://").unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect to haproxy's socket");
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `server -> admin state` from `show servers state` (0 ready, 1 maint; 4 alone: `disabled` in the
/// configuration, then made ready).
fn admin_states() -> BTreeMap<String, u32> {
    let out = haproxy_cmd(&format!("show servers state {}", lab().haproxy_backend));
    out.lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(3)?.to_string(), f.get(6)?.parse().ok()?))
        })
        .collect()
}

fn in_maint(state: u32) -> bool {
    state & 0x63 != 0
}

/// Back to the lab's starting point: a ready, b in maintenance.
fn haproxy_reset() {
    let be = &lab().haproxy_backend;
    assert_eq!(haproxy_cmd(&format!("set server {be}/b state maint")).trim(), "");
    assert_eq!(haproxy_cmd(&format!("set server {be}/a state ready")).trim(), "");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn haproxy_switch_to_b_and_back() {
    let _guard = HAPROXY.lock().unwrap_or_else(|e| e.into_inner());
    haproxy_reset();
    let r = router(&haproxy_traffic(&lab().haproxy_socket, "a", "b"), Path::new("/")).unwrap();
    assert_eq!(r.current().unwrap(), Route::On(Side::Primary));

    r.switch(Side::Standby, &ctx()).unwrap();
    let s = admin_states();
    assert!(in_maint(s["a"]) && !in_maint(s["b"]), "{s:?}");
    assert_eq!(r.current().unwrap(), Route::On(Side::Standby));

    // Idempotent.
    r.switch(Side::Standby, &ctx()).unwrap();
    assert_eq!(admin_states(), s);

    // The TCP socket sees the same.
    if let Some(tcp) = &lab().haproxy_tcp_socket {
        let t = router(&haproxy_traffic(tcp, "a", "b"), Path::new("/")).unwrap();
        assert_eq!(t.current().unwrap(), Route::On(Side::Standby));
        t.switch(Side::Primary, &ctx()).unwrap();
    } else {
        r.switch(Side::Primary, &ctx()).unwrap();
    }
    let s = admin_states();
    assert!(!in_maint(s["a"]) && in_maint(s["b"]), "{s:?}");
    assert_eq!(r.current().unwrap(), Route::On(Side::Primary));
    haproxy_reset();
}

/// `lab/lab reload-haproxy`: a new HAProxy process on the same configuration takes over.
fn haproxy_reload() {
    let out = Command::new(lab_script()).arg("reload-haproxy").output().unwrap();
    assert!(
        out.status.success(),
        "lab/lab reload-haproxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_haproxy_reload_after_a_switch_keeps_traffic_on_the_new_side() {
    let _guard = HAPROXY.lock().unwrap_or_else(|e| e.into_inner());
    let state = &lab().haproxy_state_file;
    haproxy_reset();
    let _ = std::fs::remove_file(state);
    // Without a state file the reload undoes the switch: the configuration (b `disabled`) wins.
    let bare = router(&haproxy_traffic(&lab().haproxy_socket, "a", "b"), Path::new("/")).unwrap();
    bare.switch(Side::Standby, &ctx()).unwrap();
    haproxy_reload();
    assert_eq!(
        bare.current().unwrap(),
        Route::On(Side::Primary),
        "{:?}",
        admin_states()
    );

    // With it, each switch writes the runtime state where `server-state-file` reads it.
    let kept = Traffic::Haproxy {
        socket: lab().haproxy_socket.clone(),
        backend: lab().haproxy_backend.clone(),
        primary: "a".into(),
        standby: "b".into(),
        state_file: Some(state.clone()),
    };
    let r = router(&kept, Path::new("/")).unwrap();
    r.switch(Side::Standby, &ctx()).unwrap();
    haproxy_reload();
    let s = admin_states();
    assert!(in_maint(s["a"]) && !in_maint(s["b"]), "after the reload: {s:?}");
    assert_eq!(r.current().unwrap(), Route::On(Side::Standby));
    r.switch(Side::Primary, &ctx()).unwrap();
    haproxy_reload();
    assert_eq!(r.current().unwrap(), Route::On(Side::Primary), "{:?}", admin_states());
    haproxy_reset();
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn haproxy_nonexistent_server_leaves_traffic_on_the_old_side() {
    let _guard = HAPROXY.lock().unwrap_or_else(|e| e.into_inner());
    haproxy_reset();
    let before = admin_states();
    let r = router(&haproxy_traffic(&lab().haproxy_socket, "a", "nope"), Path::new("/")).unwrap();
    let e = r.switch(Side::Standby, &ctx()).unwrap_err();
    assert!(
        matches!(&e, TrafficError::NoSuchServer { name, side: Side::Standby, .. } if name == "nope"),
        "{e}"
    );
    assert_eq!(e.traffic_after(), TrafficAfter::Unchanged);
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert_eq!(admin_states(), before);
    assert!(!in_maint(before["a"]));
    // A backend that does not exist: HAProxy's own message.
    let r = router(
        &Traffic::Haproxy {
            socket: lab().haproxy_socket.clone(),
            backend: "nope".into(),
            primary: "a".into(),
            standby: "b".into(),
            state_file: None,
        },
        Path::new("/"),
    )
    .unwrap();
    let e = r.switch(Side::Standby, &ctx()).unwrap_err();
    assert!(
        matches!(&e, TrafficError::Haproxy { answer, .. } if answer.contains("Can't find backend")),
        "{e}"
    );
    assert_eq!(admin_states(), before);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn haproxy_both_or_neither_is_unknown() {
    let _guard = HAPROXY.lock().unwrap_or_else(|e| e.into_inner());
    haproxy_reset();
    let be = &lab().haproxy_backend;
    let r = router(&haproxy_traffic(&lab().haproxy_socket, "a", "b"), Path::new("/")).unwrap();
    haproxy_cmd(&format!("set server {be}/b state ready"));
    assert!(matches!(r.current().unwrap(), Route::Unknown(why) if why.contains("split")));
    haproxy_cmd(&format!("set server {be}/a state maint"));
    haproxy_cmd(&format!("set server {be}/b state maint"));
    assert!(matches!(r.current().unwrap(), Route::Unknown(why) if why.contains("neither")));
    // A switch from there ends on one side.
    r.switch(Side::Primary, &ctx()).unwrap();
    assert_eq!(r.current().unwrap(), Route::On(Side::Primary));
    haproxy_reset();
}

// ---- Webhook --------------------------------------------------------------------------------

struct Received {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A one-thread HTTP server on 127.0.0.1:0 answering every request with `status` and `answer`;
/// returns its URL and what it received.
fn http_server(status: u16, answer: &'static str) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/lifeboat?token=t0ps3cret",
        listener.local_addr().unwrap()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut r = BufReader::new(conn);
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            got2.lock().unwrap().push(Received { headers, body });
            let mut conn = r.into_inner();
            let reason = if status == 200 { "OK" } else { "Error" };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, got)
}

fn webhook(url: &str, dir: &Path) -> Box<dyn Router> {
    std::fs::write(dir.join("hook.secret"), "lab-webhook-secret\n").unwrap();
    router(
        &Traffic::Webhook {
            url: url.to_string(),
            secret_file: PathBuf::from("hook.secret"),
        },
        dir,
    )
    .unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn webhook_posts_a_signed_body() {
    let dir = tempfile::tempdir().unwrap();
    let (url, got) = http_server(200, "ok");
    let r = webhook(&url, dir.path());
    assert!(!r.describe().contains("t0ps3cret"), "{}", r.describe());
    assert!(matches!(r.current().unwrap(), Route::Unknown(_)));
    r.switch(Side::Standby, &ctx()).unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    // The signature: HMAC-SHA256 of the exact body with the secret file's bytes, newline trimmed.
    assert_eq!(
        req.headers["x-lifeboat-signature"],
        webhook_signature(b"lab-webhook-secret", &req.body)
    );
    assert_eq!(req.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["plan"], "lab");
    assert_eq!(body["app"], "app");
    assert_eq!(body["to"], "standby");
    assert_eq!(body["reason"], "drill");
    let time = time::OffsetDateTime::parse(
        body["time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(req.headers["x-lifeboat-timestamp"], time.unix_timestamp().to_string());
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 7, "{keys:?}");
}

/// A failover and the failback after it, as the orchestrator sends them: each request names its
/// operation and carries a higher sequence, inside the signed body; the reference receiver acts
/// on each once and refuses the failover's request replayed after the failback.
#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn webhook_bodies_carry_the_operation_and_a_sequence_number() {
    use lifeboat_traffic::{check_delivery, DeliveryRefused, WebhookBody};
    let dir = tempfile::tempdir().unwrap();
    let (url, got) = http_server(200, "ok");
    let r = webhook(&url, dir.path());
    let over = SwitchContext {
        reason: "failover".into(),
        operation: "20260102T030405Z-0001".into(),
        sequence: 41,
        ..ctx()
    };
    let back = SwitchContext {
        reason: "failback".into(),
        operation: "20260102T031000Z-0002".into(),
        sequence: 42,
        ..ctx()
    };
    r.switch(Side::Standby, &over).unwrap();
    r.switch(Side::Primary, &back).unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 2);
    let window = Duration::from_secs(300);
    let now = time::OffsetDateTime::now_utc();
    // The receiver's memory: the last sequence it acted on.
    let mut last = None;
    let mut acted: Vec<WebhookBody> = Vec::new();
    for req in got.iter() {
        let body = check_delivery(
            b"lab-webhook-secret",
            &req.headers["x-lifeboat-signature"],
            &req.body,
            now,
            window,
            last,
        )
        .unwrap();
        last = Some(body.sequence);
        acted.push(body);
    }
    assert_eq!(
        acted
            .iter()
            .map(|b| (b.operation.as_str(), b.sequence, b.to))
            .collect::<Vec<_>>(),
        [
            ("20260102T030405Z-0001", 41, Side::Standby),
            ("20260102T031000Z-0002", 42, Side::Primary)
        ]
    );
    // The failover's request captured and replayed after the failback (within the time window):
    // refused, traffic stays where the failback put it.
    let replay = &got[0];
    assert_eq!(
        check_delivery(
            b"lab-webhook-secret",
            &replay.headers["x-lifeboat-signature"],
            &replay.body,
            now,
            window,
            last
        ),
        Err(DeliveryRefused::Replayed { sequence: 41, last: 42 })
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn webhook_error_status_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _got) = http_server(500, "boom: database on fire");
    let r = webhook(&url, dir.path());
    let e = r.switch(Side::Primary, &ctx()).unwrap_err();
    match &e {
        TrafficError::WebhookStatus { status, body, .. } => {
            assert_eq!(*status, 500);
            assert_eq!(body, "boom: database on fire");
        }
        other => panic!("expected WebhookStatus, got {other:?}"),
    }
    assert!(e.retry_may_help());
    assert!(!e.to_string().contains("t0ps3cret"), "{e}");

    let (url, _got) = http_server(302, "");
    let e = webhook(&url, dir.path()).switch(Side::Primary, &ctx()).unwrap_err();
    assert!(matches!(e, TrafficError::WebhookStatus { status: 302, .. }), "{e}");

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = webhook(&format!("http://127.0.0.1:{port}/x?token=t0ps3cret"), dir.path())
        .switch(Side::Primary, &ctx())
        .unwrap_err();
    assert!(matches!(e, TrafficError::Unreachable { .. }), "{e}");
    assert!(!e.to_string().contains("t0ps3cret"), "{e}");
}

/// Finding 16: maintenance stops new connections only; a switch also closes the sessions still
/// open to the old server. Server a is pointed (runtime API `set server ... addr`) at a listener
/// of this test that accepts and never answers, so a request through the lab's frontend holds a
/// session on a; the switch to b must end it (the listener sees its connection closed).
#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_switch_closes_sessions_to_the_old_server() {
    let _guard = HAPROXY.lock().unwrap_or_else(|e| e.into_inner());
    haproxy_reset();
    let be = lab().haproxy_backend.clone();
    let frontend = lab_env()
        .get("LAB_HAPROXY_FRONTEND")
        .cloned()
        .expect("lab/lab env has LAB_HAPROXY_FRONTEND");
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = slow.local_addr().unwrap().port();
    let set_addr = |addr: &str, port: u16| {
        let answer = haproxy_cmd(&format!("set server {be}/a addr {addr} port {port}"));
        assert!(!answer.contains("failed") && !answer.contains("No such"), "{answer}");
    };
    set_addr("127.0.0.1", port);
    struct Restore<F: Fn()>(F);
    impl<F: Fn()> Drop for Restore<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _restore = Restore(|| {
        let _ = haproxy_cmd(&format!("set server {be}/a addr {SITE_A} port 8080"));
        haproxy_reset();
    });
    let mut client = std::net::TcpStream::connect(&frontend).expect("connect to the lab frontend");
    client.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
    let (mut upstream, _) = slow.accept().expect("HAProxy forwards the request to a");
    upstream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = router(&haproxy_traffic(&lab().haproxy_socket, "a", "b"), Path::new("/")).unwrap();
    r.switch(Side::Standby, &ctx()).unwrap();
    // HAProxy closed its side of the session to a: the upstream connection ends.
    let mut buf = [0u8; 4096];
    let mut got = 0;
    let closed = loop {
        match upstream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) => {
                panic!("the session to a was not closed within 5 s ({e}; {got} bytes read)")
            }
        }
    };
    assert!(closed);
    drop(client);
}
