//! Backup hooks: commands run inside application containers before and after their volumes are read.
//!
//! A container (or a service, for its tasks on the engine being backed up) asks for hooks with labels:
//! - `io.lifeboat.hook.pre`: a shell command (`sh -c`) run before any volume is read, for example
//!   `psql -U postgres -c CHECKPOINT` or a dump into the volume;
//! - `io.lifeboat.hook.post`: run after every volume was read (also when reading failed);
//! - `io.lifeboat.hook.timeout`: seconds to wait for each command (default 60);
//! - `io.lifeboat.hook.on-error`: `fail` (default: the backup stops and writes no snapshot) or
//!   `continue` (the failure is recorded in the snapshot's manifest and the backup goes on).
//!
//! A hook fails when it exits non-zero, cannot be started, or exceeds its timeout.
use std::time::Duration;

use serde_json::Value;

use crate::{str_at, DockerError, Site};

pub const PRE: &str = "io.lifeboat.hook.pre";
pub const POST: &str = "io.lifeboat.hook.post";
pub const TIMEOUT: &str = "io.lifeboat.hook.timeout";
pub const ON_ERROR: &str = "io.lifeboat.hook.on-error";

/// What to do when a hook fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Fail,
    Continue,
}

/// The hooks of one running container.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// Container id or name to run in.
    pub container: String,
    /// The object that asked for it (container or service name), for messages.
    pub owner: String,
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Duration,
    pub on_error: OnError,
}

/// Reads the hook labels; `None` when the labels ask for no hook. A bad timeout or policy is an error.
pub fn from_labels(
    container: &str,
    owner: &str,
    labels: Option<&serde_json::Map<String, Value>>,
) -> Result<Option<Hook>, DockerError> {
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (pre, post) = (get(PRE), get(POST));
    if pre.is_none() && post.is_none() {
        return Ok(None);
    }
    let bad = |what: String| DockerError::Hook {
        container: owner.to_string(),
        phase: "configuration",
        reason: what,
    };
    let timeout = match get(TIMEOUT) {
        None => Duration::from_secs(60),
        Some(t) => Duration::from_secs(
            t.trim_end_matches('s')
                .parse::<u64>()
                .map_err(|_| bad(format!("{TIMEOUT}={t:?} is not a number of seconds")))?,
        ),
    };
    let on_error = match get(ON_ERROR).as_deref() {
        None | Some("fail") => OnError::Fail,
        Some("continue") => OnError::Continue,
        Some(other) => return Err(bad(format!("{ON_ERROR}={other:?} must be fail or continue"))),
    };
    Ok(Some(Hook {
        container: container.to_string(),
        owner: owner.to_string(),
        pre,
        post,
        timeout,
        on_error,
    }))
}

impl Site {
    /// Runs one phase of a hook. `Ok(Some(message))` is a failure the policy lets pass.
    pub fn run_hook(&self, hook: &Hook, phase: &'static str) -> Result<Option<String>, DockerError> {
        let cmd = match phase {
            "pre" => &hook.pre,
            _ => &hook.post,
        };
        let Some(cmd) = cmd else { return Ok(None) };
        let reason = match self.exec(
            &hook.container,
            vec!["sh".into(), "-c".into(), cmd.clone()],
            hook.timeout,
        ) {
            Ok(out) if out.exit_code == 0 => return Ok(None),
            Ok(out) => format!(
                "exit code {}: {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .chars()
                    .take(500)
                    .collect::<String>()
            ),
            Err(e) => e.to_string(),
        };
        match hook.on_error {
            OnError::Fail => Err(DockerError::Hook {
                container: hook.owner.clone(),
                phase,
                reason,
            }),
            OnError::Continue => Ok(Some(format!(
                "hook {phase} in {} failed (policy continue): {reason}",
                hook.owner
            ))),
        }
    }
}

/// The container id of a running container document, if it runs.
pub(crate) fn running_id(doc: &Value) -> Option<&str> {
    (doc.pointer("/State/Running") == Some(&Value::Bool(true)))
        .then(|| str_at(doc, "/Id"))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_give_hooks_with_defaults() {
        let l = json!({PRE: "psql -c CHECKPOINT"});
        let h = from_labels("c1", "db", l.as_object()).unwrap().unwrap();
        assert_eq!(h.pre.as_deref(), Some("psql -c CHECKPOINT"));
        assert_eq!(h.post, None);
        assert_eq!(h.timeout, Duration::from_secs(60));
        assert_eq!(h.on_error, OnError::Fail);
        let l = json!({POST: "rm /tmp/x", TIMEOUT: "5s", ON_ERROR: "continue"});
        let h = from_labels("c1", "db", l.as_object()).unwrap().unwrap();
        assert_eq!((h.timeout, h.on_error), (Duration::from_secs(5), OnError::Continue));
        assert!(from_labels("c1", "db", json!({"x": "y"}).as_object())
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_hook_labels_are_errors() {
        assert!(from_labels("c", "db", json!({PRE: "x", TIMEOUT: "soon"}).as_object()).is_err());
        assert!(from_labels("c", "db", json!({PRE: "x", ON_ERROR: "ignore"}).as_object()).is_err());
    }
}
