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
    let ar = |kind: &str, plural: &str| ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    [
        ("Deployment", ar("Deployment", "deployments")),
        ("StatefulSet", ar("StatefulSet", "statefulsets")),
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
