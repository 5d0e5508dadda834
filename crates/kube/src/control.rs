//! Fencing and starting an application on a cluster: its Deployments and StatefulSets scaled to
//! zero and back, the building blocks of DR operations on Kubernetes sites.
//!
//! Scaling down records each workload's replica count in the annotation [`REPLICAS_ANNOTATION`]
//! before it sets zero, so scaling up restores exactly what ran; both are idempotent (a workload at
//! zero is "already stopped", one that runs is "already running"). Workloads are those of the
//! namespaces given, matching the label selector when one is given.
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use crate::{Cluster, KubeError};

/// Where a scaled-down workload's replica count is kept.
pub const REPLICAS_ANNOTATION: &str = "lifeboat.io/replicas";

/// What was done to one workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// `NAMESPACE/NAME`.
    pub name: String,
    /// `scaled 3 to 0`, `already stopped`, ...
    pub action: String,
}

fn scalable() -> [(&'static str, ApiResource); 2] {
    [
        ("Deployment", api_resource("apps", "v1", "deployments", "Deployment")),
        ("StatefulSet", api_resource("apps", "v1", "statefulsets", "StatefulSet")),
    ]
}

/// A workload's kind, the API it is served by, and the object.
type Scalable = (&'static str, Api<DynamicObject>, DynamicObject);

fn ns_name(o: &DynamicObject) -> (String, String) {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

fn replicas(o: &DynamicObject) -> i64 {
    o.data.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

impl Cluster {
    /// The Deployments and StatefulSets of `namespaces` (matching `selector`), with their kind.
    fn scalable_workloads(&self, namespaces: &[String], selector: Option<&str>) -> Result<Vec<Scalable>, KubeError> {
        let mut out = Vec::new();
        let lp = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        for ns in namespaces {
            for (kind, ar) in scalable() {
                let api: Api<DynamicObject> = Api::namespaced_with(self.client().clone(), ns, &ar);
                let list = self
                    .block_on(api.list(&lp))
                    .map_err(self.api_err(format!("list {} in {ns}", ar.plural)))?;
                for o in list.items {
                    out.push((kind, api.clone(), o));
                }
            }
        }
        Ok(out)
    }

    /// Scales every workload to zero, recording its replica count. Idempotent.
    pub fn scale_down(&self, namespaces: &[String], selector: Option<&str>) -> Result<Vec<Change>, KubeError> {
        let mut out = Vec::new();
        for (kind, api, o) in self.scalable_workloads(namespaces, selector)? {
            let (ns, name) = ns_name(&o);
            let n = replicas(&o);
            let action = if n == 0 {
                "already stopped".to_string()
            } else {
                let patch =
                    json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: n.to_string()}}, "spec": {"replicas": 0}});
                self.block_on(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                    .map_err(self.api_err(format!("scale {kind} {ns}/{name} to 0")))?;
                format!("scaled {n} to 0")
            };
            out.push(Change {
                kind,
                name: format!("{ns}/{name}"),
                action,
            });
        }
        Ok(out)
    }

    /// Scales every workload at zero back to its recorded count (1 when none is recorded) and
    /// drops the record. Idempotent.
    pub fn scale_up(&self, namespaces: &[String], selector: Option<&str>) -> Result<Vec<Change>, KubeError> {
        let mut out = Vec::new();
        for (kind, api, o) in self.scalable_workloads(namespaces, selector)? {
            let (ns, name) = ns_name(&o);
            let action = if replicas(&o) > 0 {
                "already running".to_string()
            } else {
                let n: i64 = o
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REPLICAS_ANNOTATION))
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or(1);
                let patch = json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: null}}, "spec": {"replicas": n}});
                self.block_on(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                    .map_err(self.api_err(format!("scale {kind} {ns}/{name} to {n}")))?;
                format!("scaled 0 to {n}")
            };
            out.push(Change {
                kind,
                name: format!("{ns}/{name}"),
                action,
            });
        }
        Ok(out)
    }

    /// Waits until no container of the workloads' pods runs (a scaled-down workload's pods
    /// terminate within their grace period), up to `limit`. `NAMESPACE/POD` of the pods that
    /// still run then (a node that stopped answering never reports its pods stopped).
    pub fn wait_stopped(
        &self,
        namespaces: &[String],
        selector: Option<&str>,
        limit: std::time::Duration,
    ) -> Result<Vec<String>, KubeError> {
        // The app's own pods (its selector, or every pod of its namespaces), and its workloads'
        // pods, whose labels may not carry the app's.
        let mut pod_selectors: Vec<(String, String)> = namespaces
            .iter()
            .map(|ns| (ns.clone(), selector.unwrap_or_default().to_string()))
            .collect();
        for (_, _, o) in self.scalable_workloads(namespaces, selector)? {
            if let Some(labels) = pod_selector(&o.data) {
                pod_selectors.push((ns_name(&o).0, labels));
            }
        }
        // And the pods of its Jobs (a CronJob's among them) and DaemonSets.
        let lp = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        for ns in namespaces {
            for (kind, _, items) in self.unreplicated(ns, &lp, false)? {
                if kind == "CronJob" {
                    continue;
                }
                for o in items {
                    if let Some(labels) = pod_selector(&o.data) {
                        pod_selectors.push((ns.clone(), labels));
                    }
                }
            }
        }
        pod_selectors.sort();
        pod_selectors.dedup();
        let started = std::time::Instant::now();
        loop {
            let mut running = Vec::new();
            for (ns, labels) in &pod_selectors {
                let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client().clone(), ns);
                let lp = match labels.as_str() {
                    "" => ListParams::default(),
                    l => ListParams::default().labels(l),
                };
                let list = self
                    .block_on(pods.list(&lp))
                    .map_err(self.api_err(format!("list pods {labels} in {ns}")))?;
                for p in list.items {
                    let v = serde_json::to_value(&p).unwrap_or_default();
                    let runs = v
                        .pointer("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .is_some_and(|cs| cs.iter().any(|c| c.pointer("/state/running").is_some()));
                    if runs {
                        running.push(format!("{ns}/{}", p.metadata.name.unwrap_or_default()));
                    }
                }
            }
            running.sort();
            running.dedup();
            if running.is_empty() || started.elapsed() >= limit {
                return Ok(running);
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    /// `KIND NAMESPACE/NAME` of every workload that should run (more than zero replicas).
    pub fn running_workloads(&self, namespaces: &[String], selector: Option<&str>) -> Result<Vec<String>, KubeError> {
        Ok(self
            .scalable_workloads(namespaces, selector)?
            .into_iter()
            .filter(|(_, _, o)| replicas(o) > 0)
            .map(|(kind, _, o)| {
                let (ns, name) = ns_name(&o);
                format!("{kind} {ns}/{name}")
            })
            .collect())
    }
}

/// A workload of an application, as a preflight sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Workload {
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// `NAMESPACE/NAME`.
    pub name: String,
    /// More than zero replicas wanted now.
    pub running: bool,
    /// The images of its containers and init containers.
    pub images: Vec<String>,
    /// CPU (cores) and memory (bytes) its containers request (their limits where they request
    /// nothing), times the replicas it runs with (the recorded count when scaled to zero).
    pub cpus: f64,
    pub memory: u64,
}

/// The label selector (`k=v,...`) of a workload's pods, from its `spec.selector.matchLabels`
/// (`data`: the object, or its fields besides metadata).
pub(crate) fn pod_selector(data: &Value) -> Option<String> {
    let labels = data.pointer("/spec/selector/matchLabels")?.as_object()?;
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// A Kubernetes quantity (`500m`, `2`, `128Mi`, `1e3`, `8048176Ki`) as a number; `None` when it
/// is not one.
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    // The suffix starts at the first letter that is not an exponent's `e` (`1e3`, `2E-1`).
    let b = q.as_bytes();
    let split = (0..b.len())
        .find(|&i| {
            b[i].is_ascii_alphabetic()
                && !(matches!(b[i], b'e' | b'E')
                    && b.get(i + 1)
                        .is_some_and(|c| c.is_ascii_digit() || *c == b'-' || *c == b'+'))
        })
        .unwrap_or(b.len());
    let (number, suffix) = q.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    n.is_finite().then_some(n * factor)
}

/// Images, and CPU and memory per replica, of a pod template's containers.
fn template_needs(template: &Value) -> (Vec<String>, f64, u64) {
    let mut images = Vec::new();
    let (mut cpu, mut memory) = (0.0, 0.0);
    for key in ["containers", "initContainers"] {
        let containers = template.pointer(&format!("/spec/{key}")).and_then(Value::as_array);
        for c in containers.into_iter().flatten() {
            if let Some(i) = c.get("image").and_then(Value::as_str) {
                if !images.iter().any(|x| x == i) {
                    images.push(i.to_string());
                }
            }
            if key == "initContainers" {
                continue;
            }
            let want = |what: &str| {
                ["requests", "limits"]
                    .iter()
                    .find_map(|r| c.pointer(&format!("/resources/{r}/{what}")).and_then(Value::as_str))
                    .and_then(quantity)
                    .unwrap_or(0.0)
            };
            cpu += want("cpu");
            memory += want("memory");
        }
    }
    (images, cpu, memory as u64)
}

/// `docker.io/library/busybox:latest` for `busybox`: the name a node's image list uses.
fn full_image_name(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let has_registry = name
        .split_once('/')
        .is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost");
    let mut full = match (has_registry, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    match digest {
        Some(d) => format!("{full}@{d}"),
        None => {
            if !full.rsplit('/').next().unwrap_or_default().contains(':') {
                full.push_str(":latest");
            }
            full
        }
    }
}

impl Cluster {
    /// The Deployments and StatefulSets of `namespaces` (matching `selector`), with what they need.
    pub fn workloads(&self, namespaces: &[String], selector: Option<&str>) -> Result<Vec<Workload>, KubeError> {
        Ok(self
            .scalable_workloads(namespaces, selector)?
            .into_iter()
            .map(|(kind, _, o)| {
                let (ns, name) = ns_name(&o);
                let now = replicas(&o);
                let recorded = o
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REPLICAS_ANNOTATION))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let n = if now > 0 { now } else { recorded };
                let (images, cpu, memory) = o.data.pointer("/spec/template").map(template_needs).unwrap_or_default();
                Workload {
                    kind,
                    name: format!("{ns}/{name}"),
                    running: now > 0,
                    images,
                    cpus: cpu * n as f64,
                    memory: memory * n.max(0) as u64,
                }
            })
            .collect())
    }

    /// The CPUs and memory (bytes) the nodes can give to pods (their allocatable sum).
    pub fn capacity(&self) -> Result<(f64, u64), KubeError> {
        let mut cpus = 0.0;
        let mut memory = 0.0;
        for n in self.nodes()? {
            let get = |what: &str| {
                n.pointer(&format!("/status/allocatable/{what}"))
                    .and_then(Value::as_str)
                    .and_then(quantity)
                    .unwrap_or(0.0)
            };
            cpus += get("cpu");
            memory += get("memory");
        }
        Ok((cpus, memory as u64))
    }

    /// Whether any node has `image` (by the names in its status: pulled or loaded there).
    pub fn has_image(&self, image: &str) -> Result<bool, KubeError> {
        let want = full_image_name(image);
        Ok(self.nodes()?.iter().any(|n| {
            n.pointer("/status/images")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|i| i.get("names").and_then(Value::as_array).into_iter().flatten())
                .filter_map(Value::as_str)
                .any(|name| full_image_name(name) == want)
        }))
    }

    fn nodes(&self) -> Result<Vec<Value>, KubeError> {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client().clone());
        let list = self
            .block_on(api.list(&ListParams::default()))
            .map_err(self.api_err("list nodes"))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| serde_json::to_value(n).ok())
            .collect())
    }

    /// Deletes `namespaces` and everything in them (the cluster finishes in the background;
    /// their pods may take a minute to go). Namespaces that do not exist are left out.
    pub fn delete_namespaces(&self, namespaces: &[String]) -> Result<Vec<Change>, KubeError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client().clone());
        let mut out = Vec::new();
        for ns in namespaces {
            match self.block_on(api.delete(ns, &Default::default())) {
                Ok(_) => out.push(Change {
                    kind: "Namespace",
                    name: ns.clone(),
                    action: "deleted".into(),
                }),
                Err(e) if crate::status_code(&e) == Some(404) => {}
                Err(e) => return Err(self.api_err(format!("delete namespace {ns}"))(e)),
            }
        }
        Ok(out)
    }

    /// The objects of `kinds` ((group, version, plural, kind)) in `namespaces` matching `selector`,
    /// as the API server returns them (not stripped).
    pub fn objects(
        &self,
        namespaces: &[String],
        selector: Option<&str>,
        kinds: &[(&str, &str, &str, &str)],
    ) -> Result<Vec<Value>, KubeError> {
        let lp = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        let mut out = Vec::new();
        for ns in namespaces {
            for (group, version, plural, kind) in kinds {
                let ar = api_resource(group, version, plural, kind);
                let api: Api<DynamicObject> = Api::namespaced_with(self.client().clone(), ns, &ar);
                let list = self
                    .block_on(api.list(&lp))
                    .map_err(self.api_err(format!("list {plural} in {ns}")))?;
                for o in list.items {
                    let own = *kind == "ConfigMap" && o.metadata.name.as_deref() == Some("kube-root-ca.crt");
                    let mut v = serde_json::to_value(o).unwrap_or_default();
                    if own || crate::rules::controlled(&v) {
                        // Made by the cluster itself on each side, or by a controller.
                        continue;
                    }
                    v["apiVersion"] = Value::String(ar.api_version.clone());
                    v["kind"] = Value::String(kind.to_string());
                    out.push(v);
                }
            }
        }
        Ok(out)
    }
}

