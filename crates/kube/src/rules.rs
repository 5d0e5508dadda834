//! What a backup leaves out, what a restore strips, the order a restore follows, and how
//! namespaces are mapped. Pure functions on JSON objects, so they are tested without a cluster.
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::discovery::Resource;

/// The namespaces every cluster has. A whole-cluster backup takes what users made in them (RBAC,
/// jobs, service accounts of add-ons); what the cluster makes there itself is left out by
/// [`excluded_object`]; their Namespace objects are never restored (they exist).
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Resources never backed up (`group/plural`), and why. Documented in `docs/kubernetes.md`.
/// `--include` naming one of them explicitly brings it back.
pub const EXCLUDED_RESOURCES: [(&str, &str); 14] = [
    ("core/events", "history, not state"),
    ("events.k8s.io/events", "history, not state"),
    ("core/nodes", "machines belong to the target cluster"),
    ("core/componentstatuses", "reported by the control plane"),
    ("coordination.k8s.io/leases", "leader election and node heartbeats"),
    ("certificates.k8s.io/certificatesigningrequests", "transient requests"),
    ("storage.k8s.io/csinodes", "per-node driver state"),
    ("storage.k8s.io/volumeattachments", "per-node attachment state"),
    ("metrics.k8s.io/pods", "live metrics"),
    ("metrics.k8s.io/nodes", "live metrics"),
    ("core/bindings", "a verb, not state"),
    ("authorization.k8s.io/selfsubjectrulesreviews", "a query, not state"),
    (
        "flowcontrol.apiserver.k8s.io/flowschemas",
        "API server traffic settings of the target cluster",
    ),
    (
        "flowcontrol.apiserver.k8s.io/prioritylevelconfigurations",
        "API server traffic settings of the target cluster",
    ),
];

fn group_plural(r: &Resource) -> String {
    format!("{}/{}", if r.group.is_empty() { "core" } else { &r.group }, r.plural)
}

/// Why a resource is excluded as a whole, if it is.
pub fn excluded_resource(r: &Resource) -> Option<&'static str> {
    let gp = group_plural(r);
    EXCLUDED_RESOURCES.iter().find(|(k, _)| *k == gp).map(|(_, why)| *why)
}

fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    obj.pointer("/metadata/labels").and_then(Value::as_object)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The service accounts the controller manager makes in `kube-system` for its controllers
/// (`--use-service-account-credentials`), Kubernetes 1.20 to 1.33.
pub const CONTROLLER_SERVICE_ACCOUNTS: [&str; 38] = [
    "attachdetach-controller",
    "bootstrap-signer",
    "certificate-controller",
    "clusterrole-aggregation-controller",
    "cronjob-controller",
    "daemon-set-controller",
    "deployment-controller",
    "disruption-controller",
    "endpoint-controller",
    "endpointslice-controller",
    "endpointslicemirroring-controller",
    "ephemeral-volume-controller",
    "expand-controller",
    "generic-garbage-collector",
    "horizontal-pod-autoscaler",
    "job-controller",
    "legacy-service-account-token-cleaner",
    "namespace-controller",
    "node-controller",
    "persistent-volume-binder",
    "pod-garbage-collector",
    "pv-protection-controller",
    "pvc-protection-controller",
    "replicaset-controller",
    "replication-controller",
    "resource-claim-controller",
    "resourcequota-controller",
    "root-ca-cert-publisher",
    "service-account-controller",
    "service-cidrs-controller",
    "service-controller",
    "statefulset-controller",
    "token-cleaner",
    "ttl-after-finished-controller",
    "ttl-controller",
    "validatingadmissionpolicy-status-controller",
    "volumeattributesclass-protection-controller",
    "selinux-warning-controller",
];

/// Whether an object has a controlling owner (a controller recreates it).
pub fn controlled(obj: &Value) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r.get("controller") == Some(&Value::Bool(true))))
}

