//! Reading the objects of an engine (without volume data) and choosing which belong to the backup.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::query_parameters::{
    ListConfigsOptions, ListContainersOptions, ListNetworksOptions, ListNodesOptions, ListSecretsOptions,
    ListServicesOptions, ListVolumesOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{str_at, swarm_manager, to_json, DockerError, Site, HELPER_LABEL};

/// Label Swarm stacks put on their objects.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
/// Label Compose puts on its containers.
pub const COMPOSE_LABEL: &str = "com.docker.compose.project";

/// Which applications a backup takes. Empty means everything on the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Only containers and services carrying all these labels (`KEY=VALUE`, or `KEY` for any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Only this stack (`com.docker.stack.namespace`, or a Compose project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl Selection {
    fn is_all(&self) -> bool {
        self.labels.is_empty() && self.stack.is_none()
    }

    pub(crate) fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        if let Some(stack) = &self.stack {
            if get(STACK_LABEL) != Some(stack) && get(COMPOSE_LABEL) != Some(stack) {
                return false;
            }
        }
        self.labels.iter().all(|want| match want.split_once('=') {
            Some((k, v)) => get(k) == Some(v),
            None => get(want).is_some(),
        })
    }
}

/// What a Docker snapshot records about where and how it was taken (`docker.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Manifest {
    pub format: u32,
    /// The address the engine was reached at.
    pub host: String,
    /// The engine's host name.
    pub engine_name: String,
    pub engine_version: String,
    pub api_version: String,
    /// Whether the engine was an active Swarm manager.
    pub swarm: bool,
    pub selection: Selection,
    /// Whether volume data was read (`--no-volumes` records false).
    pub volumes_data: bool,
    /// Secrets whose value could not be read; restore asks for them with `--secret NAME=@FILE`.
    #[serde(default)]
    pub secrets_uncaptured: Vec<String>,
    /// Things that could not be backed up, one line each.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The objects of an engine, by kind and name, as the engine's own inspect documents.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub manifest: Manifest,
    pub containers: BTreeMap<String, Value>,
    pub services: BTreeMap<String, Value>,
    pub networks: BTreeMap<String, Value>,
    pub volumes: BTreeMap<String, Value>,
    pub configs: BTreeMap<String, Value>,
    pub secrets: BTreeMap<String, Value>,
    /// Swarm nodes by host name (their spec carries the labels).
    pub nodes: BTreeMap<String, Value>,
}

/// The object kinds in restore order, with their directory in a snapshot.
pub const KINDS: [&str; 7] = [
    "networks",
    "volumes",
    "configs",
    "secrets",
    "nodes",
    "containers",
    "services",
];

impl Capture {
    /// The objects of one kind (one of [`KINDS`]).
    pub fn kind(&self, kind: &str) -> &BTreeMap<String, Value> {
        match kind {
            "containers" => &self.containers,
            "services" => &self.services,
            "networks" => &self.networks,
            "volumes" => &self.volumes,
            "configs" => &self.configs,
            "secrets" => &self.secrets,
            "nodes" => &self.nodes,
            other => panic!("unknown kind {other}"),
        }
    }

    pub fn kind_mut(&mut self, kind: &str) -> &mut BTreeMap<String, Value> {
        match kind {
            "containers" => &mut self.containers,
            "services" => &mut self.services,
            "networks" => &mut self.networks,
            "volumes" => &mut self.volumes,
            "configs" => &mut self.configs,
            "secrets" => &mut self.secrets,
            "nodes" => &mut self.nodes,
            other => panic!("unknown kind {other}"),
        }
    }
}

/// Networks every engine has; never backed up or restored.
pub fn predefined_network(name: &str, doc: &Value) -> bool {
    matches!(name, "bridge" | "host" | "none" | "docker_gwbridge") || doc.get("Ingress") == Some(&Value::Bool(true))
}

