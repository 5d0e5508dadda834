//! Validation: what a parsed plan must satisfy before anything runs it. Each rule adds a
//! [`Problem`] naming the line and field; [`Plan::parse`] refuses a plan with any.
use serde_saphyr::Spanned;

use crate::{docker_transport_problem, App, Plan, Problem, Profile, Site, Traffic, API_VERSION, KIND};

impl Plan {
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        self.header_problems(&mut out);
        self.coordination_problems(&mut out);
        let mut seen = Vec::new();
        for (i, app) in self.apps.iter().enumerate() {
            self.app_sites(i, app, &mut seen, &mut out);
            let on_kubernetes = self.app_selection(i, app, &mut out);
            self.app_probes(i, app, &mut out);
            app_hooks(i, app, &mut out);
            self.app_drill_and_backup(i, app, on_kubernetes, &mut out);
        }
        out
    }

    /// Drill networks (Kubernetes only), the drill schedule and site, and the backup schedule.
    fn app_drill_and_backup(&self, i: usize, app: &App, on_kubernetes: Option<bool>, out: &mut Vec<Problem>) {
        let f = |field: &str| format!("apps[{i}].{field}");
        for a in &app.drill.allow {
            if !is_cidr(&a.value) {
                out.push(Problem {
                    line: line(a),
                    field: f("drill.allow"),
                    message: format!("{:?} is not a network (ADDRESS/PREFIX, e.g. 10.77.0.0/16)", a.value),
                });
            }
        }
        if !app.drill.allow.is_empty() && on_kubernetes == Some(false) {
            out.push(Problem {
                line: line(&app.drill.allow[0]),
                field: f("drill.allow"),
                message: "a Docker drill copy is on an internal network with no route out, reached only through its gateway, so there is nothing to allow; drill.allow is for Kubernetes sites".into(),
            });
        }
        if let Some(e) = &app.drill.every {
            if e.value.0 < std::time::Duration::from_secs(60) {
                push(
                    out,
                    line(e),
                    f("drill.every"),
                    "must be 1m or more (a drill recovers the whole app)".into(),
                );
            }
        }
        if let Some(k) = &app.drill.keep {
            if k.value == 0 {
                push(
                    out,
                    line(k),
                    f("drill.keep"),
                    "must be 1 or more (the newest report says whether the app is drilled)".into(),
                );
            }
        }
        if let Some(s) = &app.drill.site {
            if !self.sites.contains_key(&s.value) {
                push(out, line(s), f("drill.site"), format!("no site {:?} in sites", s.value));
            } else if s.value == app.primary.value {
                push(
                    out,
                    line(s),
                    f("drill.site"),
                    format!(
                        "{:?} is the app's primary: a drill there would compete with production",
                        s.value
                    ),
                );
            }
        }
        if let Some(e) = app.drill.every.as_ref().filter(|_| app.profile != Profile::Dr) {
            push(
                out,
                line(e),
                f("drill.every"),
                "serve drills the apps of profile dr (with a standby) only".into(),
            );
        }
        if let Some(b) = &app.backup {
            if b.every.value.0.is_zero() {
                out.push(Problem {
                    line: line(&b.every),
                    field: f("backup.every"),
                    message: "must be more than 0".into(),
                });
            }
        }
    }

    /// apiVersion, kind, the name, that there are sites and apps, each Docker site's transport,
    /// HAProxy state files.
    fn header_problems(&self, out: &mut Vec<Problem>) {
        if self.api_version.value != API_VERSION {
            push(
                out,
                line(&self.api_version),
                "apiVersion".into(),
                format!("{:?} is not {API_VERSION:?}", self.api_version.value),
            );
        }
        if self.kind.value != KIND {
            push(
                out,
                line(&self.kind),
                "kind".into(),
                format!("{:?} is not {KIND:?}", self.kind.value),
            );
        }
        // The plan's name is a path segment of its state in the repository (`dr/PLAN/APP/...`).
        if !is_name(&self.metadata.name) {
            push(
                out,
                0,
                "metadata.name".into(),
                format!(
                    "{:?}: use lower-case letters, digits and '-' (it names the plan's journals in the repository)",
                    self.metadata.name
                ),
            );
        }
        if self.sites.is_empty() {
            push(out, 0, "sites".into(), "a plan needs at least one site".into());
        }
        if self.apps.is_empty() {
            push(out, 0, "apps".into(), "a plan needs at least one app".into());
        }
        for (name, site) in &self.sites {
            if let Site::Docker {
                host, tls, insecure, ..
            } = site
            {
                if let Some(message) = docker_transport_problem(host.as_deref(), tls.is_some(), *insecure) {
                    push(out, 0, format!("sites.{name}.docker"), message);
                }
            }
        }
        for (i, app) in self.apps.iter().enumerate() {
            if let Some(Traffic::Haproxy {
                state_file: Some(f), ..
            }) = &app.traffic
            {
                if !f.is_absolute() {
                    push(
                        out,
                        line(&app.name),
                        format!("apps[{i}].traffic.haproxy.state_file"),
                        format!(
                            "{} must be an absolute path (the file HAProxy's server-state-file names)",
                            f.display()
                        ),
                    );
                }
            }
        }
    }

    /// The coordination section: endpoints etcd's gateway serves, a lease TTL etcd can keep, a
    /// self-fence that ends before the lease does, TLS files that go together; not beside a
    /// `witness` (the quorum replaces it).
    fn coordination_problems(&self, out: &mut Vec<Problem>) {
        let Some(c) = &self.coordination else { return };
        let mut bad = |field: &str, message: String| {
            let field = if field.is_empty() {
                "coordination".to_string()
            } else {
                format!("coordination.{field}")
            };
            push(out, 0, field, message)
        };
        if self.witness.is_some() {
            bad(
                "",
                "a plan has either `witness` or `coordination`, not both: with coordination the serve instances' \
                 majority verdict replaces the witness (run `serve` where `watch --witness` ran)"
                    .into(),
            );
        }
        if c.etcd.endpoints.is_empty() {
            bad("etcd.endpoints", "name at least one etcd client URL".into());
        }
        let mut https = false;
        for (i, e) in c.etcd.endpoints.iter().enumerate() {
            let rest = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://"));
            https |= e.starts_with("https://");
            match rest {
                Some(hp)
                    if !hp.is_empty()
                        && !hp.contains('/')
                        && hp
                            .rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) => {}
                _ => bad(
                    &format!("etcd.endpoints[{i}]"),
                    format!("{e:?} is not an etcd client URL like http://HOST:2379 or https://HOST:2379"),
                ),
            }
        }
        let ttl = c.ttl();
        if ttl < std::time::Duration::from_secs(2)
            || ttl > std::time::Duration::from_secs(300)
            || ttl.subsec_nanos() != 0
        {
            bad(
                "etcd.ttl",
                format!("{ttl:?}: a lease TTL is whole seconds from 2s to 300s (etcd keeps leases to the second)"),
            );
        }
        let grace = c.self_fence_after();
        if grace <= ttl / 5 || grace > ttl / 2 {
            bad(
                "self_fence_after",
                format!(
                    "{grace:?} must be longer than one keep-alive period ({:?}, a fifth of the TTL) and at most half the \
                     TTL ({:?}), so that the active site's instance has stopped the app before its lease ends and \
                     another instance may start it (docs/dr.md, \"the timing argument\")",
                    ttl / 5,
                    ttl / 2
                ),
            );
        }
        if c.instances == Some(0) {
            bad("instances", "at least one serve instance votes".into());
        }
        if c.etcd.cert.is_some() != c.etcd.key.is_some() {
            bad(
                "etcd.cert",
                "a client certificate needs its key, and a key its certificate".into(),
            );
        }
        if !https && (c.etcd.ca.is_some() || c.etcd.cert.is_some() || c.etcd.key.is_some()) {
            bad("etcd.ca", "TLS files are used only with https:// endpoints".into());
        }
    }

    /// The app's name (unique, a plain name), its sites (known, standby not the primary), its
    /// profile.
    fn app_sites<'p>(&'p self, i: usize, app: &'p App, seen: &mut Vec<&'p str>, out: &mut Vec<Problem>) {
        let site_names: Vec<&str> = self.sites.keys().map(String::as_str).collect();
        let f = |field: &str| format!("apps[{i}].{field}");
        if seen.contains(&app.name.value.as_str()) {
            push(
                out,
                line(&app.name),
                f("name"),
                format!("{:?} is used by two apps", app.name.value),
            );
        }
        seen.push(&app.name.value);
        if !is_name(&app.name.value) {
            push(
                out,
                line(&app.name),
                f("name"),
                "use lower-case letters, digits and '-' (it names snapshots and journals)".into(),
            );
        }
        let site_ref = |s: &Spanned<String>, field: &str, out: &mut Vec<Problem>| {
            if !site_names.contains(&s.value.as_str()) {
                out.push(Problem {
                    line: line(s),
                    field: f(field),
                    message: format!("no site {:?} (sites: {})", s.value, site_names.join(", ")),
                });
            }
        };
        site_ref(&app.primary, "primary", out);
        if app.profile == Profile::MultiSite {
            out.push(Problem {
                line: line(&app.name),
                field: f("profile"),
                message: "profile multi-site is accepted by the format but not carried out by this version (nothing \
                          would keep the app active on several sites); use dr or single-site"
                    .into(),
            });
        }
        match (&app.profile, &app.standby) {
            (Profile::Dr, None) => out.push(Problem {
                line: line(&app.name),
                field: f("standby"),
                message: "profile dr needs a standby site".into(),
            }),
            (_, Some(s)) => {
                site_ref(s, "standby", out);
                if s.value == app.primary.value {
                    out.push(Problem {
                        line: line(s),
                        field: f("standby"),
                        message: "the standby must be another site than the primary".into(),
                    });
                }
            }
            _ => {}
        }
    }

    /// What selects the app, which depends on the kind of its sites (one kind). Returns whether
    /// they are Kubernetes sites (`None`: unknown sites).
    fn app_selection(&self, i: usize, app: &App, out: &mut Vec<Problem>) -> Option<bool> {
        let f = |field: &str| format!("apps[{i}].{field}");
        // What selects an app depends on the kind of its sites, which must be one kind.
        let kinds: Vec<(&Spanned<String>, bool)> = [Some(&app.primary), app.standby.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s, matches!(self.sites.get(&s.value)?, Site::Kubernetes { .. }))))
            .collect();
        if kinds.windows(2).any(|w| w[0].1 != w[1].1) {
            out.push(Problem {
                line: line(kinds[1].0),
                field: f("standby"),
                message: "the standby must be the same kind of site as the primary (Docker or Kubernetes)".into(),
            });
        }
        if kinds.first().is_some_and(|k| k.1) {
            if app.select.namespaces.is_empty() {
                out.push(Problem {
                    line: line(&app.name),
                    field: f("select.namespaces"),
                    message: "an app on Kubernetes sites selects its namespaces".into(),
                });
            }
            if app.select.stack.is_some() {
                out.push(Problem {
                    line: line(&app.name),
                    field: f("select.stack"),
                    message: "stacks are Docker's; on Kubernetes select namespaces and labels".into(),
                });
            }
        } else if !kinds.is_empty() && !app.select.namespaces.is_empty() {
            out.push(Problem {
                line: line(&app.name),
                field: f("select.namespaces"),
                message: "namespaces are Kubernetes'; on Docker select labels or a stack".into(),
            });
        }
        kinds.first().map(|k| k.1)
    }

    /// Objectives, health probes and verify checks, and the site addresses they need.
    fn app_probes(&self, i: usize, app: &App, out: &mut Vec<Problem>) {
        let f = |field: &str| format!("apps[{i}].{field}");
        if let Some(o) = &app.objectives {
            for (name, d) in [("objectives.rto", &o.rto), ("objectives.rpo", &o.rpo)] {
                if let Some(d) = d {
                    if d.value.0.is_zero() {
                        out.push(Problem {
                            line: line(d),
                            field: f(name),
                            message: "must be more than 0".into(),
                        });
                    }
                }
            }
        }
        for (j, h) in app.health.iter().enumerate() {
            let hf = |field: &str| f(&format!("health[{j}].{field}"));
            for (name, v) in [
                ("failure_threshold", &h.failure_threshold),
                ("success_threshold", &h.success_threshold),
            ] {
                if v.value == 0 {
                    out.push(Problem {
                        line: line(v),
                        field: hf(name),
                        message: "must be at least 1".into(),
                    });
                }
            }
            if h.interval.value.0.is_zero() {
                out.push(Problem {
                    line: line(&h.interval),
                    field: hf("interval"),
                    message: "must be more than 0".into(),
                });
            }
            match (&h.probe.http, &h.probe.tcp) {
                (None, None) | (Some(_), Some(_)) => out.push(Problem {
                    line: line(&h.interval),
                    field: hf("http|tcp"),
                    message: "a probe is either http or tcp".into(),
                }),
                (Some(http), None) if !(http.url.starts_with("http://") || http.url.starts_with("https://")) => out
                    .push(Problem {
                        line: line(&h.interval),
                        field: hf("http.url"),
                        message: format!("{:?} is not an http(s) URL", http.url),
                    }),
                _ => {}
            }
        }
        let uses_site = app.health.iter().any(|h| {
            h.probe.http.as_ref().is_some_and(|p| p.url.contains("{site}"))
                || h.probe.tcp.as_ref().is_some_and(|p| p.address.contains("{site}"))
        }) || app
            .verify
            .iter()
            .any(|c| c.http.as_ref().is_some_and(|h| h.url.contains("{site}")));
        if uses_site {
            for s in std::iter::once(&app.primary).chain(app.standby.as_ref()) {
                if self.sites.get(&s.value).is_some_and(|site| site.address().is_none()) {
                    out.push(Problem {
                        line: line(s),
                        field: format!("sites.{}.address", s.value),
                        message: format!(
                            "app {:?} probes {{site}}, but site {:?} has no address (set it, or use a tcp:// host)",
                            app.name.value, s.value
                        ),
                    });
                }
            }
        }
    }
}

