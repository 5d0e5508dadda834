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
mod validate;

pub use duration::parse_duration;
pub use model::*;

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