/// The network aliases of an endpoint that a user gave (the engine adds the container's short id).
pub(crate) fn user_aliases(endpoint: &Value, container_id: &str) -> Vec<Value> {
    endpoint
        .get("Aliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.as_str().is_some_and(|a| !container_id.starts_with(a)))
        .cloned()
        .collect()
}

/// The named volumes a container's inspect document mounts.
pub fn container_volumes(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in doc.get("Mounts").and_then(Value::as_array).into_iter().flatten() {
        if str_at(m, "/Type") == Some("volume") {
            if let Some(n) = str_at(m, "/Name") {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// The named volumes a service's tasks mount.
pub fn service_volumes(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mounts = doc
        .pointer("/Spec/TaskTemplate/ContainerSpec/Mounts")
        .and_then(Value::as_array);
    for m in mounts.into_iter().flatten() {
        if str_at(m, "/Type").unwrap_or("volume") == "volume" {
            if let Some(n) = str_at(m, "/Source").filter(|s| !s.is_empty()) {
                out.push(n.to_string());
            }
        }
    }
    out
}

pub(crate) fn labels_of<'a>(doc: &'a Value, pointer: &str) -> Option<&'a serde_json::Map<String, Value>> {
    doc.pointer(pointer).and_then(Value::as_object)
}

impl Site {
    /// Reads every object the selection covers. Volume data and secret values are not read here.
    ///
    /// Containers that are Swarm tasks belong to their service and are not listed; neither are
    /// Lifeboat's own helpers. With a selection, networks, volumes, configs and secrets are those the
    /// selected containers and services use (plus those labelled with the selected stack).
    pub fn capture(&self, selection: &Selection) -> Result<Capture, DockerError> {
        let d = &self.docker;
        self.block_on(async {
            let info = d.info().await.map_err(self.api_err("system info"))?;
            let version = d.version().await.map_err(self.api_err("version"))?;
            let swarm = swarm_manager(&info);
            let mut cap = Capture {
                manifest: Manifest {
                    format: 1,
                    host: self.host.clone(),
                    engine_name: info.name.clone().unwrap_or_default(),
                    engine_version: version.version.clone().unwrap_or_default(),
                    api_version: version.api_version.clone().unwrap_or_default(),
                    swarm,
                    selection: selection.clone(),
                    volumes_data: false,
                    secrets_uncaptured: Vec::new(),
                    errors: Vec::new(),
                },
                ..Default::default()
            };

            let list = d
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    ..Default::default()
                }))
                .await
                .map_err(self.api_err("list containers"))?;
            for c in list {
                let labels = c.labels.clone().unwrap_or_default();
                if labels.contains_key(HELPER_LABEL) || labels.contains_key("com.docker.swarm.task.id") {
                    continue;
                }
                let id = c.id.clone().unwrap_or_default();
                let doc = match d.inspect_container(&id, None).await {
                    Ok(doc) => to_json(&doc),
                    Err(e) if crate::is_not_found(&e) => continue, // removed meanwhile
                    Err(e) => return Err(self.api_err(format!("inspect container {id}"))(e)),
                };
                if !selection.matches(labels_of(&doc, "/Config/Labels")) {
                    continue;
                }
                let name = str_at(&doc, "/Name").unwrap_or(&id).trim_start_matches('/').to_string();
                cap.containers.insert(name, doc);
            }

            if swarm {
                for s in d
                    .list_services(None::<ListServicesOptions>)
                    .await
                    .map_err(self.api_err("list services"))?
                {
                    let doc = to_json(&s);
                    let labels = labels_of(&doc, "/Spec/Labels");
                    if labels.is_some_and(|l| l.contains_key(HELPER_LABEL)) || !selection.matches(labels) {
                        continue;
                    }
                    let name = str_at(&doc, "/Spec/Name").unwrap_or_default().to_string();
                    cap.services.insert(name, doc);
                }
                for c in d
                    .list_configs(None::<ListConfigsOptions>)
                    .await
                    .map_err(self.api_err("list configs"))?
                {
                    let doc = to_json(&c);
                    let name = str_at(&doc, "/Spec/Name").unwrap_or_default().to_string();
                    cap.configs.insert(name, doc);
                }
                for s in d
                    .list_secrets(None::<ListSecretsOptions>)
                    .await
                    .map_err(self.api_err("list secrets"))?
                {
                    let doc = to_json(&s);
                    let name = str_at(&doc, "/Spec/Name").unwrap_or_default().to_string();
                    cap.secrets.insert(name, doc);
                }
                for n in d
                    .list_nodes(None::<ListNodesOptions>)
                    .await
                    .map_err(self.api_err("list nodes"))?
                {
                    let doc = to_json(&n);
                    let name = str_at(&doc, "/Description/Hostname").unwrap_or_default().to_string();
                    cap.nodes.insert(name, doc);
                }
            }

            let mut net_ids: HashMap<String, String> = HashMap::new();
            for n in d
                .list_networks(None::<ListNetworksOptions>)
                .await
                .map_err(self.api_err("list networks"))?
            {
                let doc = to_json(&n);
                let name = str_at(&doc, "/Name").unwrap_or_default().to_string();
                if predefined_network(&name, &doc) {
                    continue;
                }
                net_ids.insert(str_at(&doc, "/Id").unwrap_or_default().to_string(), name.clone());
                cap.networks.insert(name, doc);
            }
            let vols = d
                .list_volumes(None::<ListVolumesOptions>)
                .await
                .map_err(self.api_err("list volumes"))?;
            for v in vols.volumes.unwrap_or_default() {
                let doc = to_json(&v);
                cap.volumes.insert(v.name.clone(), doc);
            }

            if !selection.is_all() {
                narrow(&mut cap, selection, &net_ids);
            }
            Ok(cap)
        })
    }
}

