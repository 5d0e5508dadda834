//! Health probes and verification checks, run against one site.
//!
//! `{site}` in a URL or address becomes the site's address. A probe passes when an HTTP GET answers
//! with an accepted status (default 200-399) within the timeout, or a TCP connection is accepted.
//!
//! What a probe or check says (it goes into journals, reports and logs) names its URL without user
//! info, query and fragment ([`shown_url`]), where credentials and tokens hide.
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use lifeboat_model::redact::{redact, shown_url};
use lifeboat_plan::{App, Check, Health};

/// Fills in `{site}`.
pub fn fill(template: &str, address: &str) -> String {
    template.replace("{site}", address)
}

/// Runs one health probe; `Err` says what failed.
pub fn probe(h: &Health, address: &str) -> Result<(), String> {
    let timeout = h.timeout.0;
    if let Some(http) = &h.probe.http {
        let url = fill(&http.url, address);
        let (status, _) = get(&url, timeout, 0)?;
        let url = shown_url(&url);
        let ok = if http.expect_status.is_empty() {
            (200..400).contains(&status)
        } else {
            http.expect_status.contains(&status)
        };
        if ok {
            Ok(())
        } else {
            Err(format!("GET {url}: status {status}"))
        }
    } else if let Some(tcp) = &h.probe.tcp {
        let addr = fill(&tcp.address, address);
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        TcpStream::connect_timeout(&sa, timeout)
            .map(drop)
            .map_err(|e| format!("connect {addr}: {e}"))
    } else {
        Err("a probe is either http or tcp".into())
    }
}

/// Runs every health probe of `app` once; the first failure, if any.
pub fn healthy(app: &App, address: &str) -> Result<(), String> {
    app.health.iter().try_for_each(|h| probe(h, address))
}

/// Runs one verification check; the result says what was seen.
pub fn verify(c: &Check, address: &str) -> Result<String, String> {
    let Some(http) = &c.http else {
        return Err("a check needs http".into());
    };
    let url = fill(&http.url, address);
    let (status, body) = get(&url, Duration::from_secs(10), 1 << 20)?;
    let url = shown_url(&url);
    if !(200..300).contains(&status) {
        return Err(format!("GET {url}: status {status}"));
    }
    match &http.expect_body_contains {
        Some(want) if !body.contains(want.as_str()) => Err(format!("GET {url}: the answer does not contain {want:?}")),
        Some(want) => Ok(format!("GET {url}: {status}, contains {want:?}")),
        None => Ok(format!("GET {url}: {status}")),
    }
}

/// What went wrong with a request that got no answer, without its URL (ureq's `Display` of a
/// transport error starts with the whole URL).
fn transport_reason(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    let mut reason = t.kind().to_string();
    if let Some(m) = t.message() {
        reason = format!("{reason}: {}", redact(m));
    }
    if let Some(io) = t.source().and_then(|s| s.downcast_ref::<std::io::Error>()) {
        reason = format!("{reason}: {}", redact(&io.to_string()));
    }
    reason
}

/// GET with a total timeout; the status and up to `max_body` bytes of the body.
fn get(url: &str, timeout: Duration, max_body: u64) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .try_proxy_from_env(false)
        .build();
    let resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(format!("GET {}: {}", shown_url(url), transport_reason(&t))),
    };
    let status = resp.status();
    let mut body = String::new();
    if max_body > 0 {
        use std::io::Read;
        let _ = resp.into_reader().take(max_body).read_to_string(&mut body);
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_and_check_messages_name_no_credential() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: p}}\nrepository: /r\n\
             sites:\n  a: {{docker: {{host: unix:///a.sock, address: 127.0.0.1}}}}\n\
             apps:\n  - name: x\n    profile: single-site\n    primary: a\n    select: {{labels: {{app: x}}}}\n\
             \x20   health: [{{http: {{url: \"http://user:MARKERPW@{{site}}:{port}/healthz?token=MARKERTOKEN\"}}, timeout: 1s}}]\n\
             \x20   verify: [{{http: {{url: \"http://user:MARKERPW@{{site}}:{port}/items?token=MARKERTOKEN\"}}}}]\n"
        );
        let plan = lifeboat_plan::Plan::parse("p.yaml", &yaml).unwrap();
        let app = &plan.apps[0];
        let e = probe(&app.health[0], "127.0.0.1").unwrap_err();
        assert!(!e.contains("MARKER"), "{e}");
        assert!(e.contains(&format!("GET http://127.0.0.1:{port}/healthz: ")), "{e}");
        let e = verify(&app.verify[0], "127.0.0.1").unwrap_err();
        assert!(!e.contains("MARKER"), "{e}");
        assert!(e.contains("/items"), "{e}");
    }
}