/// Why one object is left out, if it is: what a restore must not recreate, because the target
/// cluster makes it itself (controller-owned objects, service-account tokens, per-namespace
/// defaults, the API server's own bootstrap objects).
pub fn excluded_object(r: &Resource, obj: &Value) -> Option<&'static str> {
    let gp = group_plural(r);
    match gp.as_str() {
        "core/pods" | "apps/replicasets" | "apps/controllerrevisions" | "batch/jobs" if controlled(obj) => {
            Some("owned by a controller, which recreates it")
        }
        "core/secrets" if obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token") => {
            Some("service-account token, minted by the target cluster")
        }
        "core/configmaps" if name(obj) == "kube-root-ca.crt" => Some("made in every namespace by the cluster"),
        "core/configmaps"
            if namespace(obj) == "kube-system"
                && matches!(
                    name(obj),
                    "extension-apiserver-authentication" | "kube-apiserver-legacy-service-account-token-tracking"
                ) =>
        {
            Some("written by the API server")
        }
        "core/configmaps" | "core/endpoints"
            if annotation(obj, "control-plane.alpha.kubernetes.io/leader").is_some() =>
        {
            Some("a leader-election record")
        }
        "core/serviceaccounts"
            if namespace(obj) == "kube-system" && CONTROLLER_SERVICE_ACCOUNTS.contains(&name(obj)) =>
        {
            Some("made by the controller manager for its controllers")
        }
        "core/serviceaccounts" if name(obj) == "default" => Some("made in every namespace by the cluster"),
        "discovery.k8s.io/endpointslices"
            if labels(obj)
                .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
                .and_then(Value::as_str)
                .is_some_and(|m| m.ends_with(".k8s.io")) =>
        {
            Some("managed by the endpoint-slice controller")
        }
        "apiregistration.k8s.io/apiservices" if obj.pointer("/spec/service").is_none_or(Value::is_null) => {
            Some("served by the API server itself")
        }
        "rbac.authorization.k8s.io/clusterroles"
        | "rbac.authorization.k8s.io/clusterrolebindings"
        | "rbac.authorization.k8s.io/roles"
        | "rbac.authorization.k8s.io/rolebindings"
            if labels(obj)
                .and_then(|l| l.get("kubernetes.io/bootstrapping"))
                .and_then(Value::as_str)
                == Some("rbac-defaults") =>
        {
            Some("bootstrap RBAC of the API server")
        }
        "flowcontrol.apiserver.k8s.io/flowschemas" | "flowcontrol.apiserver.k8s.io/prioritylevelconfigurations"
            if annotation(obj, "apf.kubernetes.io/autoupdate-spec") == Some("true") =>
        {
            Some("maintained by the API server")
        }
        "scheduling.k8s.io/priorityclasses" if name(obj).starts_with("system-") => Some("built into the cluster"),
        "core/services" | "core/endpoints" | "discovery.k8s.io/endpointslices"
            if name(obj) == "kubernetes"
                && obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some("default") =>
        {
            Some("the API server's own service")
        }
        "core/namespaces" if SYSTEM_NAMESPACES.contains(&name(obj)) || name(obj) == "default" => {
            Some("exists in every cluster")
        }
        _ => None,
    }
}

/// Endpoints of a Service with a selector are made by the endpoints controller; only endpoints of
/// selector-less Services (set by hand) are kept. `services_with_selector` holds `namespace/name`.
pub fn managed_endpoints(obj: &Value, services_with_selector: &std::collections::HashSet<String>) -> bool {
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    services_with_selector.contains(&format!("{ns}/{}", name(obj)))
}

/// Removes what the API server sets, so the object can be created on another cluster.
pub fn strip(kind: &str, obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "generation",
            "selfLink",
            "ownerReferences",
            "generateName",
        ] {
            m.remove(k);
        }
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            for k in [
                "pv.kubernetes.io/bind-completed",
                "pv.kubernetes.io/bound-by-controller",
                "pv.kubernetes.io/provisioned-by",
                "volume.beta.kubernetes.io/storage-provisioner",
                "volume.kubernetes.io/storage-provisioner",
                "deployment.kubernetes.io/revision",
            ] {
                a.remove(k);
            }
            if a.is_empty() {
                m.remove("annotations");
            }
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    match kind {
        "Service" => {
            let node_ports = matches!(spec_type(obj), Some("NodePort" | "LoadBalancer"));
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                if !headless {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                spec.remove("healthCheckNodePort");
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    if !node_ports {
                        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                            p.remove("nodePort");
                        }
                    }
                }
            }
        }
        "PersistentVolumeClaim" => {
            // Bound again on the target: to the restored PV of the same name if there is one.
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("volumeName");
            }
        }
        "PersistentVolume" => {
            if let Some(c) = obj.pointer_mut("/spec/claimRef").and_then(Value::as_object_mut) {
                c.remove("uid");
                c.remove("resourceVersion");
            }
        }
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("nodeName");
            }
        }
        "ServiceAccount" => {
            // Token secrets are minted by each cluster; references to them do not travel.
            let prefix = format!("{}-token-", name(obj));
            if let Some(secrets) = obj.get_mut("secrets").and_then(Value::as_array_mut) {
                secrets.retain(|s| {
                    !s.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.starts_with(&prefix))
                });
                if secrets.is_empty() {
                    obj.as_object_mut().expect("object").remove("secrets");
                }
            }
        }
        "Job" => {
            // The controller-uid selector and labels are set by the API server.
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("selector");
                if let Some(l) = spec
                    .get_mut("template")
                    .and_then(|t| t.pointer_mut("/metadata/labels"))
                    .and_then(Value::as_object_mut)
                {
                    l.remove("controller-uid");
                    l.remove("job-name");
                }
            }
        }
        _ => {}
    }
}

fn spec_type(obj: &Value) -> Option<&str> {
    obj.pointer("/spec/type").and_then(Value::as_str)
}

