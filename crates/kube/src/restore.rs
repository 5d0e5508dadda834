//! `restore SNAPSHOT --to kube[:CONTEXT]`: the objects of a Kubernetes snapshot into a cluster.
//!
//! Order by dependency ([`rules::restore_rank`]): CRDs first, waited for until Established;
//! namespaces; storage classes, PVs, PVCs; secrets and configmaps; service accounts; RBAC;
//! services; workloads and custom resources; ingresses; admission webhooks and API services last,
//! so a webhook whose backend is not running yet cannot block the rest. Every object is stripped
//! of server-set fields first ([`rules::strip`]). One rejected object never stops the others: each
//! result carries the API server's own message.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use lifeboat_model::{Id, Node, NodeKind, Tree};
use lifeboat_repo::Repository;
use serde::Serialize;
use serde_json::Value;

use crate::{rules, status_code, Cluster, KubeError, Manifest};

/// Objects created at once within one restore rank.
const PARALLEL: usize = 8;
/// Objects of one rank handled between two reports of their results.
const CHUNK: usize = 1024;

/// What to do with objects that already exist on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Leave them and report them as `exists` (the default).
    #[default]
    Skip,
    /// Replace them with the snapshot's version.
    Update,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Old namespace -> new namespace.
    pub namespace_map: BTreeMap<String, String>,
    /// Old storage class -> new storage class.
    pub storage_class_map: BTreeMap<String, String>,
    /// Replicas for every Deployment, StatefulSet, ReplicaSet and ReplicationController.
    pub replicas: Option<u64>,
    pub existing: Existing,
    /// Server-side dry run: the API server validates every object, nothing is stored.
    pub dry_run: bool,
    /// Do not write volume data into restored claims.
    pub no_volume_data: bool,
    /// Image of the helper pods that write volumes (needs `sh`, `sleep`, `tar`).
    pub helper_image: String,
    /// The volume data the target's claims hold now, by the snapshot's (namespace, claim), when
    /// known (a hot standby staged from an earlier snapshot): only what changed since is written.
    /// Wrong here means wrong data on the target: leave it empty unless it is certain.
    pub volume_base: BTreeMap<(String, String), Node>,
    /// Run nothing ([`rules::hold_back`]): CronJobs and Jobs suspended, DaemonSets held off every
    /// node, bare Pods (and Jobs on a cluster that cannot suspend them) not created but kept in a
    /// Secret of their namespace ([`HELD_TYPE`]) until [`Cluster::release`] creates them.
    pub hold: bool,
    /// An isolated copy (a drill's), named by this value: cluster-scoped objects are created only
    /// when missing and never replaced, the ones created carry [`DRILL_LABEL`] with this value (so
    /// the drill's teardown removes them), and admission webhooks and API services are not
    /// restored (they would act on the whole target cluster, its production objects included).
    pub isolated: Option<String>,
}

/// Label on the cluster-scoped objects an isolated restore created: the copy's name.
pub const DRILL_LABEL: &str = "io.lifeboat.drill";
/// Type of the Secrets that keep a held-back object (its document under [`HELD_KEY`]) until the
/// copy is started.
pub const HELD_TYPE: &str = "lifeboat.io/held-back";
/// Label on those Secrets.
pub const HELD_LABEL: &str = "io.lifeboat.held-back";
/// The key of the held object's document in its Secret.
pub const HELD_KEY: &str = "object.json";

/// The outcome for one object. A restore holds one per object until it reports, so the type
/// is kept small: the type's names are shared with every object of the type, action and status
/// are fixed words.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemResult {
    pub api_version: Arc<str>,
    pub kind: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// `read`, `create`, `update`, `data` (volume data written into a claim) or `wait` (a CRD
    /// waited for until Established).
    pub action: &'static str,
    /// `done`, `planned` (dry run), `exists` (left as it is), `skipped` (not restored on purpose,
    /// the message says why) or `failed`.
    pub status: &'static str,
    /// The API server's message, or a remark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Every object's outcome, in restore order.
#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub items: Vec<ItemResult>,
    pub failed: usize,
}

/// One stored object, not read yet: what it is and where its document is. A restore reads the
/// documents as it creates them, so only this table of contents grows with the snapshot; it is
/// kept small (about 150 bytes an object): the resource type is shared by all its objects and only
/// the ids of the document's blobs are kept.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub resource: Arc<Resource>,
    /// The namespace it was backed up from (`None` for cluster-scoped objects).
    pub namespace: Option<Arc<str>>,
    pub name: String,
    content: Box<[Id]>,
}

