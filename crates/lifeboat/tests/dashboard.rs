//! The dashboard in a real headless Chromium (Debian's `chromium`; skipped with a line when it is
//! not installed), served by `serve --listen` on loopback with no site to reach: the page loads
//! with no console error, shows the app's row with its RPO coloured by its ratio, draws again
//! without a reload, and starts a drill from the app's page with an operator token while a viewer
//! token gets 403. Screenshots are kept in the test artifacts.
mod common;

use std::time::Duration;

use common::api::{call, init_repo, plan, recovery_point, start, token, trusting, wait_for};
use common::cdp::{self, Browser};

#[test]
fn the_dashboard_shows_each_app_live_and_starts_a_drill_only_for_an_operator() {
    if !cdp::available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let plan = plan(d.path());
    init_repo(d.path());
    recovery_point(d.path(), "x");
    let tokens = d.path().join("tokens.yaml");
    let viewer = token(&tokens, "viewer-1", "viewer");
    let operator = token(&tokens, "oncall", "operator");
    let s = start(d.path(), &plan, &tokens);
    let agent = trusting(&s.cert);
    wait_for("ready", Duration::from_secs(20), || {
        call(&agent, "GET", &format!("{}/readyz", s.base), None, None).0 == 200
    });
    let mut b = Browser::start();
    let shots = cdp::artifacts();
    b.navigate(&format!("{}/#token={operator}", s.base));
    let rpo = b.until(
        "the app's row with its RPO",
        Duration::from_secs(20),
        "document.querySelector('#row-web [data-field=rpo]')?.textContent",
    );
    let rpo = rpo.as_str().unwrap().to_string();
    assert!(rpo.ends_with("x)") && rpo.contains(" s"), "{rpo}");
    let class = b.eval("document.querySelector('#row-web [data-field=rpo]').className");
    assert_eq!(class, "rpo-green", "a fresh recovery point, 1 h objective");
    assert_eq!(
        b.eval("document.querySelector('#row-web [data-field=active]').textContent"),
        "a"
    );
    assert_eq!(b.eval("location.hash"), "", "the token left the address bar");
    // It draws again on its own: the time it shows moves, with no reload (the marker stays).
    b.eval("window.__marker = 1");
    let first = b.eval("document.querySelector('#updated').textContent");
    b.until(
        "a redraw",
        Duration::from_secs(10),
        &format!("document.querySelector('#updated').textContent !== {first}"),
    );
    assert_eq!(b.eval("window.__marker"), 1, "no reload");
    b.screenshot(&shots.join("dashboard-overview.png"));

    // The app's page: a drill as operator is accepted.
    b.navigate(&format!("{}/app/web", s.base));
    b.until(
        "the app's page",
        Duration::from_secs(20),
        "document.querySelector('[data-field=rpo]')?.textContent",
    );
    assert_eq!(
        b.eval("document.querySelector('#do-failover').disabled"),
        true,
        "failover needs the typed name"
    );
    b.eval("document.querySelector('#do-drill').click()");
    let status = b.until(
        "the drill's answer",
        Duration::from_secs(20),
        "document.querySelector('#action-result').getAttribute('data-status')",
    );
    assert_eq!(
        status,
        "202",
        "{:?}",
        b.eval("document.querySelector('#action-result').textContent")
    );
    b.screenshot(&shots.join("dashboard-app.png"));
    wait_for("the drill's end in the audit log", Duration::from_secs(60), || {
        let (_, a) = call(&agent, "GET", &format!("{}/api/v1/audit", s.base), Some(&viewer), None);
        a.as_array().unwrap().iter().any(|e| {
            e["action"] == "drill" && e["who"] == "oncall" && e["result"].as_str().unwrap().starts_with("finished")
        })
    });
    // The same button with a viewer token: 403, shown on the page.
    b.eval(&format!("sessionStorage.setItem('lifeboat-token', '{viewer}')"));
    b.navigate(&format!("{}/app/web", s.base));
    b.until(
        "the app's page",
        Duration::from_secs(20),
        "document.querySelector('[data-field=rpo]')?.textContent",
    );
    b.eval("document.querySelector('#do-drill').click()");
    let status = b.until(
        "the refusal",
        Duration::from_secs(20),
        "document.querySelector('#action-result').getAttribute('data-status')",
    );
    assert_eq!(status, "403");
    let shown = b.eval("document.querySelector('#action-result').textContent");
    assert!(shown.as_str().unwrap().contains("viewer"), "{shown}");
    // A 403 answer is logged by the browser as a failed resource load; nothing else may be.
    let errors: Vec<&String> = b.errors.iter().filter(|e| !e.contains("403")).collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    eprintln!("screenshots in {}", shots.display());
}