/// Restore order: lower first. Objects a later group refers to come earlier; admission webhooks
/// and API services last, so they cannot block the restore of anything else.
pub fn restore_rank(group: &str, kind: &str) -> u32 {
    match (group, kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        ("storage.k8s.io", "StorageClass") => 2,
        ("scheduling.k8s.io", "PriorityClass") => 2,
        ("", "PersistentVolume") => 3,
        ("", "PersistentVolumeClaim") => 4,
        ("", "Secret") | ("", "ConfigMap") => 5,
        ("", "ServiceAccount") => 6,
        ("rbac.authorization.k8s.io", "ClusterRole") | ("rbac.authorization.k8s.io", "Role") => 7,
        ("rbac.authorization.k8s.io", _) => 8,
        ("", "LimitRange") | ("", "ResourceQuota") => 8,
        ("", "Service") => 9,
        ("", "Endpoints") | ("discovery.k8s.io", _) => 10,
        ("networking.k8s.io", "Ingress") => 12,
        ("admissionregistration.k8s.io", _) => 20,
        ("apiregistration.k8s.io", "APIService") => 21,
        _ => 11, // workloads and custom resources
    }
}

/// Rewrites namespaces by `map` (old -> new): the object's own namespace, a Namespace's name,
/// and the references that carry namespaces (RBAC subjects, webhook and API-service backends,
/// CRD conversion webhooks, a PV's claim).
pub fn map_namespaces(kind: &str, obj: &mut Value, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let swap = |v: &mut Value| {
        if let Some(new) = v.as_str().and_then(|s| map.get(s)) {
            *v = Value::String(new.clone());
        }
    };
    if let Some(ns) = obj.pointer_mut("/metadata/namespace") {
        swap(ns);
    }
    match kind {
        "Namespace" => {
            if let Some(n) = obj.pointer_mut("/metadata/name") {
                swap(n);
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
                for s in subjects {
                    if let Some(ns) = s.get_mut("namespace") {
                        swap(ns);
                    }
                }
            }
        }
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
            if let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) {
                for h in hooks {
                    if let Some(ns) = h.pointer_mut("/clientConfig/service/namespace") {
                        swap(ns);
                    }
                }
            }
        }
        "APIService" => {
            if let Some(ns) = obj.pointer_mut("/spec/service/namespace") {
                swap(ns);
            }
        }
        "CustomResourceDefinition" => {
            if let Some(ns) = obj.pointer_mut("/spec/conversion/webhook/clientConfig/service/namespace") {
                swap(ns);
            }
        }
        "PersistentVolume" => {
            if let Some(ns) = obj.pointer_mut("/spec/claimRef/namespace") {
                swap(ns);
            }
        }
        _ => {}
    }
}

/// Rewrites storage class names by `map` (PVCs, PVs and StorageClasses themselves).
pub fn map_storage_classes(kind: &str, obj: &mut Value, map: &BTreeMap<String, String>) {
    let ptr = match kind {
        "PersistentVolumeClaim" | "PersistentVolume" => "/spec/storageClassName",
        "StorageClass" => "/metadata/name",
        _ => return,
    };
    if let Some(v) = obj.pointer_mut(ptr) {
        if let Some(new) = v.as_str().and_then(|s| map.get(s)) {
            *v = Value::String(new.clone());
        }
    }
}

/// Sets the replicas of scalable workloads. Setting zero on one that had more records the count
/// in [`crate::control::REPLICAS_ANNOTATION`] (unless one is recorded already), so that
/// [`crate::Cluster::scale_up`] brings back what ran.
pub fn set_replicas(kind: &str, obj: &mut Value, replicas: u64) {
    if !matches!(
        kind,
        "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController"
    ) {
        return;
    }
    let before = obj.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1);
    if replicas == 0 && before > 0 {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let a = m
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = a.as_object_mut() {
                a.entry(crate::control::REPLICAS_ANNOTATION)
                    .or_insert_with(|| Value::String(before.to_string()));
            }
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("replicas".into(), Value::from(replicas));
    }
}

/// Where a CronJob or Job suspended by Lifeboat keeps its own `spec.suspend` (`"true"` or
/// `"false"`), so that starting it brings back exactly what the user set.
pub const SUSPEND_ANNOTATION: &str = "lifeboat.io/suspend";
/// The node label a held-back DaemonSet's pods must have: no node has it, so no pod is made.
/// Starting the DaemonSet removes it from the pod template's `nodeSelector`.
pub const HOLD_NODE_LABEL: &str = "lifeboat.io/held-back";
/// The value [`HOLD_NODE_LABEL`] is given in a held-back DaemonSet's `nodeSelector`.
pub const HOLD_NODE_VALUE: &str = "no-node-has-this";

/// What a copy that must run nothing (a staged hot standby, a drill's copy before it starts)
/// does with one object, after [`hold_back`] changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Created as it is now (it runs nothing as it stands).
    Create,
    /// Not created now: kept until the copy is started (the reason says why).
    AtStart(&'static str),
}

fn annotate(obj: &mut Value, key: &str, value: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let a = m
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = a.as_object_mut() {
            // A record made earlier (an object stored held back) stays: it says what the user set.
            a.entry(key).or_insert_with(|| Value::String(value.to_string()));
        }
    }
}

