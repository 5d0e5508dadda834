//! DR plans: the YAML document that says which applications run where, how they are backed up,
//! how their health is judged, how traffic reaches them and how a failover is verified.
//! `docs/plan-reference.md` documents every field.
//!
//! [`Plan::parse`] guarantees that a plan it returns is complete and consistent: every site an app
//! names exists, a `dr` app has a standby other than its primary, durations and thresholds are
//! positive, names are unique. Every problem is reported with the file, line and field, all at
//! once ([`PlanError::Invalid`]), so a plan is fixed in one pass. It does not check that sites,
//! DNS servers or URLs are reachable; `lifeboat plan check` does that.
#![forbid(unsafe_code)]

mod duration;
mod model;

pub use duration::parse_duration;
pub use model::*;

use serde_saphyr::Spanned;

/// Why a plan cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file cannot be read.
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
    /// Not YAML, or a field has the wrong type, is unknown, or is missing.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    /// Well-formed, but inconsistent: every problem found, each with its place.
    #[error("{file}: the plan is not valid:\n{}", problems.iter().map(|p| format!("  line {}: {}: {}", p.line, p.field, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, problems: Vec<Problem> },
}

/// One inconsistency in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    /// Where in the plan, as a path (`apps[0].standby`).
    pub field: String,
    pub message: String,
}

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(path: &std::path::Path) -> Result<Plan, PlanError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Plan::parse(&file, &text)
    }

    /// Parses and validates plan text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            PlanError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: first_line(&e.to_string()),
            }
        })?;
        let problems = plan.problems();
        if problems.is_empty() {
            Ok(plan)
        } else {
            Err(PlanError::Invalid {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name.value == name)
    }

    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.api_version.value != API_VERSION {
            push(
                &mut out,
                line(&self.api_version),
                "apiVersion".into(),
                format!("{:?} is not {API_VERSION:?}", self.api_version.value),
            );
        }
        if self.kind.value != KIND {
            push(
                &mut out,
                line(&self.kind),
                "kind".into(),
                format!("{:?} is not {KIND:?}", self.kind.value),
            );
        }
        // The plan's name is a path segment of its state in the repository (`dr/PLAN/APP/...`).
        if !is_name(&self.metadata.name) {
            push(
                &mut out,
                0,
                "metadata.name".into(),
                format!(
                    "{:?}: use lower-case letters, digits and '-' (it names the plan's journals in the repository)",
                    self.metadata.name
                ),
            );
        }
        if self.sites.is_empty() {
            push(&mut out, 0, "sites".into(), "a plan needs at least one site".into());
        }
        if self.apps.is_empty() {
            push(&mut out, 0, "apps".into(), "a plan needs at least one app".into());
        }
        for (name, site) in &self.sites {
            if let Site::Docker {
                host, tls, insecure, ..
            } = site
            {
                if let Some(message) = docker_transport_problem(host.as_deref(), tls.is_some(), *insecure) {
                    push(&mut out, 0, format!("sites.{name}.docker"), message);
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
                        &mut out,
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
        let site_names: Vec<&str> = self.sites.keys().map(String::as_str).collect();
        let mut seen = Vec::new();
        for (i, app) in self.apps.iter().enumerate() {
            let f = |field: &str| format!("apps[{i}].{field}");
            if seen.contains(&app.name.value.as_str()) {
                push(
                    &mut out,
                    line(&app.name),
                    f("name"),
                    format!("{:?} is used by two apps", app.name.value),
                );
            }
            seen.push(&app.name.value);
            if !is_name(&app.name.value) {
                push(
                    &mut out,
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
            site_ref(&app.primary, "primary", &mut out);
            if app.profile == Profile::MultiSite {
                out.push(Problem {
                    line: line(&app.name),
                    field: f("profile"),
                    message:
                        "profile multi-site is accepted by the format but not carried out by this version (nothing \
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
                    site_ref(s, "standby", &mut out);
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
            for (phase, hooks) in [
                ("pre_backup", &app.hooks.pre_backup),
                ("post_backup", &app.hooks.post_backup),
                ("post_restore", &app.hooks.post_restore),
            ] {
                for (k, h) in hooks.iter().enumerate() {
                    let e = &h.exec.value;
                    if e.container.is_empty() {
                        push(
                            &mut out,
                            line(&h.exec),
                            f(&format!("hooks.{phase}[{k}].exec.container")),
                            "must name a container".into(),
                        );
                    }
                    if e.command.is_empty() || e.command[0].is_empty() {
                        push(
                            &mut out,
                            line(&h.exec),
                            f(&format!("hooks.{phase}[{k}].exec.command")),
                            "must name a program".into(),
                        );
                    }
                    if h.timeout.0.is_zero() {
                        push(
                            &mut out,
                            line(&h.exec),
                            f(&format!("hooks.{phase}[{k}].timeout")),
                            "must be more than 0".into(),
                        );
                    }
                }
            }
            for a in &app.drill.allow {
                if !is_cidr(&a.value) {
                    out.push(Problem {
                        line: line(a),
                        field: f("drill.allow"),
                        message: format!("{:?} is not a network (ADDRESS/PREFIX, e.g. 10.77.0.0/16)", a.value),
                    });
                }
            }
            if !app.drill.allow.is_empty() && kinds.first().is_some_and(|k| !k.1) {
                out.push(Problem {
                    line: line(&app.drill.allow[0]),
                    field: f("drill.allow"),
                    message: "a Docker drill copy is on an internal network with no route out, reached only through its gateway, so there is nothing to allow; drill.allow is for Kubernetes sites".into(),
                });
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
        out
    }
}

/// Why a Docker site's transport is refused, if it is: a plain `tcp://` (or `http://`) engine
/// without `insecure: true` (anyone who reaches the port is root on the host, and volume data and
/// secret values cross the network in clear), `tls` on an engine that is not `tcp://`, or `tls`
/// and `insecure` together.
pub fn docker_transport_problem(host: Option<&str>, tls: bool, insecure: bool) -> Option<String> {
    let host = host?;
    let tcp = host.starts_with("tcp://") || host.starts_with("http://") || host.starts_with("https://");
    if tls && insecure {
        return Some("tls and insecure: true together: say which (tls, normally)".into());
    }
    if tls && !tcp {
        return Some(format!("tls applies to tcp:// engines only, not to {host}"));
    }
    if tcp && !tls && !insecure {
        return Some(format!(
            "{host} without tls is plain, unauthenticated TCP (anyone who reaches the port is root on that host, \
             and volume data and secret values cross the network in clear): give tls: {{ca, cert, key}} for an \
             engine started with --tlsverify, use ssh://, or say insecure: true"
        ));
    }
    None
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

/// The parser's message without its own `error: line L column C: ` prefix (the error carries both).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.strip_prefix("error: line ").and_then(|r| r.split_once(": ")) {
        Some((_, msg)) => msg.to_string(),
        None => line.trim_start_matches("error: ").to_string(),
    }
}

#[cfg(test)]
mod tests;