/// `KIND/NAMESPACE/NAME` of a live object: how drift names it.
pub fn definition_key(obj: &Value) -> String {
    let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    format!(
        "{}/{}/{}",
        text("/kind"),
        text("/metadata/namespace"),
        text("/metadata/name")
    )
}

/// What a user chose of a live object, for drift between two clusters: [`crate::rules::normalize`]d,
/// without the replica count and its record (they differ by design between an active site and
/// a hot standby).
pub fn essence(obj: &Value) -> Value {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let mut e = crate::rules::normalize(kind, obj);
    if let Some(spec) = e.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("replicas");
    }
    if let Some(m) = e.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(REPLICAS_ANNOTATION);
            if a.is_empty() {
                m.remove("annotations");
            }
        }
    }
    e
}

/// The kinds of an application's definitions a hot standby keeps in step (group, version,
/// plural, kind): its workloads that can be scaled to zero, and what they use by name.
pub const APP_KINDS: &[(&str, &str, &str, &str)] = &[
    ("apps", "v1", "deployments", "Deployment"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
];

fn api_resource(group: &str, version: &str, plural: &str, kind: &str) -> ApiResource {
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

impl Cluster {
    /// Creates `obj` (a live object of one of [`APP_KINDS`], from another cluster) or replaces the
    /// one of its name here, after [`crate::rules::strip`] and with `replicas` set; `created` or
    /// `replaced`. A replace keeps what this cluster assigned ([`crate::rules::keep_assigned`]).
    pub fn put(&self, mut obj: Value, replicas: Option<u64>) -> Result<&'static str, KubeError> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let Some((g, v, p, k)) = APP_KINDS.iter().find(|(_, _, _, k)| *k == kind) else {
            return Err(KubeError::BadOption(format!(
                "{kind}: not a kind of an app's definitions"
            )));
        };
        crate::rules::strip(k, &mut obj);
        if let Some(n) = replicas {
            crate::rules::set_replicas(k, &mut obj, n);
        }
        let text = |ptr: &str| obj.pointer(ptr).and_then(Value::as_str).unwrap_or_default().to_string();
        let (ns, name) = (text("/metadata/namespace"), text("/metadata/name"));
        let what = format!("{kind} {ns}/{name}");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client().clone(), &ns, &api_resource(g, v, p, k));
        let pp = kube::api::PostParams {
            dry_run: false,
            field_manager: Some("lifeboat".into()),
        };
        let live = self.block_on(api.get_opt(&name)).map_err(self.api_err(what.clone()))?;
        if let Some(live) = &live {
            crate::rules::keep_assigned(k, &live.data, &mut obj);
        }
        let mut o: DynamicObject =
            serde_json::from_value(obj).map_err(|e| KubeError::BadOption(format!("{what}: {e}")))?;
        match live {
            None => {
                self.block_on(api.create(&pp, &o)).map_err(self.api_err(what))?;
                Ok("created")
            }
            Some(live) => {
                o.metadata.resource_version = live.metadata.resource_version;
                self.block_on(api.replace(&name, &pp, &o)).map_err(self.api_err(what))?;
                Ok("replaced")
            }
        }
    }
}