/// Changes `obj` so that it runs nothing once created: CronJobs and (where the cluster can
/// suspend them, `jobs_can_suspend`) Jobs get `spec.suspend: true` with their own value recorded in
/// [`SUSPEND_ANNOTATION`]; a DaemonSet's pods get a node selector no node matches
/// ([`HOLD_NODE_LABEL`]); bare Pods, and Jobs on a cluster that cannot suspend them, are kept for
/// the start. Workloads with replicas are [`set_replicas`]'s. Everything else is left as it is.
pub fn hold_back(kind: &str, obj: &mut Value, jobs_can_suspend: bool) -> Hold {
    match kind {
        "CronJob" | "Job" => {
            if kind == "Job" && !jobs_can_suspend {
                return Hold::AtStart(
                    "a Job runs once created and this cluster cannot suspend Jobs (Kubernetes before 1.22)",
                );
            }
            let own = obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false);
            annotate(obj, SUSPEND_ANNOTATION, if own { "true" } else { "false" });
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("suspend".into(), Value::Bool(true));
            }
            Hold::Create
        }
        "DaemonSet" => {
            if let Some(spec) = obj.pointer_mut("/spec/template/spec").and_then(Value::as_object_mut) {
                let sel = spec
                    .entry("nodeSelector")
                    .or_insert_with(|| Value::Object(Default::default()));
                if !sel.is_object() {
                    *sel = Value::Object(Default::default());
                }
                sel[HOLD_NODE_LABEL] = Value::String(HOLD_NODE_VALUE.into());
            }
            Hold::Create
        }
        "Pod" => Hold::AtStart("a bare Pod runs once created"),
        _ => Hold::Create,
    }
}

/// The merge patch that undoes [`hold_back`] on a live object, and what it does; `None` when the
/// object was not held back by Lifeboat (a CronJob the user suspended stays suspended). With
/// `scheduled: false` (a drill's copy), CronJobs and Jobs stay suspended: a drill must not run
/// the app's scheduled and batch work against what it reaches.
pub fn release_patch(kind: &str, obj: &Value, scheduled: bool) -> Option<(Value, String)> {
    match kind {
        "CronJob" | "Job" if scheduled => {
            let own = annotation(obj, SUSPEND_ANNOTATION)?;
            let own = own == "true";
            let action = if own {
                "suspended by its owner: left suspended".to_string()
            } else {
                "resumed".to_string()
            };
            Some((
                serde_json::json!({"metadata": {"annotations": {SUSPEND_ANNOTATION: null}}, "spec": {"suspend": own}}),
                action,
            ))
        }
        "DaemonSet" => {
            obj.pointer(&format!(
                "/spec/template/spec/nodeSelector/{}",
                HOLD_NODE_LABEL.replace('/', "~1")
            ))?;
            Some((
                serde_json::json!({"spec": {"template": {"spec": {"nodeSelector": {HOLD_NODE_LABEL: null}}}}}),
                "released onto its nodes".to_string(),
            ))
        }
        _ => None,
    }
}

/// What fencing a live site does with one object that runs without replicas (see [`fence_hold`]).
#[derive(Debug, Clone, PartialEq)]
pub enum FenceHold {
    /// Patched in place (a merge patch), with what it does.
    Patch(Value, String),
    /// Kept, as [`strip`] left it, in a held-back Secret and then deleted: it can not be held in
    /// place (a bare Pod; a Job on a cluster that cannot suspend Jobs). The start creates it again.
    KeepAndDelete(Value, &'static str),
    /// Nothing to do: it runs nothing (a finished Job or Pod), was held already, or is owned by a
    /// controller that the fence stops otherwise.
    Leave,
}

fn finished(kind: &str, live: &Value) -> bool {
    match kind {
        "Job" => live
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            }),
        "Pod" => matches!(
            live.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ),
        _ => false,
    }
}

/// How the fence of a live site stops `live`, an object of `kind` that runs without replicas:
/// the same hold a staged copy gets ([`hold_back`]), applied to what runs. CronJobs (and Jobs where
/// `jobs_can_suspend`) are suspended with their own value recorded; DaemonSets get the node
/// selector no node has; bare Pods and unsuspendable Jobs that still run are kept for the start
/// and deleted. [`release_patch`] and the start undo all of it. Idempotent: an object held
/// already is left.
pub fn fence_hold(kind: &str, live: &Value, jobs_can_suspend: bool) -> FenceHold {
    let owned = live
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|o| !o.is_empty());
    match kind {
        "CronJob" | "Job" if kind == "CronJob" || jobs_can_suspend => {
            if annotation(live, SUSPEND_ANNOTATION).is_some() || (kind == "Job" && finished(kind, live)) {
                return FenceHold::Leave;
            }
            let own = live.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false);
            FenceHold::Patch(
                serde_json::json!({"metadata": {"annotations": {SUSPEND_ANNOTATION: own.to_string()}},
                                   "spec": {"suspend": true}}),
                "suspended".into(),
            )
        }
        "Job" | "Pod" => {
            // A CronJob's Jobs stop with it (suspended CronJobs make none); one already running
            // is owned, and held here like any Job.
            if finished(kind, live) || (kind == "Pod" && owned) {
                return FenceHold::Leave;
            }
            let mut doc = live.clone();
            strip(kind, &mut doc);
            // The items of a list carry no type; the start needs it to create the object again.
            if let Some(m) = doc.as_object_mut() {
                m.insert("kind".into(), Value::String(kind.into()));
                m.entry("apiVersion")
                    .or_insert_with(|| Value::String(if kind == "Pod" { "v1" } else { "batch/v1" }.into()));
            }
            FenceHold::KeepAndDelete(
                doc,
                if kind == "Pod" {
                    "a bare Pod: kept for the start and deleted"
                } else {
                    "this cluster cannot suspend Jobs: kept for the start and deleted"
                },
            )
        }
        "DaemonSet" => {
            let held = live
                .pointer(&format!(
                    "/spec/template/spec/nodeSelector/{}",
                    HOLD_NODE_LABEL.replace('/', "~1")
                ))
                .is_some();
            if held {
                return FenceHold::Leave;
            }
            FenceHold::Patch(
                serde_json::json!({"spec": {"template": {"spec": {"nodeSelector": {HOLD_NODE_LABEL: HOLD_NODE_VALUE}}}}}),
                "held off its nodes".into(),
            )
        }
        _ => FenceHold::Leave,
    }
}

