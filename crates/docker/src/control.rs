//! Starting, stopping and removing an application's workloads: what a failover does to the primary
//! (fence) and the standby (start), and what a drill removes when it is done.
//!
//! Workloads are the containers and Swarm services a [`Selection`] covers. Containers and services
//! that a restore made under a name prefix carry [`PREFIX_LABEL`] and are left out unless that
//! prefix is asked for, so a drill's copy is never started or stopped with production.
//!
//! A stop is meant to last: it clears the containers' restart policies too (`restart=no`), so a
//! fenced site whose engine or host restarts does not start the app again; the caller keeps the
//! policies (the orchestrator in the app's DR state in the repository, since a container's
//! labels cannot be changed) and gives them back when it starts the app there.
use bollard::models::ServiceSpec;
use bollard::query_parameters::{
    ListContainersOptions, ListServicesOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
    UpdateServiceOptions,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::capture::labels_of;
use crate::{is_not_found, str_at, to_json, DockerError, Selection, Site, HELPER_LABEL};

/// Label a prefixed restore puts on containers and services: the prefix.
pub const PREFIX_LABEL: &str = "io.lifeboat.prefix";
/// Label on a Swarm service scaled to zero by Lifeboat: the replicas it had.
pub const REPLICAS_LABEL: &str = "io.lifeboat.replicas";
/// Label on a global Swarm service held back by Lifeboat (it cannot be scaled to zero): its
/// placement has [`HOLD_CONSTRAINT`] added, which no node matches, so no task runs.
pub const HOLD_LABEL: &str = "io.lifeboat.held-back";
/// The placement constraint of a held-back global service (node ids never contain `-`).
pub const HOLD_CONSTRAINT: &str = "node.id==lifeboat-held-back";

/// Holds a global service's spec back (`hold`: [`HOLD_CONSTRAINT`] added, [`HOLD_LABEL`] set) or
/// releases it (both removed). Other constraints and labels are kept.
pub fn hold_global(spec: &mut Value, hold: bool) {
    if !spec.get("Labels").is_some_and(Value::is_object) {
        spec["Labels"] = json!({});
    }
    let constraints = spec
        .pointer("/TaskTemplate/Placement/Constraints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut kept: Vec<Value> = constraints
        .into_iter()
        .filter(|c| c.as_str() != Some(HOLD_CONSTRAINT))
        .collect();
    let labels = spec["Labels"].as_object_mut().expect("set above");
    if hold {
        kept.push(json!(HOLD_CONSTRAINT));
        labels.insert(HOLD_LABEL.into(), json!("1"));
    } else {
        labels.remove(HOLD_LABEL);
    }
    if !spec.get("TaskTemplate").is_some_and(Value::is_object) {
        spec["TaskTemplate"] = json!({});
    }
    if !spec["TaskTemplate"].get("Placement").is_some_and(Value::is_object) {
        spec["TaskTemplate"]["Placement"] = json!({});
    }
    if kept.is_empty() && !hold {
        // Released to what the owner had: no constraints, and no placement if that was all of it.
        let placement = spec["TaskTemplate"]["Placement"].as_object_mut().expect("set above");
        placement.remove("Constraints");
        if placement.is_empty() {
            spec["TaskTemplate"]
                .as_object_mut()
                .expect("set above")
                .remove("Placement");
        }
        return;
    }
    spec["TaskTemplate"]["Placement"]["Constraints"] = json!(kept);
}

/// Whether a service's spec is held back by [`hold_global`].
pub fn held_back(spec: &Value) -> bool {
    spec.pointer(&format!("/Labels/{HOLD_LABEL}")).is_some()
        && spec
            .pointer("/TaskTemplate/Placement/Constraints")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c.as_str() == Some(HOLD_CONSTRAINT)))
}

/// One container or service and what was done to it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    /// `container` or `service`.
    pub kind: &'static str,
    pub name: String,
    /// `stopped`, `started`, `scaled to N`, `already stopped`, `already running`, `removed`.
    pub action: String,
}

/// A workload the selection covers, as it is now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Workload {
    pub kind: &'static str,
    pub name: String,
    /// Containers: running. Services: more than zero replicas wanted.
    pub running: bool,
    /// The image it runs.
    pub image: String,
    /// CPU (in cores) and memory (bytes) it asks for, summed over replicas; 0 when unlimited.
    pub cpus: f64,
    pub memory: u64,
}