/// Keeps only the networks, volumes, configs and secrets that the selected containers and services
/// use, or that carry the selected stack's label.
fn narrow(cap: &mut Capture, selection: &Selection, net_ids: &HashMap<String, String>) {
    let mut nets = BTreeSet::new();
    let mut vols = BTreeSet::new();
    let mut configs = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for c in cap.containers.values() {
        vols.extend(container_volumes(c));
        if let Some(n) = c.pointer("/NetworkSettings/Networks").and_then(Value::as_object) {
            nets.extend(n.keys().cloned());
        }
    }
    for s in cap.services.values() {
        vols.extend(service_volumes(s));
        let nets_of = s.pointer("/Spec/TaskTemplate/Networks").and_then(Value::as_array);
        for n in nets_of.into_iter().flatten() {
            if let Some(t) = str_at(n, "/Target") {
                nets.insert(net_ids.get(t).cloned().unwrap_or_else(|| t.to_string()));
            }
        }
        let spec = s.pointer("/Spec/TaskTemplate/ContainerSpec");
        for r in spec
            .and_then(|c| c.get("Configs"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = str_at(r, "/ConfigName") {
                configs.insert(n.to_string());
            }
        }
        for r in spec
            .and_then(|c| c.get("Secrets"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = str_at(r, "/SecretName") {
                secrets.insert(n.to_string());
            }
        }
    }
    let stack_labelled = |doc: &Value, pointer: &str| {
        selection.stack.as_deref().is_some_and(|st| {
            labels_of(doc, pointer)
                .and_then(|l| l.get(STACK_LABEL).or_else(|| l.get(COMPOSE_LABEL)))
                .and_then(Value::as_str)
                == Some(st)
        })
    };
    cap.networks
        .retain(|k, v| nets.contains(k) || stack_labelled(v, "/Labels"));
    for v in &vols {
        if !cap.volumes.contains_key(v) {
            cap.manifest.errors.push(format!(
                "volume {v} is used but does not exist on this engine (another Swarm node?); not backed up"
            ));
        }
    }
    cap.volumes
        .retain(|k, v| vols.contains(k) || stack_labelled(v, "/Labels"));
    cap.configs
        .retain(|k, v| configs.contains(k) || stack_labelled(v, "/Spec/Labels"));
    cap.secrets
        .retain(|k, v| secrets.contains(k) || stack_labelled(v, "/Spec/Labels"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selection_matches_labels_and_stack() {
        let labels = json!({"app": "shop", "com.docker.stack.namespace": "shop", "tier": "web"});
        let l = labels.as_object();
        assert!(Selection::default().matches(l));
        assert!(Selection {
            labels: vec!["app=shop".into(), "tier".into()],
            stack: None
        }
        .matches(l));
        assert!(!Selection {
            labels: vec!["app=other".into()],
            stack: None
        }
        .matches(l));
        assert!(Selection {
            labels: vec![],
            stack: Some("shop".into())
        }
        .matches(l));
        assert!(!Selection {
            labels: vec![],
            stack: Some("blog".into())
        }
        .matches(None));
    }

    #[test]
    fn narrow_keeps_only_what_selected_objects_use() {
        let mut cap = Capture::default();
        cap.services.insert(
            "shop_web".into(),
            json!({"Spec": {"Name": "shop_web", "TaskTemplate": {
                "ContainerSpec": {"Mounts": [{"Type": "volume", "Source": "shop_data", "Target": "/d"}],
                                  "Configs": [{"ConfigName": "shop_conf"}], "Secrets": [{"SecretName": "shop_pw"}]},
                "Networks": [{"Target": "netid1"}]}}}),
        );
        for (k, name) in [("networks", "shop_net"), ("networks", "other_net")] {
            cap.kind_mut(k).insert(name.into(), json!({"Name": name}));
        }
        for name in ["shop_data", "other_data"] {
            cap.volumes.insert(name.into(), json!({"Name": name}));
        }
        for name in ["shop_conf", "other_conf"] {
            cap.configs.insert(name.into(), json!({"Spec": {"Name": name}}));
        }
        for name in ["shop_pw", "other_pw"] {
            cap.secrets.insert(name.into(), json!({"Spec": {"Name": name}}));
        }
        let ids = HashMap::from([("netid1".to_string(), "shop_net".to_string())]);
        narrow(
            &mut cap,
            &Selection {
                labels: vec![],
                stack: Some("shop".into()),
            },
            &ids,
        );
        assert_eq!(cap.networks.keys().collect::<Vec<_>>(), ["shop_net"]);
        assert_eq!(cap.volumes.keys().collect::<Vec<_>>(), ["shop_data"]);
        assert_eq!(cap.configs.keys().collect::<Vec<_>>(), ["shop_conf"]);
        assert_eq!(cap.secrets.keys().collect::<Vec<_>>(), ["shop_pw"]);
    }
}