/// Before `obj` replaces `live`: copies what the target cluster assigned and cannot change (a
/// Service's cluster IPs and node ports, a claim's volume, class and mode, a Job's selector) from
/// `live` where [`strip`] removed it, so that the replace is accepted.
pub fn keep_assigned(kind: &str, live: &Value, obj: &mut Value) {
    let paths: &[&str] = match kind {
        "Service" => &["/spec/clusterIP", "/spec/clusterIPs", "/spec/healthCheckNodePort"],
        "PersistentVolumeClaim" => &["/spec/volumeName", "/spec/storageClassName", "/spec/volumeMode"],
        "Job" => &["/spec/selector", "/spec/template/metadata/labels"],
        _ => &[],
    };
    for p in paths {
        let (parent, key) = p.rsplit_once('/').expect("absolute paths");
        let Some(v) = live.pointer(p) else { continue };
        if let Some(m) = obj.pointer_mut(parent).and_then(Value::as_object_mut) {
            m.entry(key).or_insert_with(|| v.clone());
        }
    }
    if kind == "Service" {
        // Node ports by port: the same port keeps the node port it was given.
        let live_ports = live
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                if p.contains_key("nodePort") {
                    continue;
                }
                let same = live_ports
                    .iter()
                    .find(|l| l.get("port") == p.get("port") && l.get("protocol") == p.get("protocol"));
                if let Some(np) = same.and_then(|l| l.get("nodePort")) {
                    p.insert("nodePort".into(), np.clone());
                }
            }
        }
    }
}

