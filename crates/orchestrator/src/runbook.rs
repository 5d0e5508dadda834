//! A Markdown runbook: how to fail each app over and back by hand, with the plain `docker`,
//! `lifeboat restore`, `nsupdate`, `socat` and `curl` commands, for the day the tool itself cannot
//! run. It is written from the plan alone (no site is contacted) and names no secret: URLs are
//! shown without user info, query and fragment (`lifeboat_model::redact::shown_url`), with a note
//! to take those from the plan when the plan's URL has them.
use std::path::Path;

use lifeboat_model::redact::shown_url;

use lifeboat_plan::{App, Plan, Profile, Site, StandbyMode, Traffic};

use crate::platform::{self, HandCommands};

/// The hand commands of `app` on `site`, by the site's kind.
fn kit(plan: &Plan, app: &App, site: &str) -> Box<dyn HandCommands> {
    let default = Site::Docker {
        host: None,
        address: None,
        tls: None,
        insecure: false,
    };
    let s = plan.sites.get(site).unwrap_or(&default);
    platform::kind(s).hand(app, s)
}

/// The app's selection in words.
fn selection(app: &App) -> String {
    if app.select.namespaces.is_empty() {
        return platform::docker_filters(app);
    }
    let labels: Vec<String> = app.select.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "namespaces {}{}",
        app.select.namespaces.join(", "),
        if labels.is_empty() {
            String::new()
        } else {
            format!(", labels {}", labels.join(","))
        }
    )
}

fn addr(plan: &Plan, site: &str) -> String {
    plan.sites
        .get(site)
        .and_then(Site::address)
        .unwrap_or_else(|| format!("<address of {site}>"))
}

/// The runbook for every app of `plan` (`path` is the plan file, named in the text).
pub fn markdown(plan: &Plan, path: &Path) -> String {
    let name = &plan.metadata.name;
    let mut s = format!(
        "# Runbook: DR plan `{name}`\n\nWritten by `lifeboat runbook {}` from the plan alone. Follow it when Lifeboat itself \
         cannot run; when it can, `lifeboat failover {}` does all of this, journaled and measured.\n\n\
         Repository: `{}` (its password is kept apart from this runbook).\n\n## Sites\n\n| site | platform | address |\n|---|---|---|\n",
        path.display(),
        path.display(),
        plan.repository
    );
    for (n, site) in &plan.sites {
        let (kind, where_) = platform::kind(site).describe(site);
        s += &format!("| {n} | {kind} ({where_}) | {} |\n", addr(plan, n));
    }
    for app in &plan.apps {
        s += &app_section(plan, app);
    }
    s
}

fn app_section(plan: &Plan, app: &App) -> String {
    let a = &app.name.value;
    let p = &app.primary.value;
    let mut s = format!("\n## App `{a}`\n\n");
    let obj = app.objectives.as_ref();
    s += &format!(
        "- profile: {:?}; primary: {p}; standby: {}; standby mode: {:?}\n- objectives: RTO {}, RPO {}\n- selection: {}\n",
        app.profile,
        app.standby.as_ref().map(|s| s.value.as_str()).unwrap_or("none"),
        app.standby_mode,
        obj.and_then(|o| o.rto.as_ref()).map(|d| format!("{:?}", d.value.0)).unwrap_or_else(|| "-".into()),
        obj.and_then(|o| o.rpo.as_ref()).map(|d| format!("{:?}", d.value.0)).unwrap_or_else(|| "-".into()),
        selection(app)
    );
    let Some(sb) = app.standby.as_ref().filter(|_| app.profile == Profile::Dr) else {
        s += "\nNo standby: recover by restoring the latest snapshot (`lifeboat snapshots --tag` below) on a new site.\n";
        return s;
    };
    let sb = &sb.value;
    let (kp, ks) = (kit(plan, app, p), kit(plan, app, sb));
    s += &format!("\n### Fail over from {p} to {sb}\n\n");
    s += &format!(
        "1. **Decide.** Confirm the primary is really down from two places (not a partition of your own network):\n   {}\n",
        probes(app, &addr(plan, p))
    );
    s += &format!(
        "2. **Fence the primary** so it cannot write: {}\n   If {p} cannot be reached, make sure it stays off (power, network) \
         before going on; note the time.\n",
        kp.fence(app.stop_grace.map(|g| g.0.as_secs()))
    );
    s += &format!(
        "3. **Find the recovery point**: `lifeboat --repo {} snapshots` and take the newest with tags `plan={}` and `app={a}`.\n",
        plan.repository, plan.metadata.name
    );
    if app.standby_mode == StandbyMode::Hot {
        s += &format!(
            "4. **Bring the data.** The hot standby holds the app at zero replicas with the data of the last backup. If a newer \
             snapshot exists: `lifeboat restore SNAPSHOT --to {} --replicas 0 --existing update`.\n",
            ks.restore_to()
        );
    } else {
        s += &format!(
            "4. **Restore**: `lifeboat restore SNAPSHOT --to {} --replicas 0 --existing update`.\n",
            ks.restore_to()
        );
    }
    s += &format!("5. **Start** on {sb}: {}\n", ks.start());
    s += &format!("6. **Wait for health** on {sb}:\n   {}\n", probes(app, &addr(plan, sb)));
    for h in &app.hooks.post_restore {
        let e = &h.exec.value;
        s += &format!(
            "   Then run the plan's post_restore hook: {}{}.\n",
            ks.exec(
                &e.container,
                &e.command.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
            ),
            if h.on_error == lifeboat_plan::HookOnError::Continue {
                " (a failure may be ignored)"
            } else {
                ""
            }
        );
    }
    s += &format!("7. **Switch traffic** to {sb}:\n{}", traffic(app, true));
    s += &format!("8. **Verify**:\n{}", checks(app, &addr(plan, sb)));
    s += &format!(
        "\n### Fail back from {sb} to {p}\n\nThe same steps the other way round, after a backup of {sb} taken once it is \
         stopped ({}), so what was written on {sb} comes back to {p}. Traffic:\n{}",
        ks.backup(&plan.metadata.name, a),
        traffic(app, false)
    );
    s
}

