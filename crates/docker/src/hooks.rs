//! Backup hooks on Docker: commands run inside application containers before and after their
//! volumes are read. A container (or a service, for its tasks on the engine being backed up) asks
//! for them with labels; the keys and their meaning are [`lifeboat_model::hook`]'s.
use serde_json::Value;

pub use lifeboat_model::hook::{HookSpec, OnError, ON_ERROR, POST, PRE, TIMEOUT};

use crate::{str_at, DockerError, Site};

/// The hooks of one running container.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// Container id or name to run in.
    pub container: String,
    /// The object that asked for it (container or service name), for messages.
    pub owner: String,
    pub spec: HookSpec,
}

/// Reads the hook labels; `None` when the labels ask for no hook. A bad timeout or policy is an error.
pub fn from_labels(
    container: &str,
    owner: &str,
    labels: Option<&serde_json::Map<String, Value>>,
) -> Result<Option<Hook>, DockerError> {
    let spec = HookSpec::parse(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)).map_err(|reason| {
        DockerError::Hook {
            container: owner.to_string(),
            phase: "configuration",
            reason,
        }
    })?;
    Ok(spec.map(|spec| Hook {
        container: container.to_string(),
        owner: owner.to_string(),
        spec,
    }))
}

impl Site {
    /// Runs one phase of a hook. `Ok(Some(message))` is a failure the policy lets pass.
    pub fn run_hook(&self, hook: &Hook, phase: &'static str) -> Result<Option<String>, DockerError> {
        let Some(cmd) = hook.spec.command(phase) else {
            return Ok(None);
        };
        let reason = match self.exec(
            &hook.container,
            vec!["sh".into(), "-c".into(), cmd.to_string()],
            hook.spec.timeout,
        ) {
            Ok(out) if out.exit_code == 0 => return Ok(None),
            Ok(out) => format!(
                "exit code {}: {}",
                out.exit_code,
                // Redacted before it goes anywhere (an error, a snapshot manifest, a journal
                // step): a database client may echo its connection string.
                lifeboat_model::redact::redact(String::from_utf8_lossy(&out.stderr).trim())
                    .chars()
                    .take(500)
                    .collect::<String>()
            ),
            Err(e) => e.to_string(),
        };
        match hook.spec.on_error {
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
    fn labels_give_hooks_for_the_container() {
        let l = json!({PRE: "psql -c CHECKPOINT"});
        let h = from_labels("c1", "db", l.as_object()).unwrap().unwrap();
        assert_eq!((h.container.as_str(), h.owner.as_str()), ("c1", "db"));
        assert_eq!(h.spec.pre.as_deref(), Some("psql -c CHECKPOINT"));
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