/// The comparable form of an object: stripped, and without defaults that differ per cluster.
pub fn normalize(kind: &str, obj: &Value) -> Value {
    let mut v = obj.clone();
    strip(kind, &mut v);
    if let Some(a) = v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        if a.is_empty() {
            v["metadata"].as_object_mut().expect("metadata").remove("annotations");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(group: &str, plural: &str) -> Resource {
        Resource {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            kind: String::new(),
            namespaced: true,
            verbs: vec![],
        }
    }

    #[test]
    fn controller_owned_and_cluster_made_objects_are_left_out() {
        let owned =
            json!({"metadata": {"name": "web-1", "ownerReferences": [{"controller": true, "kind": "ReplicaSet"}]}});
        assert!(excluded_object(&res("", "pods"), &owned).is_some());
        let bare = json!({"metadata": {"name": "debug"}});
        assert!(excluded_object(&res("", "pods"), &bare).is_none());
        let token = json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"});
        assert!(excluded_object(&res("", "secrets"), &token).is_some());
        let plain = json!({"metadata": {"name": "t"}, "type": "Opaque"});
        assert!(excluded_object(&res("", "secrets"), &plain).is_none());
        let local = json!({"metadata": {"name": "v1.apps"}, "spec": {"service": null}});
        assert!(excluded_object(&res("apiregistration.k8s.io", "apiservices"), &local).is_some());
        let remote = json!({"metadata": {"name": "v1beta1.metrics.k8s.io"}, "spec": {"service": {"name": "m", "namespace": "x"}}});
        assert!(excluded_object(&res("apiregistration.k8s.io", "apiservices"), &remote).is_none());
        assert!(excluded_resource(&res("", "events")).is_some());
        assert!(excluded_resource(&res("", "configmaps")).is_none());
    }

    #[test]
    fn in_the_system_namespaces_only_what_the_cluster_made_is_left_out() {
        let obj = |ns: &str, name: &str| json!({"metadata": {"name": name, "namespace": ns}});
        let sa = res("", "serviceaccounts");
        let cm = res("", "configmaps");
        // The controller manager's and API server's own objects.
        assert!(excluded_object(&sa, &obj("kube-system", "deployment-controller")).is_some());
        assert!(excluded_object(&cm, &obj("kube-system", "extension-apiserver-authentication")).is_some());
        let leader = json!({"metadata": {"name": "kube-scheduler", "namespace": "kube-system",
                            "annotations": {"control-plane.alpha.kubernetes.io/leader": "{}"}}});
        assert!(excluded_object(&res("", "endpoints"), &leader).is_some());
        // What add-ons put there (descheduler, cert-manager, kube-prometheus) is kept.
        assert!(excluded_object(&sa, &obj("kube-system", "descheduler-sa")).is_none());
        assert!(excluded_object(&cm, &obj("kube-system", "descheduler-policy-configmap")).is_none());
        let role = res("rbac.authorization.k8s.io", "roles");
        assert!(excluded_object(&role, &obj("kube-system", "cert-manager:leaderelection")).is_none());
        assert!(excluded_object(&res("batch", "cronjobs"), &obj("kube-system", "descheduler-cronjob")).is_none());
        // A controller's name outside kube-system is an app's own.
        assert!(excluded_object(&sa, &obj("shop", "job-controller")).is_none());
    }

    #[test]
    fn strip_removes_server_fields_and_keeps_the_rest() {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                         "creationTimestamp": "t", "managedFields": [], "labels": {"app": "web"}},
            "spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "type": "ClusterIP",
                     "ports": [{"port": 80, "nodePort": 30001}], "selector": {"app": "web"}},
            "status": {"loadBalancer": {}}
        });
        strip("Service", &mut svc);
        assert_eq!(
            svc,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                   "spec": {"type": "ClusterIP", "ports": [{"port": 80}], "selector": {"app": "web"}}})
        );
        let mut headless = json!({"kind": "Service", "metadata": {}, "spec": {"clusterIP": "None"}});
        strip("Service", &mut headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn openshift_project_annotations_are_kept_exactly() {
        let ann = json!({
            "openshift.io/sa.scc.uid-range": "1000650000/10000",
            "openshift.io/sa.scc.supplemental-groups": "1000650000/10000",
            "openshift.io/sa.scc.mcs": "s0:c26,c5",
        });
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "shop", "uid": "x", "annotations": ann.clone()},
                            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        strip("Namespace", &mut ns);
        map_namespaces(
            "Namespace",
            &mut ns,
            &BTreeMap::from([("shop".into(), "shop-dr".into())]),
        );
        assert_eq!(ns["metadata"]["annotations"], ann);
        assert_eq!(ns["metadata"]["name"], "shop-dr");
    }

    #[test]
    fn service_account_token_references_do_not_travel() {
        let mut sa = json!({"kind": "ServiceAccount", "metadata": {"name": "app"},
                            "secrets": [{"name": "app-token-x1y2z"}, {"name": "registry-pull"}]});
        strip("ServiceAccount", &mut sa);
        assert_eq!(sa["secrets"], json!([{"name": "registry-pull"}]));
    }

    #[test]
    fn namespace_map_rewrites_references() {
        let map = BTreeMap::from([("shop".to_string(), "shop-dr".to_string())]);
        let mut rb = json!({"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "shop"},
                            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "shop"},
                                         {"kind": "ServiceAccount", "name": "x", "namespace": "other"}]});
        map_namespaces("RoleBinding", &mut rb, &map);
        assert_eq!(rb["metadata"]["namespace"], "shop-dr");
        assert_eq!(rb["subjects"][0]["namespace"], "shop-dr");
        assert_eq!(rb["subjects"][1]["namespace"], "other");
        let mut ns = json!({"kind": "Namespace", "metadata": {"name": "shop"}});
        map_namespaces("Namespace", &mut ns, &map);
        assert_eq!(ns["metadata"]["name"], "shop-dr");
        let mut hook = json!({"kind": "ValidatingWebhookConfiguration", "metadata": {"name": "h"},
                              "webhooks": [{"clientConfig": {"service": {"name": "s", "namespace": "shop"}}}]});
        map_namespaces("ValidatingWebhookConfiguration", &mut hook, &map);
        assert_eq!(hook["webhooks"][0]["clientConfig"]["service"]["namespace"], "shop-dr");
    }

    #[test]
    fn webhooks_come_after_everything_they_could_block() {
        let webhook = restore_rank("admissionregistration.k8s.io", "ValidatingWebhookConfiguration");
        for (g, k) in [
            ("", "Namespace"),
            ("apps", "Deployment"),
            ("", "Service"),
            ("example.com", "Widget"),
        ] {
            assert!(restore_rank(g, k) < webhook, "{k}");
        }
        assert!(
            restore_rank("apiextensions.k8s.io", "CustomResourceDefinition") < restore_rank("example.com", "Widget")
        );
        assert!(restore_rank("", "Service") < restore_rank("networking.k8s.io", "Ingress"));
    }

    #[test]
    fn replicas_set_to_zero_remember_what_ran() {
        let mut d = json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        set_replicas("Deployment", &mut d, 0);
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["metadata"]["annotations"][crate::control::REPLICAS_ANNOTATION], "3");
        // A workload stored at zero keeps the count recorded when it was scaled down.
        set_replicas("Deployment", &mut d, 0);
        assert_eq!(d["metadata"]["annotations"][crate::control::REPLICAS_ANNOTATION], "3");
        let mut cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        set_replicas("ConfigMap", &mut cm, 0);
        assert_eq!(cm, json!({"kind": "ConfigMap", "metadata": {"name": "c"}}));
    }

    #[test]
    fn a_held_back_copy_runs_nothing_and_its_start_brings_back_what_the_user_set() {
        // CronJobs: suspended, the user's own value recorded; the start resumes only what was running.
        let mut cj = json!({"kind": "CronJob", "metadata": {"name": "tick"}, "spec": {"schedule": "* * * * *"}});
        assert_eq!(hold_back("CronJob", &mut cj, false), Hold::Create);
        assert_eq!(cj["spec"]["suspend"], true);
        assert_eq!(cj["metadata"]["annotations"][SUSPEND_ANNOTATION], "false");
        let (patch, action) = release_patch("CronJob", &cj, true).unwrap();
        assert_eq!(patch["spec"]["suspend"], false);
        assert!(patch["metadata"]["annotations"][SUSPEND_ANNOTATION].is_null());
        assert_eq!(action, "resumed");
        // A drill's copy keeps its CronJobs suspended.
        assert_eq!(release_patch("CronJob", &cj, false), None);
        // Held twice (stored held back), the first record stays.
        hold_back("CronJob", &mut cj, false);
        assert_eq!(cj["metadata"]["annotations"][SUSPEND_ANNOTATION], "false");
        let mut own = json!({"kind": "CronJob", "metadata": {"name": "off"}, "spec": {"suspend": true}});
        hold_back("CronJob", &mut own, false);
        let (patch, _) = release_patch("CronJob", &own, true).unwrap();
        assert_eq!(
            patch["spec"]["suspend"], true,
            "what its owner suspended stays suspended"
        );
        // A CronJob the user suspended by hand, not by Lifeboat, is not touched by a start.
        let by_hand = json!({"kind": "CronJob", "metadata": {"name": "x"}, "spec": {"suspend": true}});
        assert_eq!(release_patch("CronJob", &by_hand, true), None);

        // Jobs: suspended where the cluster can, else kept for the start.
        let job = json!({"kind": "Job", "metadata": {"name": "once"}, "spec": {"template": {}}});
        let mut j = job.clone();
        assert_eq!(hold_back("Job", &mut j, true), Hold::Create);
        assert_eq!(j["spec"]["suspend"], true);
        let mut j = job.clone();
        assert!(matches!(hold_back("Job", &mut j, false), Hold::AtStart(_)));
        assert_eq!(j, job, "a Job kept for the start is not changed");

        // DaemonSets: a node selector no node matches, added to the user's own.
        let mut ds = json!({"kind": "DaemonSet", "metadata": {"name": "agent"},
                            "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}, "containers": []}}}});
        assert_eq!(hold_back("DaemonSet", &mut ds, true), Hold::Create);
        assert_eq!(ds["spec"]["template"]["spec"]["nodeSelector"]["disk"], "ssd");
        assert_eq!(
            ds["spec"]["template"]["spec"]["nodeSelector"][HOLD_NODE_LABEL],
            HOLD_NODE_VALUE
        );
        let (patch, _) = release_patch("DaemonSet", &ds, false).unwrap();
        assert!(patch["spec"]["template"]["spec"]["nodeSelector"][HOLD_NODE_LABEL].is_null());
        assert!(patch["spec"]["template"]["spec"]["nodeSelector"].get("disk").is_none());
        let mut bare = json!({"kind": "DaemonSet", "metadata": {"name": "a"}, "spec": {"template": {"spec": {}}}});
        hold_back("DaemonSet", &mut bare, true);
        assert_eq!(
            bare["spec"]["template"]["spec"]["nodeSelector"][HOLD_NODE_LABEL],
            HOLD_NODE_VALUE
        );
        let running = json!({"kind": "DaemonSet", "metadata": {"name": "a"}, "spec": {"template": {"spec": {}}}});
        assert_eq!(release_patch("DaemonSet", &running, true), None);

        // Bare Pods wait for the start; what does not run is created as it is.
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "debug"}});
        assert!(matches!(hold_back("Pod", &mut pod, true), Hold::AtStart(_)));
        let mut cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(hold_back("ConfigMap", &mut cm, true), Hold::Create);
        assert_eq!(cm, json!({"kind": "ConfigMap", "metadata": {"name": "c"}}));
    }

    /// Applies a merge patch (RFC 7386) to `v`.
    fn merge(v: &mut Value, patch: &Value) {
        match (v.as_object_mut(), patch.as_object()) {
            (Some(o), Some(p)) => {
                for (k, pv) in p {
                    if pv.is_null() {
                        o.remove(k);
                    } else {
                        merge(o.entry(k.clone()).or_insert(Value::Null), pv);
                    }
                }
            }
            _ => *v = patch.clone(),
        }
    }

    #[test]
    fn a_fence_holds_what_runs_without_replicas_and_the_start_undoes_exactly_that() {
        // CronJob: suspended, the owner's value recorded; start gives it back; held twice is once.
        let cj = json!({"kind": "CronJob", "metadata": {"name": "tick"}, "spec": {"schedule": "* * * * *"}});
        let FenceHold::Patch(p, _) = fence_hold("CronJob", &cj, false) else {
            panic!()
        };
        let mut held = cj.clone();
        merge(&mut held, &p);
        assert_eq!(held["spec"]["suspend"], true);
        assert_eq!(fence_hold("CronJob", &held, false), FenceHold::Leave);
        let (back, _) = release_patch("CronJob", &held, true).unwrap();
        merge(&mut held, &back);
        assert_eq!(held["spec"]["suspend"], false);
        assert!(held["metadata"]
            .get("annotations")
            .is_none_or(|a| a.as_object().unwrap().is_empty()));
        // One its owner suspended stays suspended after the start.
        let off = json!({"kind": "CronJob", "metadata": {"name": "off"}, "spec": {"suspend": true}});
        let FenceHold::Patch(p, _) = fence_hold("CronJob", &off, false) else {
            panic!()
        };
        let mut held = off.clone();
        merge(&mut held, &p);
        let (back, _) = release_patch("CronJob", &held, true).unwrap();
        merge(&mut held, &back);
        assert_eq!(held["spec"]["suspend"], true);

        // DaemonSet: off its nodes, the owner's selector kept, released exactly.
        let ds = json!({"kind": "DaemonSet", "metadata": {"name": "agent"},
                        "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}});
        let FenceHold::Patch(p, _) = fence_hold("DaemonSet", &ds, true) else {
            panic!()
        };
        let mut held = ds.clone();
        merge(&mut held, &p);
        assert_eq!(
            held["spec"]["template"]["spec"]["nodeSelector"][HOLD_NODE_LABEL],
            HOLD_NODE_VALUE
        );
        assert_eq!(fence_hold("DaemonSet", &held, true), FenceHold::Leave);
        let (back, _) = release_patch("DaemonSet", &held, true).unwrap();
        merge(&mut held, &back);
        assert_eq!(held, ds);

        // Jobs: suspended where the cluster can; else a running one is kept and deleted.
        let job = json!({"kind": "Job", "metadata": {"name": "once", "uid": "u1", "resourceVersion": "9"},
                         "spec": {"template": {"spec": {}}}, "status": {"active": 1}});
        assert!(matches!(fence_hold("Job", &job, true), FenceHold::Patch(..)));
        let FenceHold::KeepAndDelete(doc, _) = fence_hold("Job", &job, false) else {
            panic!()
        };
        assert!(doc.get("status").is_none() && doc["metadata"].get("uid").is_none());
        assert_eq!((&doc["kind"], &doc["apiVersion"]), (&json!("Job"), &json!("batch/v1")));
        let done = json!({"kind": "Job", "metadata": {"name": "d"},
                          "status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(fence_hold("Job", &done, false), FenceHold::Leave);
        assert_eq!(fence_hold("Job", &done, true), FenceHold::Leave);

        // Pods: a bare one that runs is kept (without its node) and deleted; owned or finished ones are left.
        let pod = json!({"kind": "Pod", "metadata": {"name": "solo"}, "spec": {"nodeName": "n1"},
                         "status": {"phase": "Running"}});
        let FenceHold::KeepAndDelete(doc, _) = fence_hold("Pod", &pod, true) else {
            panic!()
        };
        assert!(doc["spec"].get("nodeName").is_none());
        assert_eq!((&doc["kind"], &doc["apiVersion"]), (&json!("Pod"), &json!("v1")));
        let owned = json!({"kind": "Pod", "metadata": {"name": "web-1", "ownerReferences": [{"kind": "ReplicaSet"}]},
                           "status": {"phase": "Running"}});
        assert_eq!(fence_hold("Pod", &owned, true), FenceHold::Leave);
        let gone = json!({"kind": "Pod", "metadata": {"name": "x"}, "status": {"phase": "Succeeded"}});
        assert_eq!(fence_hold("Pod", &gone, true), FenceHold::Leave);
        assert_eq!(fence_hold("ConfigMap", &json!({}), true), FenceHold::Leave);
    }

    #[test]
    fn a_replace_keeps_what_the_target_assigned() {
        let live = json!({"spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "type": "NodePort",
                                   "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]}});
        keep_assigned("Service", &live, &mut svc);
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.9");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert!(svc["spec"]["ports"][1].get("nodePort").is_none());
        let live =
            json!({"spec": {"volumeName": "pvc-1", "storageClassName": "lab-local", "volumeMode": "Filesystem"}});
        let mut pvc = json!({"spec": {"storageClassName": "fast"}});
        keep_assigned("PersistentVolumeClaim", &live, &mut pvc);
        // What the object says itself wins (the API server then says whether it may change).
        assert_eq!(pvc["spec"]["storageClassName"], "fast");
        assert_eq!(pvc["spec"]["volumeName"], "pvc-1");
    }
}
