//! Backup hooks on Kubernetes: commands run in a pod's container, over the exec API, before and
//! after the backup reads volume data. A pod asks for them with annotations (usually set on the
//! pod template of its Deployment or StatefulSet); the keys and their meaning are
//! [`lifeboat_model::hook`]'s, with `io.lifeboat.hook.container` choosing the container.
//!
//! Only running pods in the backup's scope are hooked; a pod that asks for hooks but does not run
//! is recorded in the snapshot's errors. A command that exceeds its timeout is
//! reported as failed; the API gives no way to stop it, so it may go on running in the container.
use lifeboat_model::hook::{HookSpec, OnError, CONTAINER};
use serde_json::Value;

use crate::{Cluster, KubeError};

/// The hooks of one running pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodHook {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub spec: HookSpec,
    /// The pod's phase; hooks run only in `Running` pods.
    pub phase: String,
}

impl PodHook {
    fn owner(&self) -> String {
        format!("pod {}/{} container {}", self.namespace, self.pod, self.container)
    }
}

/// The hooks a pod document asks for; `None` when it asks for none.
pub fn from_pod(pod: &Value) -> Result<Option<PodHook>, KubeError> {
    let ann = pod.pointer("/metadata/annotations").and_then(Value::as_object);
    let get = |k: &str| ann.and_then(|a| a.get(k)).and_then(Value::as_str);
    let str_at = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let (namespace, name) = (str_at("/metadata/namespace"), str_at("/metadata/name"));
    let bad = |reason: String| KubeError::Hook {
        pod: format!("{namespace}/{name}"),
        phase: "configuration",
        reason,
    };
    let Some(spec) = HookSpec::parse(get).map_err(bad)? else {
        return Ok(None);
    };
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let container = match get(CONTAINER) {
        Some(c) if containers.contains(&c) => c.to_string(),
        Some(c) => {
            return Err(bad(format!(
                "{CONTAINER}={c:?}: the pod has no such container ({containers:?})"
            )))
        }
        None => containers.first().map(|c| c.to_string()).unwrap_or_default(),
    };
    Ok(Some(PodHook {
        namespace,
        pod: name,
        container,
        spec,
        phase: str_at("/status/phase"),
    }))
}

impl Cluster {
    /// Runs one phase (`"pre"` or `"post"`) of a pod's hook with `sh -c`. `Ok(Some(message))` is a
    /// failure the hook's policy lets pass; `Err` one that must stop the backup.
    pub fn run_hook(&self, hook: &PodHook, phase: &'static str) -> Result<Option<String>, KubeError> {
        let Some(cmd) = hook.spec.command(phase) else {
            return Ok(None);
        };
        let reason = match self.exec_in(hook, cmd) {
            Ok(()) => return Ok(None),
            Err(reason) => reason,
        };
        match hook.spec.on_error {
            OnError::Fail => Err(KubeError::Hook {
                pod: format!("{}/{}", hook.namespace, hook.pod),
                phase,
                reason,
            }),
            OnError::Continue => Ok(Some(format!(
                "hook {phase} in {} failed (policy continue): {reason}",
                hook.owner()
            ))),
        }
    }

    fn exec_in(&self, hook: &PodHook, cmd: &str) -> Result<(), String> {
        let command = ["sh".to_string(), "-c".into(), cmd.into()];
        match self.exec(
            &hook.namespace,
            &hook.pod,
            Some(&hook.container),
            &command,
            hook.spec.timeout,
        ) {
            Ok(out) if out.code == 0 => Ok(()),
            Ok(out) => {
                // Redacted before it goes anywhere (a database client may echo its connection string).
                let stderr: String = lifeboat_model::redact::redact(String::from_utf8_lossy(&out.stderr).trim())
                    .chars()
                    .take(500)
                    .collect();
                Err(format!("exit code {}: {stderr}", out.code))
            }
            Err(KubeError::Api { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_model::hook::PRE;
    use serde_json::json;

    fn pod(ann: Value, phase: &str) -> Value {
        json!({"metadata": {"namespace": "shop", "name": "db-0", "annotations": ann},
               "spec": {"containers": [{"name": "db"}, {"name": "sidecar"}]},
               "status": {"phase": phase}})
    }

    #[test]
    fn pods_with_hook_annotations_are_hooked_in_the_chosen_container() {
        let h = from_pod(&pod(json!({PRE: "sync"}), "Running")).unwrap().unwrap();
        assert_eq!(
            (h.namespace.as_str(), h.pod.as_str(), h.container.as_str()),
            ("shop", "db-0", "db")
        );
        let h = from_pod(&pod(json!({PRE: "sync", CONTAINER: "sidecar"}), "Running"))
            .unwrap()
            .unwrap();
        assert_eq!(h.container, "sidecar");
        let h = from_pod(&pod(json!({PRE: "sync"}), "Pending")).unwrap().unwrap();
        assert_eq!(h.phase, "Pending");
        assert_eq!(from_pod(&pod(json!({}), "Running")).unwrap(), None);
    }

    #[test]
    fn a_hook_naming_a_missing_container_is_an_error_that_names_the_pod() {
        let e = from_pod(&pod(json!({PRE: "sync", CONTAINER: "web"}), "Running")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("shop/db-0") && msg.contains("web"), "{msg}");
    }
}