impl Site {
    /// The workloads `selection` covers; with `prefix`, only those a restore made under that prefix.
    pub fn workloads(&self, selection: &Selection, prefix: Option<&str>) -> Result<Vec<Workload>, DockerError> {
        Ok(self
            .workload_docs(selection, prefix)?
            .into_iter()
            .map(|(kind, name, doc)| workload(kind, name, &doc))
            .collect())
    }

    fn workload_docs(
        &self,
        selection: &Selection,
        prefix: Option<&str>,
    ) -> Result<Vec<(&'static str, String, Value)>, DockerError> {
        let d = &self.docker;
        let keep = |labels: Option<&serde_json::Map<String, Value>>| {
            let own = labels.and_then(|l| l.get(PREFIX_LABEL)).and_then(Value::as_str);
            !labels.is_some_and(|l| l.contains_key(HELPER_LABEL) || l.contains_key("com.docker.swarm.task.id"))
                && own == prefix
                && selection.matches(labels)
        };
        self.block_on(async {
            let mut out = Vec::new();
            let list = d
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    ..Default::default()
                }))
                .await
                .map_err(self.api_err("list containers"))?;
            for c in list {
                let id = c.id.clone().unwrap_or_default();
                let doc = match d.inspect_container(&id, None).await {
                    Ok(doc) => to_json(&doc),
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(self.api_err(format!("inspect container {id}"))(e)),
                };
                if keep(labels_of(&doc, "/Config/Labels")) {
                    let name = str_at(&doc, "/Name").unwrap_or(&id).trim_start_matches('/').to_string();
                    out.push(("container", name, doc));
                }
            }
            let info = d.info().await.map_err(self.api_err("system info"))?;
            if crate::swarm_manager(&info) {
                for s in d
                    .list_services(None::<ListServicesOptions>)
                    .await
                    .map_err(self.api_err("list services"))?
                {
                    let doc = to_json(&s);
                    if keep(labels_of(&doc, "/Spec/Labels")) {
                        let name = str_at(&doc, "/Spec/Name").unwrap_or_default().to_string();
                        out.push(("service", name, doc));
                    }
                }
            }
            Ok(out)
        })
    }

    /// Stops every workload of `selection` (not prefixed): containers are stopped, killed after
    /// `grace` (`None`: each container's own stop timeout, else the engine's 10 s), replicated
    /// services scaled to zero with their replica count kept in [`REPLICAS_LABEL`]. Idempotent:
    /// what is already stopped is reported so and left alone.
    pub fn stop_workloads(
        &self,
        selection: &Selection,
        prefix: Option<&str>,
        grace: Option<std::time::Duration>,
    ) -> Result<Vec<Change>, DockerError> {
        let docs = self.workload_docs(selection, prefix)?;
        // First the restart policies: a stopped container with `always` (or `on-failure`, after
        // the stop's non-zero exit) starts again when its engine restarts. Callers record the
        // policies beforehand ([`Site::restart_policies`]) and give them back with
        // [`Site::set_restart_policies`] when the app starts here again.
        let mut cleared = std::collections::BTreeSet::new();
        for (kind, name, doc) in &docs {
            if *kind == "container" && restart_policy(doc).is_some() && self.update_restart_policy(name, "no")? {
                cleared.insert(name.clone());
            }
        }
        // Containers stop side by side: the slowest one's grace period, not their sum.
        let running: Vec<&String> = docs
            .iter()
            .filter(|(kind, name, doc)| *kind == "container" && workload(kind, name.to_string(), doc).running)
            .map(|(_, name, _)| name)
            .collect();
        let results = self.block_on(futures_util::future::join_all(running.iter().map(|name| {
            self.docker.stop_container(
                name,
                Some(StopContainerOptions {
                    t: grace.map(|g| g.as_secs().min(i32::MAX as u64) as i32),
                    ..Default::default()
                }),
            )
        })));
        for (name, r) in running.iter().zip(results) {
            match r {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.api_err(format!("stop container {name}"))(e)),
            }
        }
        let mut out = Vec::new();
        for (kind, name, doc) in docs {
            let w = workload(kind, name.clone(), &doc);
            let mut action = if !w.running {
                "already stopped".to_string()
            } else if kind == "container" {
                "stopped".to_string()
            } else if replicas(&doc).is_none() {
                self.hold_service(&name, &doc, true)?;
                "held off every node (global)".to_string()
            } else {
                let was = replicas(&doc).unwrap_or(0);
                self.scale_service(&name, &doc, 0, Some(was))?;
                format!("scaled {was} to 0")
            };
            if cleared.contains(&name) {
                action += &format!(" (restart policy {} cleared)", restart_policy(&doc).unwrap_or_default());
            }
            out.push(Change { kind, name, action });
        }
        Ok(out)
    }

    /// The restart policies of the selection's containers that have one (`always`,
    /// `unless-stopped`, `on-failure[:N]`), by container name: what [`Site::stop_workloads`] clears.
    pub fn restart_policies(
        &self,
        selection: &Selection,
        prefix: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, String>, DockerError> {
        Ok(self
            .workload_docs(selection, prefix)?
            .into_iter()
            .filter(|(kind, _, _)| *kind == "container")
            .filter_map(|(_, name, doc)| restart_policy(&doc).map(|p| (name, p)))
            .collect())
    }

    /// Gives containers back their restart policies (as [`Site::restart_policies`] wrote them).
    /// A container that no longer exists is reported, not an error.
    pub fn set_restart_policies(
        &self,
        policies: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<Change>, DockerError> {
        let mut out = Vec::new();
        for (name, policy) in policies {
            let action = if self.update_restart_policy(name, policy)? {
                format!("restart policy {policy} restored")
            } else {
                "gone: restart policy not restored".to_string()
            };
            out.push(Change {
                kind: "container",
                name: name.clone(),
                action,
            });
        }
        Ok(out)
    }

    /// Sets a container's restart policy; false when there is no such container.
    fn update_restart_policy(&self, name: &str, policy: &str) -> Result<bool, DockerError> {
        use bollard::models::{ContainerUpdateBody, RestartPolicy, RestartPolicyNameEnum};
        let (kind, count) = match policy.split_once(':') {
            Some((k, n)) => (k, n.parse::<i64>().ok()),
            None => (policy, None),
        };
        let name_enum = match kind {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            "no" | "" => RestartPolicyNameEnum::NO,
            other => {
                return Err(DockerError::Unsupported(format!(
                    "container {name}: unknown restart policy {other:?}"
                )))
            }
        };
        let body = ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(name_enum),
                maximum_retry_count: count,
            }),
            ..Default::default()
        };
        match self.block_on(self.docker.update_container(name, body)) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.api_err(format!("update the restart policy of container {name}"))(
                e,
            )),
        }
    }

    /// Starts every workload of `selection`: stopped containers are started, services scaled to
    /// the replicas in [`REPLICAS_LABEL`] (1 without it). Idempotent.
    pub fn start_workloads(&self, selection: &Selection, prefix: Option<&str>) -> Result<Vec<Change>, DockerError> {
        let mut out = Vec::new();
        for (kind, name, doc) in self.workload_docs(selection, prefix)? {
            let w = workload(kind, name.clone(), &doc);
            let action = if w.running {
                "already running".to_string()
            } else if kind == "container" {
                self.block_on(self.docker.start_container(&name, None::<StartContainerOptions>))
                    .map_err(self.api_err(format!("start container {name}")))?;
                "started".to_string()
            } else if replicas(&doc).is_none() {
                self.hold_service(&name, &doc, false)?;
                "released onto its nodes (global)".to_string()
            } else {
                let want = str_at(&doc, &format!("/Spec/Labels/{}", REPLICAS_LABEL.replace('/', "~1")))
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(1);
                self.scale_service(&name, &doc, want, None)?;
                format!("scaled to {want}")
            };
            out.push(Change { kind, name, action });
        }
        Ok(out)
    }

    /// Removes every workload made under `prefix` and the volumes, networks, configs and secrets
    /// named with it (a drill's copy). Production objects, which carry no prefix, are never touched.
    pub fn remove_prefixed(&self, prefix: &str) -> Result<Vec<Change>, DockerError> {
        if prefix.is_empty() {
            return Err(DockerError::Unsupported(
                "removing by prefix needs a non-empty prefix".into(),
            ));
        }
        let mut out = Vec::new();
        for (kind, name, _) in self.workload_docs(&Selection::default(), Some(prefix))? {
            if kind == "container" {
                self.block_on(self.docker.remove_container(
                    &name,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                ))
                .map_err(self.api_err(format!("remove container {name}")))?;
            } else {
                self.block_on(self.docker.delete_service(&name))
                    .map_err(self.api_err(format!("remove service {name}")))?;
            }
            out.push(Change {
                kind,
                name,
                action: "removed".into(),
            });
        }
        let d = &self.docker;
        let volumes = self
            .block_on(d.list_volumes(None::<bollard::query_parameters::ListVolumesOptions>))
            .map_err(self.api_err("list volumes"))?;
        for v in volumes.volumes.unwrap_or_default() {
            if v.name.starts_with(prefix) {
                self.block_on(d.remove_volume(&v.name, None::<bollard::query_parameters::RemoveVolumeOptions>))
                    .map_err(self.api_err(format!("remove volume {}", v.name)))?;
                out.push(Change {
                    kind: "volume",
                    name: v.name,
                    action: "removed".into(),
                });
            }
        }
        // An isolated drill copy's gateway (a helper container, so not among the workloads).
        let gateway = format!("{prefix}{}", crate::restore::GATEWAY);
        match self.block_on(d.remove_container(
            &gateway,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )) {
            Ok(()) => out.push(Change {
                kind: "container",
                name: gateway,
                action: "removed".into(),
            }),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.api_err(format!("remove container {gateway}"))(e)),
        }
        let networks = self
            .block_on(d.list_networks(None::<bollard::query_parameters::ListNetworksOptions>))
            .map_err(self.api_err("list networks"))?;
        for n in networks {
            let name = n.name.unwrap_or_default();
            if name.starts_with(prefix) {
                self.block_on(d.remove_network(&name))
                    .map_err(self.api_err(format!("remove network {name}")))?;
                out.push(Change {
                    kind: "network",
                    name,
                    action: "removed".into(),
                });
            }
        }
        Ok(out)
    }

    /// CPUs and memory (bytes) of the engine's host.
    pub fn capacity(&self) -> Result<(f64, u64), DockerError> {
        let info = self.block_on(self.docker.info()).map_err(self.api_err("system info"))?;
        Ok((info.ncpu.unwrap_or(0) as f64, info.mem_total.unwrap_or(0).max(0) as u64))
    }

    /// Holds a global service back or releases it ([`hold_global`]).
    fn hold_service(&self, name: &str, doc: &Value, hold: bool) -> Result<(), DockerError> {
        let mut spec = doc.get("Spec").cloned().unwrap_or(json!({}));
        hold_global(&mut spec, hold);
        let spec: ServiceSpec = serde_json::from_value(spec)
            .map_err(|e| DockerError::Unsupported(format!("service {name}: its spec does not round-trip: {e}")))?;
        let version = doc.pointer("/Version/Index").and_then(Value::as_u64).unwrap_or(0) as i32;
        self.block_on(self.docker.update_service(
            name,
            spec,
            UpdateServiceOptions {
                version,
                ..Default::default()
            },
            None,
        ))
        .map_err(self.api_err(format!("{} service {name}", if hold { "hold back" } else { "release" })))?;
        Ok(())
    }

    fn scale_service(&self, name: &str, doc: &Value, replicas: u64, keep: Option<u64>) -> Result<(), DockerError> {
        let mut spec = doc.get("Spec").cloned().unwrap_or(json!({}));
        let Some(rep) = spec.pointer_mut("/Mode/Replicated") else {
            return Err(DockerError::Unsupported(format!(
                "service {name} is global: it cannot be scaled; stop its nodes instead"
            )));
        };
        rep["Replicas"] = json!(replicas);
        if !spec.get("Labels").is_some_and(Value::is_object) {
            spec["Labels"] = json!({});
        }
        if let Some(k) = keep {
            spec["Labels"][REPLICAS_LABEL] = json!(k.to_string());
        }
        let spec: ServiceSpec = serde_json::from_value(spec)
            .map_err(|e| DockerError::Unsupported(format!("service {name}: its spec does not round-trip: {e}")))?;
        let version = doc.pointer("/Version/Index").and_then(Value::as_u64).unwrap_or(0) as i32;
        self.block_on(self.docker.update_service(
            name,
            spec,
            UpdateServiceOptions {
                version,
                ..Default::default()
            },
            None,
        ))
        .map_err(self.api_err(format!("scale service {name}")))?;
        Ok(())
    }
}