/// A resource type of a snapshot, shared by its objects.
#[derive(Debug)]
pub struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
    /// `api.api_version` and `api.kind`, shared with every [`ItemResult`] of the type.
    api_version: Arc<str>,
    kind: Arc<str>,
    /// [`rules::restore_rank`] of the type.
    rank: u32,
}

impl Resource {
    fn new(api: ApiResource, namespaced: bool) -> Self {
        Resource {
            rank: rules::restore_rank(&api.group, &api.kind),
            api_version: api.api_version.as_str().into(),
            kind: api.kind.as_str().into(),
            api,
            namespaced,
        }
    }
}

impl StoredObject {
    /// Reads and parses the stored document.
    pub fn read(&self, repo: &Repository) -> Result<Value, KubeError> {
        read_document(repo, &self.content, &|| {
            format!(
                "{}/{}/{}.json",
                self.resource.api.plural,
                self.namespace.as_deref().unwrap_or("_cluster"),
                self.name
            )
        })
    }

    fn rank(&self) -> u32 {
        self.resource.rank
    }
}

/// Reads and parses an object document made of the blobs `content`; `path` names it in an error.
fn read_document(repo: &Repository, content: &[Id], path: &dyn Fn() -> String) -> Result<Value, KubeError> {
    let mut doc = Vec::new();
    for id in content {
        doc.extend_from_slice(&repo.load_blob(id)?);
    }
    serde_json::from_slice(&doc).map_err(|e| KubeError::BadSnapshot {
        snapshot: String::new(),
        reason: format!("{}: {e}", path()),
    })
}

/// A Kubernetes snapshot's table of contents.
pub struct Stored {
    pub manifest: Manifest,
    /// Every object, not read yet.
    pub objects: Vec<StoredObject>,
    /// Volume data trees by (namespace, claim).
    pub volume_data: BTreeMap<(String, String), Node>,
}

fn read_file(repo: &Repository, n: &Node) -> Result<Vec<u8>, KubeError> {
    Ok(lifeboat_fs::archive::read_file(repo, n)?)
}

fn subtree(repo: &Repository, n: &Node) -> Result<Tree, KubeError> {
    match n.subtree {
        Some(id) if n.kind == NodeKind::Dir => Ok(repo.load_tree(&id)?),
        _ => Ok(Tree::default()),
    }
}