/// An API and the objects listed through it.
type Listed = (Api<DynamicObject>, Vec<DynamicObject>);
/// An object kind that runs without replicas, its API and its objects.
type Unreplicated = (&'static str, Api<DynamicObject>, Vec<DynamicObject>);

/// The name of the NetworkPolicy that isolates a drill's namespace.
pub const ISOLATION_POLICY: &str = "lifeboat-drill-isolation";

/// The NetworkPolicy of [`Cluster::isolate_namespace`].
pub fn isolation_policy(ns: &str, copy: &str, allow: &[String]) -> Value {
    let blocks: Vec<Value> = allow.iter().map(|c| json!({"ipBlock": {"cidr": c}})).collect();
    let mut ingress = vec![json!({"from": [{"podSelector": {}}]})];
    let mut egress = vec![
        json!({"to": [{"podSelector": {}}]}),
        json!({"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
    ];
    if !blocks.is_empty() {
        ingress.push(json!({ "from": blocks.clone() }));
        egress.push(json!({ "to": blocks }));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": ISOLATION_POLICY, "namespace": ns, "labels": {crate::restore::DRILL_LABEL: copy}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
    })
}

/// Whether a server of this version keeps a Job's `spec.suspend`: Job suspension is on by
/// default from Kubernetes 1.22 (on 1.21 it needs the `SuspendJob` feature gate, so 1.21 counts
/// as without). `minor` may carry a suffix (`22+`).
pub fn jobs_can_suspend(major: &str, minor: &str) -> bool {
    let num = |s: &str| -> u32 { s.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0) };
    let (major, minor) = (num(major), num(minor));
    major > 1 || (major == 1 && minor >= 22)
}

impl Cluster {
    /// Whether this cluster keeps a Job's `spec.suspend` (see [`jobs_can_suspend`]).
    pub fn jobs_can_suspend(&self) -> Result<bool, KubeError> {
        let v = self
            .block_on(self.client().apiserver_version())
            .map_err(self.api_err("version"))?;
        Ok(jobs_can_suspend(&v.major, &v.minor))
    }

    /// Creates the Secret `secret` in `ns`, or replaces the one of its name.
    pub(crate) fn put_secret(&self, ns: &str, secret: Value, dry_run: bool) -> Result<(), KubeError> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client().clone(), ns, &api_resource("", "v1", "secrets", "Secret"));
        let mut obj: DynamicObject =
            serde_json::from_value(secret).map_err(|e| KubeError::BadOption(format!("held-back secret: {e}")))?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        let what = format!("Secret {ns}/{name}");
        let pp = kube::api::PostParams {
            dry_run,
            field_manager: Some("lifeboat".into()),
        };
        match self.block_on(api.create(&pp, &obj)) {
            Ok(_) => Ok(()),
            Err(e) if crate::status_code(&e) == Some(409) => {
                let live = self.block_on(api.get(&name)).map_err(self.api_err(what.clone()))?;
                obj.metadata.resource_version = live.metadata.resource_version;
                self.block_on(api.replace(&name, &pp, &obj))
                    .map_err(self.api_err(what))?;
                Ok(())
            }
            Err(e) => Err(self.api_err(what)(e)),
        }
    }

    /// The CronJob API of `ns`: `batch/v1` (Kubernetes 1.21 and later), else `batch/v1beta1`;
    /// `None` when neither is served.
    fn cronjobs(&self, ns: &str, lp: &ListParams) -> Result<Option<Listed>, KubeError> {
        for version in ["v1", "v1beta1"] {
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.client().clone(),
                ns,
                &api_resource("batch", version, "cronjobs", "CronJob"),
            );
            match self.block_on(api.list(lp)) {
                Ok(list) => return Ok(Some((api, list.items))),
                Err(e) if crate::status_code(&e) == Some(404) => continue,
                Err(e) => return Err(self.api_err(format!("list cronjobs in {ns}"))(e)),
            }
        }
        Ok(None)
    }

    /// The CronJobs, Jobs and DaemonSets of `ns` matching `lp` (and its Pods, `with_pods`): what
    /// runs without replicas, with its kind and API.
    fn unreplicated(&self, ns: &str, lp: &ListParams, with_pods: bool) -> Result<Vec<Unreplicated>, KubeError> {
        let mut workloads = Vec::new();
        let mut cronjob_uids = Vec::new();
        if let Some((api, items)) = self.cronjobs(ns, lp)? {
            cronjob_uids = items.iter().filter_map(|o| o.metadata.uid.clone()).collect();
            workloads.push(("CronJob", api, items));
        }
        let mut kinds = vec![
            ("Job", api_resource("batch", "v1", "jobs", "Job")),
            ("DaemonSet", api_resource("apps", "v1", "daemonsets", "DaemonSet")),
        ];
        if with_pods {
            kinds.push(("Pod", api_resource("", "v1", "pods", "Pod")));
        }
        for (kind, ar) in kinds {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client().clone(), ns, &ar);
            let mut items = self
                .block_on(api.list(lp))
                .map_err(self.api_err(format!("list {} in {ns}", ar.plural)))?
                .items;
            // The Jobs a selected CronJob made carry its job template's labels, not the app's
            // (found by the staging test: one kept running on a fenced primary): they are the
            // app's by their owner.
            if kind == "Job" && !cronjob_uids.is_empty() && lp.label_selector.is_some() {
                let all = self
                    .block_on(api.list(&ListParams::default()))
                    .map_err(self.api_err(format!("list {} in {ns}", ar.plural)))?;
                for j in all.items {
                    let owned = j
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| cronjob_uids.contains(&o.uid));
                    if owned && !items.iter().any(|i| i.metadata.name == j.metadata.name) {
                        items.push(j);
                    }
                }
            }
            workloads.push((kind, api, items));
        }
        Ok(workloads)
    }

    /// The fence's part for what runs without replicas in `namespaces` (matching `selector`):
    /// CronJobs suspended, Jobs suspended where the cluster can (else a running Job kept in a
    /// held-back Secret and deleted with its pods), DaemonSets held off their nodes, running bare
    /// Pods kept and deleted; see [`crate::rules::fence_hold`]. [`Cluster::release`] undoes it.
    /// Idempotent: what is held already is left, and a retried fence keeps what it kept before.
    pub fn hold(&self, namespaces: &[String], selector: Option<&str>) -> Result<Vec<Change>, KubeError> {
        let lp = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        let can_suspend = self.jobs_can_suspend()?;
        let mut out = Vec::new();
        for ns in namespaces {
            for (kind, api, items) in self.unreplicated(ns, &lp, true)? {
                for o in items {
                    let v = serde_json::to_value(&o).unwrap_or_default();
                    let (_, name) = ns_name(&o);
                    let action = match crate::rules::fence_hold(kind, &v, can_suspend) {
                        crate::rules::FenceHold::Leave => continue,
                        crate::rules::FenceHold::Patch(patch, action) => {
                            self.block_on(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                                .map_err(self.api_err(format!("hold {kind} {ns}/{name}")))?;
                            action
                        }
                        crate::rules::FenceHold::KeepAndDelete(doc, action) => {
                            // Kept before it is deleted: a fence cut short between the two keeps it twice,
                            // never not at all.
                            self.put_secret(ns, crate::restore::held_secret(kind, ns, &doc), false)?;
                            // Foreground: the object stays (being deleted) until its pods are gone,
                            // so the fence's wait sees them through its pod selector.
                            match self.block_on(api.delete(&name, &kube::api::DeleteParams::foreground())) {
                                Ok(_) => {}
                                Err(e) if crate::status_code(&e) == Some(404) => {}
                                Err(e) => return Err(self.api_err(format!("delete {kind} {ns}/{name}"))(e)),
                            }
                            action.to_string()
                        }
                    };
                    out.push(Change {
                        kind,
                        name: format!("{ns}/{name}"),
                        action,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Starts what a held restore ([`crate::RestoreOptions::hold`]) held back in `namespaces`
    /// (matching `selector`): DaemonSets released onto their nodes, the bare Pods and Jobs kept
    /// for the start created, and, with `scheduled` (not for a drill's copy), CronJobs and Jobs
    /// resumed (a CronJob its owner had suspended stays suspended). Idempotent: what was not held
    /// back is left alone.
    pub fn release(
        &self,
        namespaces: &[String],
        selector: Option<&str>,
        scheduled: bool,
    ) -> Result<Vec<Change>, KubeError> {
        let lp = match selector {
            Some(s) => ListParams::default().labels(s),
            None => ListParams::default(),
        };
        let held_lp = ListParams::default().labels(&match selector {
            Some(s) => format!("{}=1,{s}", crate::restore::HELD_LABEL),
            None => format!("{}=1", crate::restore::HELD_LABEL),
        });
        let mut out = Vec::new();
        for ns in namespaces {
            for (kind, api, items) in self.unreplicated(ns, &lp, false)? {
                for o in items {
                    let v = serde_json::to_value(&o).unwrap_or_default();
                    let Some((patch, action)) = crate::rules::release_patch(kind, &v, scheduled) else {
                        continue;
                    };
                    let (_, name) = ns_name(&o);
                    self.block_on(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                        .map_err(self.api_err(format!("start {kind} {ns}/{name}")))?;
                    out.push(Change {
                        kind,
                        name: format!("{ns}/{name}"),
                        action,
                    });
                }
            }
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client().clone(), ns);
            let held = self
                .block_on(secrets.list(&held_lp))
                .map_err(self.api_err(format!("list held-back objects in {ns}")))?;
            for s in held.items {
                if s.type_.as_deref() != Some(crate::restore::HELD_TYPE) {
                    continue;
                }
                let secret = s.metadata.name.clone().unwrap_or_default();
                let doc = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(crate::restore::HELD_KEY))
                    .and_then(|b| serde_json::from_slice::<Value>(&b.0).ok())
                    .ok_or_else(|| KubeError::BadOption(format!("Secret {ns}/{secret}: no held-back object in it")))?;
                let kind: &'static str = match doc.get("kind").and_then(Value::as_str) {
                    Some("Pod") => "Pod",
                    Some("Job") => "Job",
                    other => {
                        return Err(KubeError::BadOption(format!(
                            "Secret {ns}/{secret}: a held-back {other:?} cannot be started"
                        )))
                    }
                };
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if kind == "Job" && !scheduled {
                    out.push(Change {
                        kind,
                        name: format!("{ns}/{name}"),
                        action: "held back (a drill's copy runs no Jobs)".into(),
                    });
                    continue;
                }
                let ar = if kind == "Pod" {
                    api_resource("", "v1", "pods", "Pod")
                } else {
                    api_resource("batch", "v1", "jobs", "Job")
                };
                let api: Api<DynamicObject> = Api::namespaced_with(self.client().clone(), ns, &ar);
                let obj: DynamicObject = serde_json::from_value(doc)
                    .map_err(|e| KubeError::BadOption(format!("Secret {ns}/{secret}: {e}")))?;
                let pp = kube::api::PostParams {
                    dry_run: false,
                    field_manager: Some("lifeboat".into()),
                };
                let action = match self.block_on(api.create(&pp, &obj)) {
                    Ok(_) => "created",
                    Err(e) if crate::status_code(&e) == Some(409) => "already exists",
                    Err(e) => return Err(self.api_err(format!("create {kind} {ns}/{name}"))(e)),
                };
                match self.block_on(secrets.delete(&secret, &Default::default())) {
                    Ok(_) => {}
                    Err(e) if crate::status_code(&e) == Some(404) => {}
                    Err(e) => return Err(self.api_err(format!("delete Secret {ns}/{secret}"))(e)),
                }
                out.push(Change {
                    kind,
                    name: format!("{ns}/{name}"),
                    action: action.into(),
                });
            }
        }
        Ok(out)
    }

    /// Cuts the pods of `ns` off from everything but each other and the cluster's DNS (port 53 of
    /// `k8s-app=kube-dns` pods): a NetworkPolicy [`ISOLATION_POLICY`] that denies all other
    /// ingress and egress, opened to the networks in `allow` (CIDRs) both ways. Enforced by the
    /// cluster's network plugin; a cluster without one (plain kubelet networking) stores it and
    /// enforces nothing. Created or replaced.
    pub fn isolate_namespace(&self, ns: &str, copy: &str, allow: &[String]) -> Result<Change, KubeError> {
        let policy = isolation_policy(ns, copy, allow);
        let ar = api_resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client().clone(), ns, &ar);
        let mut obj: DynamicObject = serde_json::from_value(policy).expect("a valid NetworkPolicy");
        let what = format!("NetworkPolicy {ns}/{ISOLATION_POLICY}");
        let pp = kube::api::PostParams {
            dry_run: false,
            field_manager: Some("lifeboat".into()),
        };
        let action = match self.block_on(api.create(&pp, &obj)) {
            Ok(_) => "created",
            Err(e) if crate::status_code(&e) == Some(409) => {
                let live = self
                    .block_on(api.get(ISOLATION_POLICY))
                    .map_err(self.api_err(what.clone()))?;
                obj.metadata.resource_version = live.metadata.resource_version;
                self.block_on(api.replace(ISOLATION_POLICY, &pp, &obj))
                    .map_err(self.api_err(what))?;
                "replaced"
            }
            Err(e) => return Err(self.api_err(what)(e)),
        };
        Ok(Change {
            kind: "NetworkPolicy",
            name: format!("{ns}/{ISOLATION_POLICY}"),
            action: format!("{action} (default deny, {} networks allowed)", allow.len()),
        })
    }

    /// Deletes the cluster-scoped objects an isolated restore named `copy` created (those with
    /// [`crate::restore::DRILL_LABEL`]` = copy`), Namespaces left out ([`Cluster::delete_namespaces`]).
    pub fn delete_isolated_cluster_objects(&self, copy: &str) -> Result<Vec<Change>, KubeError> {
        let (resources, _) = crate::discovery::discover(self)?;
        let lp = ListParams::default().labels(&format!("{}={copy}", crate::restore::DRILL_LABEL));
        let mut out = Vec::new();
        for r in resources
            .iter()
            .filter(|r| !r.namespaced && r.can("delete") && !(r.group.is_empty() && r.plural == "namespaces"))
        {
            let api: Api<DynamicObject> = Api::all_with(self.client().clone(), &r.api_resource());
            let list = match self.block_on(api.list(&lp)) {
                Ok(l) => l,
                Err(e) if matches!(crate::status_code(&e), Some(404 | 405)) => continue,
                Err(e) => return Err(self.api_err(format!("list {}", r.key()))(e)),
            };
            for o in list.items {
                let name = o.metadata.name.clone().unwrap_or_default();
                match self.block_on(api.delete(&name, &Default::default())) {
                    Ok(_) => {}
                    Err(e) if crate::status_code(&e) == Some(404) => {}
                    Err(e) => return Err(self.api_err(format!("delete {} {name}", r.kind))(e)),
                }
                out.push(Change {
                    kind: "cluster-scoped",
                    name: format!("{} {name}", r.kind),
                    action: "deleted".into(),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_namespace_is_denied_everything_but_itself_dns_and_its_allow_list() {
        let p = isolation_policy("drill-1-shop", "drill-1", &[]);
        assert_eq!(p["spec"]["podSelector"], json!({}), "every pod of the namespace");
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(p["spec"]["ingress"], json!([{"from": [{"podSelector": {}}]}]));
        let egress = p["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2, "own pods and DNS only");
        assert_eq!(egress[1]["ports"][0]["port"], 53);
        assert!(!p.to_string().contains("ipBlock"));
        let p = isolation_policy("drill-1-shop", "drill-1", &["10.77.0.0/16".into()]);
        assert_eq!(p["spec"]["ingress"][1]["from"][0]["ipBlock"]["cidr"], "10.77.0.0/16");
        assert_eq!(p["spec"]["egress"][2]["to"][0]["ipBlock"]["cidr"], "10.77.0.0/16");
    }

    #[test]
    fn job_suspension_is_known_from_kubernetes_1_22() {
        assert!(!jobs_can_suspend("1", "20"));
        assert!(!jobs_can_suspend("1", "21"));
        assert!(jobs_can_suspend("1", "22"));
        assert!(jobs_can_suspend("1", "27+"));
        assert!(jobs_can_suspend("2", "0"));
        assert!(!jobs_can_suspend("", ""));
    }

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        for (q, v) in [
            ("2", 2.0),
            ("500m", 0.5),
            ("0.25", 0.25),
            ("128Mi", 128.0 * 1024.0 * 1024.0),
            ("8048176Ki", 8048176.0 * 1024.0),
            ("1G", 1e9),
            ("1e3", 1000.0),
            ("2E", 2e18),
        ] {
            assert_eq!(quantity(q), Some(v), "{q}");
        }
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("1Qi"), None);
    }

    #[test]
    fn workload_needs_count_containers_times_requests_or_limits() {
        let t = json!({"spec": {
            "initContainers": [{"image": "busybox:1.36", "resources": {"requests": {"cpu": "4"}}}],
            "containers": [
                {"image": "web:1", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"image": "web:1", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"image": "side:2"}]}});
        let (images, cpu, memory) = template_needs(&t);
        assert_eq!(images, ["web:1", "side:2", "busybox:1.36"]);
        assert_eq!(cpu, 1.25);
        assert_eq!(memory, 64 * 1024 * 1024 + 1024 * 1024 * 1024);
    }

    #[test]
    fn image_names_compare_in_their_full_form() {
        assert_eq!(full_image_name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full_image_name("lifeboat-lab/web:1"), "docker.io/lifeboat-lab/web:1");
        assert_eq!(
            full_image_name("docker.io/lifeboat-lab/web:1"),
            "docker.io/lifeboat-lab/web:1"
        );
        assert_eq!(full_image_name("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(full_image_name("r.io/a/b@sha256:00"), "r.io/a/b@sha256:00");
    }
}