/// A container's restart policy when it restarts on its own (`always`, `unless-stopped`,
/// `on-failure[:N]`); `None` for `no` or none.
fn restart_policy(doc: &Value) -> Option<String> {
    let name = str_at(doc, "/HostConfig/RestartPolicy/Name").unwrap_or_default();
    match name {
        "" | "no" => None,
        "on-failure" => match doc
            .pointer("/HostConfig/RestartPolicy/MaximumRetryCount")
            .and_then(Value::as_u64)
        {
            Some(n) if n > 0 => Some(format!("on-failure:{n}")),
            _ => Some("on-failure".into()),
        },
        other => Some(other.to_string()),
    }
}

fn replicas(doc: &Value) -> Option<u64> {
    doc.pointer("/Spec/Mode/Replicated/Replicas").and_then(Value::as_u64)
}

fn workload(kind: &'static str, name: String, doc: &Value) -> Workload {
    if kind == "container" {
        let host = doc.get("HostConfig");
        let num = |k: &str| host.and_then(|h| h.get(k)).and_then(Value::as_u64).unwrap_or(0);
        Workload {
            kind,
            name,
            running: doc.pointer("/State/Running") == Some(&Value::Bool(true)),
            image: str_at(doc, "/Config/Image").unwrap_or_default().to_string(),
            cpus: num("NanoCpus") as f64 / 1e9,
            memory: num("Memory"),
        }
    } else {
        let n = replicas(doc).unwrap_or(1);
        let res = doc.pointer("/Spec/TaskTemplate/Resources/Reservations");
        let num = |k: &str| res.and_then(|r| r.get(k)).and_then(Value::as_u64).unwrap_or(0);
        Workload {
            kind,
            name,
            running: match replicas(doc) {
                Some(r) => r > 0,
                None => !doc.get("Spec").is_some_and(held_back),
            },
            image: str_at(doc, "/Spec/TaskTemplate/ContainerSpec/Image")
                .unwrap_or_default()
                .to_string(),
            cpus: (num("NanoCPUs") * n) as f64 / 1e9,
            memory: num("MemoryBytes") * n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_policies_that_restart_on_their_own_are_kept() {
        let doc = |name: &str, n: u64| json!({"HostConfig": {"RestartPolicy": {"Name": name, "MaximumRetryCount": n}}});
        assert_eq!(restart_policy(&doc("always", 0)).as_deref(), Some("always"));
        assert_eq!(
            restart_policy(&doc("unless-stopped", 0)).as_deref(),
            Some("unless-stopped")
        );
        assert_eq!(restart_policy(&doc("on-failure", 3)).as_deref(), Some("on-failure:3"));
        assert_eq!(restart_policy(&doc("on-failure", 0)).as_deref(), Some("on-failure"));
        assert_eq!(restart_policy(&doc("no", 0)), None);
        assert_eq!(restart_policy(&doc("", 0)), None);
        assert_eq!(restart_policy(&json!({})), None);
    }

    #[test]
    fn a_held_back_global_service_keeps_its_own_placement_and_gets_it_back() {
        let own = json!({"Name": "agent", "Labels": {"app": "rv"}, "Mode": {"Global": {}},
                         "TaskTemplate": {"ContainerSpec": {"Image": "web:1"},
                                          "Placement": {"Constraints": ["node.role==worker"]}}});
        let mut spec = own.clone();
        hold_global(&mut spec, true);
        assert!(held_back(&spec));
        assert_eq!(
            spec["TaskTemplate"]["Placement"]["Constraints"],
            json!(["node.role==worker", HOLD_CONSTRAINT])
        );
        assert_eq!(spec["Labels"]["app"], "rv");
        // Held twice: one constraint.
        hold_global(&mut spec, true);
        assert_eq!(
            spec["TaskTemplate"]["Placement"]["Constraints"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let doc = json!({"Spec": spec.clone()});
        assert!(!workload("service", "agent".into(), &doc).running);
        hold_global(&mut spec, false);
        assert!(!held_back(&spec));
        assert_eq!(spec, own);
        assert!(workload("service", "agent".into(), &json!({"Spec": spec})).running);
        // A spec with no placement at all is held too.
        let mut bare = json!({"Name": "g", "Mode": {"Global": {}}, "TaskTemplate": {"ContainerSpec": {}}});
        hold_global(&mut bare, true);
        assert!(held_back(&bare));
    }
}