/// Reads the table of contents of a Kubernetes snapshot: its manifest and where every object
/// is. Object documents are read later, by [`restore`] or [`StoredObject::read`].
pub fn load(repo: &Repository, snapshot: &str, root: &Id) -> Result<Stored, KubeError> {
    let bad = |reason: String| KubeError::BadSnapshot {
        snapshot: snapshot.to_string(),
        reason,
    };
    let tree = repo.load_tree(root)?;
    let m = tree
        .find(b"kube.json")
        .ok_or_else(|| bad("it has no kube.json: not a Kubernetes snapshot".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(&read_file(repo, m)?).map_err(|e| bad(format!("kube.json: {e}")))?;
    let kinds: BTreeMap<&str, &str> = manifest
        .resources
        .iter()
        .map(|r| (r.resource.as_str(), r.kind.as_str()))
        .collect();
    let mut objects = Vec::new();
    if let Some(res) = tree.find(b"resources") {
        for g in subtree(repo, res)?.nodes {
            for v in subtree(repo, &g)?.nodes {
                for p in subtree(repo, &v)?.nodes {
                    let group = g.name.lossy().into_owned();
                    let version = v.name.lossy().into_owned();
                    let plural = p.name.lossy().into_owned();
                    let key = format!("{group}/{version}/{plural}");
                    let group = if group == "core" { String::new() } else { group };
                    let api_version = if group.is_empty() {
                        version.clone()
                    } else {
                        format!("{group}/{version}")
                    };
                    let mut kind = kinds.get(key.as_str()).map(|k| k.to_string());
                    for ns in subtree(repo, &p)?.nodes {
                        let namespaced = ns.name.0 != b"_cluster";
                        let namespace: Option<Arc<str>> = namespaced.then(|| ns.name.lossy().into());
                        let files = subtree(repo, &ns)?.nodes;
                        let mut resource: Option<Arc<Resource>> = None;
                        for f in files {
                            let file = f.name.lossy();
                            let Some(name) = file.strip_suffix(".json") else {
                                return Err(bad(format!("{key}: {file} is not an object document")));
                            };
                            let path = || format!("{plural}/{}/{file}", ns.name.lossy());
                            let resource = match &resource {
                                Some(r) => r.clone(),
                                None => {
                                    if kind.is_none() {
                                        // Not in the manifest's list: the document says what it is.
                                        let doc = read_document(repo, &f.content, &path)?;
                                        kind = Some(doc.get("kind").and_then(Value::as_str).unwrap_or_default().into());
                                    }
                                    let api = ApiResource {
                                        group: group.clone(),
                                        version: version.clone(),
                                        api_version: api_version.clone(),
                                        kind: kind.clone().unwrap_or_default(),
                                        plural: plural.clone(),
                                    };
                                    resource.insert(Arc::new(Resource::new(api, namespaced))).clone()
                                }
                            };
                            let o = StoredObject {
                                resource,
                                namespace: namespace.clone(),
                                name: name.to_string(),
                                content: f.content.into_boxed_slice(),
                            };
                            objects.push(o);
                        }
                    }
                }
            }
        }
    }
    let mut volume_data = BTreeMap::new();
    if let Some(vols) = tree.find(b"volumes") {
        for ns in subtree(repo, vols)?.nodes {
            for claim in subtree(repo, &ns)?.nodes {
                if let Some(data) = subtree(repo, &claim)?.find(b"data").cloned() {
                    volume_data.insert((ns.name.lossy().into_owned(), claim.name.lossy().into_owned()), data);
                }
            }
        }
    }
    Ok(Stored {
        manifest,
        objects,
        volume_data,
    })
}

fn meta<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer(&format!("/metadata/{key}")).and_then(Value::as_str)
}

/// Restores `stored` into `cluster`.
pub fn restore(
    repo: &Repository,
    cluster: &Cluster,
    stored: &Stored,
    opts: &RestoreOptions,
) -> Result<RestoreReport, KubeError> {
    for (a, b) in &opts.namespace_map {
        if a.is_empty() || b.is_empty() {
            return Err(KubeError::BadOption(format!(
                "--namespace-map {a}={b}: both names are needed"
            )));
        }
    }
    let mapped_ns = |ns: &str| opts.namespace_map.get(ns).cloned().unwrap_or_else(|| ns.to_string());
    // Volume data of claims, by their namespace on the target.
    let volume_data: BTreeMap<(String, String), (&Node, Option<&Node>)> = stored
        .volume_data
        .iter()
        .map(|((ns, name), root)| {
            let base = opts.volume_base.get(&(ns.clone(), name.clone()));
            ((mapped_ns(ns), name.clone()), (root, base))
        })
        .collect();
    let mut objects: Vec<&StoredObject> = stored.objects.iter().collect();
    objects.sort_by(|a, b| {
        (a.rank(), &a.resource.api.group, &a.resource.api.plural)
            .cmp(&(b.rank(), &b.resource.api.group, &b.resource.api.plural))
            .then_with(|| {
                let ns = |o: &StoredObject| o.namespace.as_deref().map(mapped_ns).unwrap_or_default();
                ns(a).cmp(&ns(b))
            })
            .then_with(|| a.name.cmp(&b.name))
    });
    // Namespaces and CRDs this restore creates: in a dry run, objects inside them cannot be
    // checked by the server (they do not exist yet) and are reported as planned. Both are known
    // from names alone (a CRD is named `plural.group`).
    let planned_namespaces: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.resource.api.kind == "Namespace")
        .map(|o| mapped_ns(&o.name))
        .collect();
    let planned_groups: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.resource.api.kind == "CustomResourceDefinition")
        .filter_map(|o| o.name.split_once('.').map(|(_, g)| g.to_string()))
        .collect();
    // Claims in the snapshot, by their source namespace. A volume a provisioner made for one of
    // them is not restored: it belongs to the source's storage (a path or disk there, often pinned
    // to a source node); the claim gets a new volume from the target's provisioner instead, and
    // the claim's data is written into it.
    let claims: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| o.resource.api.kind == "PersistentVolumeClaim")
        .map(|o| (o.namespace.as_deref().unwrap_or_default().to_string(), o.name.clone()))
        .collect();
    let prepare = |o: &StoredObject| -> Result<Result<Value, String>, KubeError> {
        let mut v = o.read(repo)?;
        let kind = &o.resource.api.kind;
        if let Some(why) = provisioned_for_claim(kind, &v, &claims) {
            return Ok(Err(why));
        }
        rules::strip(kind, &mut v);
        rules::map_namespaces(kind, &mut v, &opts.namespace_map);
        rules::map_storage_classes(kind, &mut v, &opts.storage_class_map);
        if let Some(n) = opts.replicas {
            rules::set_replicas(kind, &mut v, n);
        }
        if opts.isolated.is_some()
            && matches!(
                kind.as_str(),
                "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" | "APIService"
            )
        {
            return Ok(Err(
                "an isolated copy registers no admission webhook or API service: it would act on the whole cluster"
                    .into(),
            ));
        }
        if opts.isolated.is_some() && kind == "NetworkPolicy" {
            return Ok(Err(
                "an isolated copy gets Lifeboat's default-deny NetworkPolicy; the app's own would open it".into(),
            ));
        }
        if let (Some(label), false) = (&opts.isolated, o.resource.namespaced) {
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                let l = m.entry("labels").or_insert_with(|| Value::Object(Default::default()));
                if let Some(l) = l.as_object_mut() {
                    l.insert(DRILL_LABEL.into(), Value::String(label.clone()));
                }
            }
        }
        Ok(Ok(v))
    };
    let jobs_can_suspend =
        opts.hold && objects.iter().any(|o| o.resource.api.kind == "Job") && cluster.jobs_can_suspend()?;
    let restore_one = |o: &StoredObject| -> ItemResult {
        let item = |action: &'static str, status: &'static str, message: String| ItemResult {
            api_version: o.resource.api_version.clone(),
            kind: o.resource.kind.clone(),
            namespace: o.namespace.as_deref().map(mapped_ns),
            name: o.name.clone(),
            action,
            status,
            message: Some(message),
        };
        match prepare(o) {
            Ok(Ok(mut v)) if opts.hold => match rules::hold_back(&o.resource.api.kind, &mut v, jobs_can_suspend) {
                rules::Hold::Create => apply(cluster, o, v, opts, &planned_namespaces, &planned_groups),
                rules::Hold::AtStart(why) => keep_for_start(cluster, o, &v, opts, why),
            },
            Ok(Ok(v)) => apply(cluster, o, v, opts, &planned_namespaces, &planned_groups),
            Ok(Err(why)) => item("create", "skipped", why),
            Err(e) => item("read", "failed", e.to_string()),
        }
    };

    let mut report = RestoreReport::default();
    let mut i = 0;
    while i < objects.len() {
        let rank = objects[i].rank();
        let mut crds = Vec::new();
        let mut claims = Vec::new();
        let start = i;
        while i < objects.len() && objects[i].rank() == rank {
            i += 1;
        }
        // Objects of one rank do not depend on each other: they are created several at once, a
        // chunk at a time, so results waiting to be reported stay few.
        for chunk in objects[start..i].chunks(CHUNK) {
            for (o, item) in chunk
                .iter()
                .zip(in_parallel(chunk, &|o: &&StoredObject| restore_one(o)))
            {
                if item.status == "failed" {
                    report.failed += 1;
                }
                if o.resource.api.kind == "CustomResourceDefinition" && item.status == "done" {
                    crds.push(o.name.clone());
                }
                if o.resource.api.kind == "PersistentVolumeClaim" && item.status == "done" {
                    // A claim made now is empty, whatever it held before.
                    claims.push((*o, item.action == "update"));
                }
                report.items.push(item);
            }
        }
        // Volume data goes into the new claims before any workload starts.
        if !opts.no_volume_data && !opts.dry_run {
            for (o, existed) in claims {
                let ns = o.namespace.as_deref().map(mapped_ns).unwrap_or_default();
                let name = o.name.clone();
                let Some((root, base)) = volume_data.get(&(ns.clone(), name.clone())) else {
                    continue;
                };
                let base = base.filter(|_| existed);
                let mut item = ItemResult {
                    api_version: o.resource.api_version.clone(),
                    kind: o.resource.kind.clone(),
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                    action: "data",
                    status: "done",
                    message: None,
                };
                match cluster.write_pvc(repo, &ns, &name, &opts.helper_image, root, base) {
                    Ok(w) if w.delta => item.message = Some(format!("{} bytes of changed data written", w.bytes)),
                    Ok(w) => {
                        item.message = Some(match w.full_because {
                            Some(why) => format!("{why}: {} bytes of data written in full", w.bytes),
                            None => format!("{} bytes of data written", w.bytes),
                        })
                    }
                    Err(e) => {
                        item.status = "failed";
                        item.message = Some(e.to_string());
                        report.failed += 1;
                    }
                }
                report.items.push(item);
            }
        }
        for crd in crds {
            if let Err(e) = wait_established(cluster, &crd, Duration::from_secs(60)) {
                report.items.push(ItemResult {
                    api_version: "apiextensions.k8s.io/v1".into(),
                    kind: "CustomResourceDefinition".into(),
                    namespace: None,
                    name: crd,
                    action: "wait",
                    status: "failed",
                    message: Some(e),
                });
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

/// `f` of every item, on up to [`PARALLEL`] threads; the results in the items' order.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: &(dyn Fn(&T) -> R + Sync)) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(items.len()) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(k) else { break };
                *results[k].lock().expect("poisoned") = Some(f(item));
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().expect("poisoned").expect("every item was done"))
        .collect()
}

/// Why a PersistentVolume is not restored, if it was made by a provisioner for a claim that is
/// restored too (see [`restore`]).
fn provisioned_for_claim(kind: &str, pv: &Value, claims: &BTreeSet<(String, String)>) -> Option<String> {
    if kind != "PersistentVolume" {
        return None;
    }
    let by = meta(pv, "annotations/pv.kubernetes.io~1provisioned-by")?;
    let claim = pv.pointer("/spec/claimRef")?;
    let (ns, name) = (claim.get("namespace")?.as_str()?, claim.get("name")?.as_str()?);
    claims
        .contains(&(ns.to_string(), name.to_string()))
        .then(|| format!("made by {by} for claim {ns}/{name}, which gets a new volume from the target's provisioner"))
}

fn apply(
    cluster: &Cluster,
    o: &StoredObject,
    object: Value,
    opts: &RestoreOptions,
    planned_namespaces: &BTreeSet<String>,
    planned_groups: &BTreeSet<String>,
) -> ItemResult {
    let name = meta(&object, "name").unwrap_or_default().to_string();
    let namespace = meta(&object, "namespace").map(str::to_string);
    let mut item = ItemResult {
        api_version: o.resource.api_version.clone(),
        kind: o.resource.kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        action: "create",
        status: "",
        message: None,
    };
    let api: Api<DynamicObject> = match (&namespace, o.resource.namespaced) {
        (Some(ns), true) => Api::namespaced_with(cluster.client().clone(), ns, &o.resource.api),
        _ => Api::all_with(cluster.client().clone(), &o.resource.api),
    };
    let obj: DynamicObject = match serde_json::from_value(object) {
        Ok(d) => d,
        Err(e) => {
            item.status = "failed";
            item.message = Some(format!("the stored object cannot be read: {e}"));
            return item;
        }
    };
    let pp = PostParams {
        dry_run: opts.dry_run,
        field_manager: Some("lifeboat".into()),
    };
    let done = if opts.dry_run { "planned" } else { "done" };
    let created = cluster.block_on(api.create(&pp, &obj));
    // An admission webhook may reject a create before the API server notices that the object
    // exists: a failed create of an existing object counts as "exists".
    let exists = match &created {
        Err(e) if status_code(e) == Some(409) => true,
        Err(_) => matches!(cluster.block_on(api.get_opt(&name)), Ok(Some(_))),
        Ok(_) => false,
    };
    let existing = if opts.isolated.is_some() && !o.resource.namespaced {
        Existing::Skip
    } else {
        opts.existing
    };
    match created {
        Ok(made) if opts.hold && !opts.dry_run && o.resource.api.kind == "Job" => {
            // A cluster that does not know `spec.suspend` drops it, and the Job runs: never leave one.
            if made.data.pointer("/spec/suspend") == Some(&Value::Bool(true)) {
                item.status = done;
            } else {
                let _ = cluster.block_on(api.delete(&name, &kube::api::DeleteParams::background()));
                item.status = "failed";
                item.message =
                    Some("the cluster dropped spec.suspend (Job suspension is off): the Job was deleted again".into());
            }
        }
        Ok(_) => item.status = done,
        Err(_) if exists => {
            if existing == Existing::Update {
                item.action = "update";
                match cluster.block_on(api.get(&name)) {
                    Ok(live) => {
                        let mut obj = obj.clone();
                        obj.metadata.resource_version = live.metadata.resource_version.clone();
                        rules::keep_assigned(&o.resource.api.kind, &live.data, &mut obj.data);
                        match cluster.block_on(api.replace(&name, &pp, &obj)) {
                            Ok(_) => item.status = done,
                            Err(e) => {
                                item.status = "failed";
                                item.message = Some(crate::short_error(&e));
                            }
                        }
                    }
                    Err(e) => {
                        item.status = "failed";
                        item.message = Some(crate::short_error(&e));
                    }
                }
            } else if existing != opts.existing {
                item.status = "exists";
                item.message = Some("already exists; an isolated copy never replaces a cluster-scoped object".into());
            } else {
                item.status = "exists";
                item.message = Some("already exists; left as it is (--existing update replaces it)".into());
            }
        }
        Err(e)
            if opts.dry_run
                && status_code(&e) == Some(404)
                && (namespace.as_ref().is_some_and(|n| planned_namespaces.contains(n))
                    || planned_groups.contains(&o.resource.api.group)) =>
        {
            item.status = "planned";
            item.message = Some("its namespace or resource type is created by this restore; checked then".into());
        }
        Err(e) => {
            item.status = "failed";
            item.message = Some(crate::short_error(&e));
        }
    }
    item
}

/// The name of the Secret that keeps a held-back object of `kind` named `name`.
pub fn held_secret_name(kind: &str, name: &str) -> String {
    let mut n = format!("lifeboat-held-{}-{name}", kind.to_ascii_lowercase());
    n.truncate(253);
    n.trim_end_matches(['-', '.']).to_string()
}

/// The Secret of namespace `ns` that keeps `obj`, an object of `kind` held back until the start,
/// with its labels and [`HELD_LABEL`].
pub(crate) fn held_secret(kind: &str, ns: &str, obj: &Value) -> Value {
    let mut labels = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    labels.insert(HELD_LABEL.into(), Value::String("1".into()));
    let name = meta(obj, "name").unwrap_or_default();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": held_secret_name(kind, name), "namespace": ns, "labels": labels},
        "type": HELD_TYPE,
        "stringData": {HELD_KEY: obj.to_string()},
    })
}