fn probes(app: &App, address: &str) -> String {
    if app.health.is_empty() {
        return "(the plan has no health probes: check the app by hand)".into();
    }
    app.health
        .iter()
        .map(|h| {
            if let Some(http) = &h.probe.http {
                format!(
                    "`curl -fsS -m {} {}`{}",
                    h.timeout.0.as_secs().max(1),
                    runbook_url(&http.url.replace("{site}", address)),
                    secret_note(&http.url)
                )
            } else if let Some(tcp) = &h.probe.tcp {
                let a = tcp.address.replace("{site}", address);
                let (host, port) = a.rsplit_once(':').unwrap_or((&a, ""));
                format!("`nc -z -w {} {host} {port}`", h.timeout.0.as_secs().max(1))
            } else {
                String::new()
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn checks(app: &App, address: &str) -> String {
    if app.verify.is_empty() {
        return "   (the plan has no verify checks)\n".into();
    }
    app.verify
        .iter()
        .filter_map(|c| c.http.as_ref())
        .map(|h| {
            format!(
                "   `curl -fsS {}`{}{}\n",
                runbook_url(&h.url.replace("{site}", address)),
                secret_note(&h.url),
                h.expect_body_contains
                    .as_ref()
                    .map(|w| format!(" must contain `{w}`"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn traffic(app: &App, to_standby: bool) -> String {
    match &app.traffic {
        None => "   (the plan has no traffic section: move clients by hand)\n".into(),
        Some(Traffic::Dns {
            server,
            zone,
            name,
            ttl,
            tsig_key,
            primary,
            standby,
        }) => {
            let to = if to_standby { standby } else { primary };
            let (host, port) = server.rsplit_once(':').unwrap_or((server, "53"));
            let fqdn = if name.ends_with('.') { name.clone() } else { format!("{name}.{zone}") };
            format!(
                "   ```\n   nsupdate -k {} <<EOF\n   server {host} {port}\n   zone {zone}\n   update delete {fqdn} A\n   update add {fqdn} {ttl} A {to}\n   send\n   EOF\n   dig +short -p {port} @{host} {fqdn}   # must print {to}\n   ```\n",
                tsig_key.display()
            )
        }
        Some(Traffic::Haproxy {
            socket,
            backend,
            primary,
            standby,
            state_file,
        }) => {
            let (off, on) = if to_standby { (primary, standby) } else { (standby, primary) };
            let sock = socket
                .strip_prefix("unix://")
                .map(|p| format!("UNIX-CONNECT:{p}"))
                .unwrap_or_else(|| format!("TCP:{}", socket.trim_start_matches("tcp://")));
            let save = state_file
                .as_ref()
                .map(|f| format!("   echo 'show servers state' | socat stdio {sock} > {}\n", f.display()))
                .unwrap_or_default();
            format!(
                "   ```\n   echo 'set server {backend}/{off} state maint' | socat stdio {sock}\n   echo 'set server {backend}/{on} state ready' | socat stdio {sock}\n   echo 'shutdown sessions server {backend}/{off}' | socat stdio {sock}\n{save}   ```\n   (in this order: traffic is never on both; the last lines close what is still open to {off} and keep the switch across a reload)\n"
            )
        }
        Some(Traffic::Webhook { url, .. }) => format!(
            "   POST to `{}`{} the JSON `{{\"plan\",\"app\",\"operation\",\"sequence\",\"to\":\"{}\",\"reason\",\"time\"}}` (a new operation id and a sequence above the last one sent) signed with the secret file's HMAC-SHA256 \
             in the header `X-Lifeboat-Signature: sha256=HEX` (see docs/traffic.md), or switch in the balancer's own console.\n",
            runbook_url(url),
            secret_note(url),
            if to_standby { "standby" } else { "primary" }
        ),
    }
}

/// A URL as the runbook prints it: without the parts where secrets hide.
fn runbook_url(url: &str) -> String {
    shell_quote(&shown_url(url))
}

/// When the plan's URL has user info, a query or a fragment (left out of the runbook): a note
/// saying where to find them.
fn secret_note(url: &str) -> &'static str {
    if shown_url(url) != url && (url.contains('@') || url.contains('?') || url.contains('#')) {
        " (add the user info, query or fragment of the plan's URL, left out here)"
    } else {
        ""
    }
}

/// `a` quoted for a POSIX shell when it needs it.
fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@".contains(&b)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sites: &str, select: &str) -> String {
        format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: shop}}\nrepository: /r\nsites:\n{sites}\napps:\n  - name: shop\n    profile: dr\n    primary: a\n    standby: b\n    standby_mode: hot\n    stop_grace: 2s\n    select: {select}\n    hooks:\n      post_restore: [{{exec: {{container: \"shop/db/pg\", command: [psql, -c, \"select 1\"]}}}}]\n"
        )
    }

    #[test]
    fn the_runbook_speaks_each_sites_language() {
        let docker = plan(
            "  a: {docker: {host: \"unix:///a.sock\", address: 10.0.0.1}}\n  b: {docker: {host: \"unix:///b.sock\", address: 10.0.0.2}}",
            "{labels: {app: shop}}",
        );
        let md = markdown(&Plan::parse("p.yaml", &docker).unwrap(), Path::new("p.yaml"));
        assert!(
            md.contains(
                "`docker -H unix:///a.sock stop -t 2 $(docker -H unix:///a.sock ps -q --filter label=app=shop)`"
            ),
            "{md}"
        );
        assert!(md.contains("--to docker:unix:///b.sock --replicas 0"), "{md}");
        assert!(
            md.contains("`docker -H unix:///b.sock exec shop/db/pg psql -c 'select 1'`"),
            "{md}"
        );

        let kube = plan(
            "  a: {kubernetes: {kubeconfig: /k/a, context: a, address: 10.0.0.1}}\n  b: {kubernetes: {kubeconfig: /k/b, context: b, address: 10.0.0.2}}",
            "{namespaces: [shop], labels: {app: shop}}",
        );
        let md = markdown(&Plan::parse("p.yaml", &kube).unwrap(), Path::new("p.yaml"));
        assert!(md.contains("selection: namespaces shop, labels app=shop"), "{md}");
        assert!(
            md.contains(
                "kubectl --kubeconfig /k/a --context a -n shop get deploy,statefulset -l app=shop -o jsonpath="
            ),
            "{md}"
        );
        assert!(md.contains("scale \"$w\" --replicas=0"), "{md}");
        assert!(
            md.contains("--to kube:b --kubeconfig /k/b --replicas 0 --existing update"),
            "{md}"
        );
        assert!(
            md.contains("kubectl --kubeconfig /k/b --context b -n shop exec db -c pg -- psql -c 'select 1'"),
            "{md}"
        );
        assert!(md.contains("`lifeboat backup kube --kubeconfig /k/b --context b -n shop -l app=shop --tag plan=shop --tag app=shop`"), "{md}");
        assert!(!md.contains("docker"), "{md}");
    }

    #[test]
    fn the_runbook_prints_no_url_credential_or_token() {
        let yaml = "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {name: shop}\nrepository: /r\n\
                    sites:\n  a: {docker: {host: unix:///a.sock, address: 10.0.0.1}}\n  b: {docker: {host: unix:///b.sock, address: 10.0.0.2}}\n\
                    apps:\n  - name: shop\n    primary: a\n    standby: b\n    select: {labels: {app: shop}}\n\
                    \x20   health: [{http: {url: \"http://u:MARKERPW@{site}:8080/healthz?token=MARKERTOKEN\"}}]\n\
                    \x20   verify: [{http: {url: \"http://{site}:8080/items?key=MARKERKEY\", expect_body_contains: widget}}]\n\
                    \x20   traffic: {webhook: {url: \"https://u:MARKERHOOKPW@hooks.example.test/x?token=MARKERHOOK#f\", secret_file: s}}\n";
        let md = markdown(&Plan::parse("p.yaml", yaml).unwrap(), Path::new("p.yaml"));
        assert!(!md.contains("MARKER"), "{md}");
        assert!(
            md.contains("`curl -fsS -m 2 http://10.0.0.2:8080/healthz` (add the user info"),
            "{md}"
        );
        assert!(
            md.contains("`curl -fsS http://10.0.0.2:8080/items` (add the user info"),
            "{md}"
        );
        assert!(
            md.contains("POST to `https://hooks.example.test/x` (add the user info"),
            "{md}"
        );
    }

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("pg_dump"), "pg_dump");
        assert_eq!(shell_quote("/var/lib/x.sql"), "/var/lib/x.sql");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