/// The plan hooks: a container, a program, a timeout.
fn app_hooks(i: usize, app: &App, out: &mut Vec<Problem>) {
    let f = |field: &str| format!("apps[{i}].{field}");
    for (phase, hooks) in [
        ("pre_backup", &app.hooks.pre_backup),
        ("post_backup", &app.hooks.post_backup),
        ("post_restore", &app.hooks.post_restore),
    ] {
        for (k, h) in hooks.iter().enumerate() {
            let e = &h.exec.value;
            if e.container.is_empty() {
                push(
                    out,
                    line(&h.exec),
                    f(&format!("hooks.{phase}[{k}].exec.container")),
                    "must name a container".into(),
                );
            }
            if e.command.is_empty() || e.command[0].is_empty() {
                push(
                    out,
                    line(&h.exec),
                    f(&format!("hooks.{phase}[{k}].exec.command")),
                    "must name a program".into(),
                );
            }
            if h.timeout.0.is_zero() {
                push(
                    out,
                    line(&h.exec),
                    f(&format!("hooks.{phase}[{k}].timeout")),
                    "must be more than 0".into(),
                );
            }
        }
    }
}

fn push(out: &mut Vec<Problem>, line: u64, field: String, message: String) {
    out.push(Problem { line, field, message });
}

fn line<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// Whether `s` is `ADDRESS/PREFIX` with a prefix length that fits the address.
fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else { return false };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}