/// Keeps a held-back object (already prepared for the target) in a Secret of its namespace, with
/// its labels, so that [`Cluster::release`] creates it when the copy is started.
fn keep_for_start(cluster: &Cluster, o: &StoredObject, obj: &Value, opts: &RestoreOptions, why: &str) -> ItemResult {
    let name = meta(obj, "name").unwrap_or_default().to_string();
    let namespace = meta(obj, "namespace").map(str::to_string);
    let mut item = ItemResult {
        api_version: o.resource.api_version.clone(),
        kind: o.resource.kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        action: "hold",
        status: if opts.dry_run { "planned" } else { "done" },
        message: Some(format!("not created until the copy is started: {why}")),
    };
    let Some(ns) = namespace else {
        item.status = "failed";
        item.message = Some("a held-back object needs a namespace".into());
        return item;
    };
    let secret = held_secret(&o.resource.api.kind, &ns, obj);
    if let Err(e) = cluster.put_secret(&ns, secret, opts.dry_run) {
        item.status = "failed";
        item.message = Some(e.to_string());
    }
    item
}

/// Waits until a CRD reports `Established`.
fn wait_established(cluster: &Cluster, name: &str, limit: Duration) -> Result<(), String> {
    let ar = ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(cluster.client().clone(), &ar);
    let started = Instant::now();
    loop {
        if let Ok(crd) = cluster.block_on(api.get(name)) {
            let conds = crd
                .data
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Established")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            }) {
                return Ok(());
            }
        }
        if started.elapsed() > limit {
            return Err(format!("not Established within {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_provisioned_volume_of_a_restored_claim_is_left_to_the_targets_provisioner() {
        let claims: BTreeSet<(String, String)> = [("shop".to_string(), "data".to_string())].into();
        let pv = |ann: Value, ns: &str| {
            json!({"kind": "PersistentVolume", "metadata": {"name": "pvc-1", "annotations": ann},
                   "spec": {"claimRef": {"namespace": ns, "name": "data"}, "hostPath": {"path": "/x"}}})
        };
        let provisioned = json!({"pv.kubernetes.io/provisioned-by": "lab/hostpath"});
        let why = provisioned_for_claim("PersistentVolume", &pv(provisioned.clone(), "shop"), &claims).unwrap();
        assert!(why.contains("shop/data") && why.contains("lab/hostpath"), "{why}");
        // A volume made by hand, or for a claim not in the snapshot, is restored.
        assert_eq!(
            provisioned_for_claim("PersistentVolume", &pv(json!({}), "shop"), &claims),
            None
        );
        assert_eq!(
            provisioned_for_claim("PersistentVolume", &pv(provisioned, "other"), &claims),
            None
        );
    }
}
