//! `backup kube`: every object in scope, one blob each, streamed page by page into the repository.
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use kube::api::{Api, DynamicObject, ListParams};
use lifeboat_fs::archive::TreeAssembler;
use lifeboat_fs::chunk::Chunker;
use lifeboat_model::{Id, Snapshot, SnapshotSummary};
use lifeboat_repo::Repository;
use serde_json::Value;

use crate::discovery::{discover, Resource};
use crate::rules;
use crate::{Cluster, KubeError, Manifest, ResourceCount, Selection};

/// Objects asked for per list call.
const PAGE: u32 = 500;
/// Resource types listed at once.
const PARALLEL: usize = 4;

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub selection: Selection,
    pub tags: Vec<String>,
    /// Read the files of bound PersistentVolumeClaims in scope.
    pub volumes: bool,
    /// Image of the helper pods that read volumes (needs `sh`, `sleep`, `tar`).
    pub helper_image: String,
}

/// The result of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    pub manifest: Manifest,
    /// Objects stored.
    pub objects: u64,
}

/// The path of an object in a snapshot.
pub fn object_path(r: &Resource, namespace: Option<&str>, name: &str) -> String {
    format!(
        "resources/{}/{}/{}.json",
        r.key(),
        namespace.unwrap_or("_cluster"),
        name
    )
}

struct Store<'a> {
    chunker: Chunker<'a>,
    asm: Mutex<TreeAssembler>,
    now_ns: i64,
    objects: AtomicU64,
    /// Cluster-scoped objects that in-scope objects refer to: (group/plural, name).
    referenced: Mutex<BTreeSet<(String, String)>>,
    /// `namespace/name` of Services with a selector (their Endpoints are the controller's).
    services_with_selector: Mutex<HashSet<String>>,
    errors: Mutex<Vec<String>>,
    skipped_objects: AtomicU64,
    /// Bound claims in scope: (namespace, name).
    claims: Mutex<Vec<(String, String)>>,
    /// Running pods in scope that ask for backup hooks.
    hooks: Mutex<Vec<crate::hooks::PodHook>>,
    /// The namespaces objects were stored from.
    namespaces: Mutex<BTreeSet<String>>,
}

impl Store<'_> {
    /// Stores one object; `Ok(false)` when the rules leave it out.
    fn put(&self, r: &Resource, mut obj: Value) -> Result<bool, KubeError> {
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), Value::String(r.api_version()));
            o.insert("kind".into(), Value::String(r.kind.clone()));
        }
        if r.group.is_empty() && r.plural == "pods" {
            if let Some(h) = crate::hooks::from_pod(&obj)? {
                self.hooks.lock().expect("poisoned").push(h);
            }
        }
        if rules::excluded_object(r, &obj).is_some() {
            self.skipped_objects.fetch_add(1, Relaxed);
            return Ok(false);
        }
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        if r.group.is_empty() && r.plural == "endpoints" {
            let key = format!("{}/{name}", ns.as_deref().unwrap_or_default());
            if self.services_with_selector.lock().expect("poisoned").contains(&key) {
                self.skipped_objects.fetch_add(1, Relaxed);
                return Ok(false);
            }
        }
        let helper = obj
            .pointer("/metadata/labels")
            .and_then(|l| l.get(crate::HELPER_LABEL))
            .is_some();
        if r.group.is_empty()
            && r.plural == "persistentvolumeclaims"
            && obj.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")
            && !helper
        {
            self.claims
                .lock()
                .expect("poisoned")
                .push((ns.clone().unwrap_or_default(), name.clone()));
        }
        if r.group.is_empty()
            && r.plural == "pods"
            && obj
                .pointer("/metadata/labels")
                .and_then(|l| l.get(crate::HELPER_LABEL))
                .is_some()
        {
            return Ok(false);
        }
        self.note_references(r, &obj);
        if let Some(ns) = &ns {
            if !self.namespaces.lock().expect("poisoned").contains(ns) {
                self.namespaces.lock().expect("poisoned").insert(ns.clone());
            }
        }
        let json = serde_json::to_vec_pretty(&obj).expect("JSON values serialise");
        let content = self.chunker.save_slice(&json)?;
        let mut node = lifeboat_model::Node::new(Default::default(), lifeboat_model::NodeKind::File);
        node.mode = 0o600;
        node.size = json.len() as u64;
        node.mtime_ns = self.now_ns;
        node.content = content;
        let path = object_path(r, ns.as_deref(), &name);
        self.asm.lock().expect("poisoned").add(path.as_bytes(), node);
        self.objects.fetch_add(1, Relaxed);
        Ok(true)
    }

    fn note_references(&self, r: &Resource, obj: &Value) {
        let mut refs = Vec::new();
        let s = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        match (r.group.as_str(), r.plural.as_str()) {
            ("", "persistentvolumeclaims") => {
                refs.extend(s("/spec/volumeName").map(|v| ("core/persistentvolumes".to_string(), v)));
                refs.extend(s("/spec/storageClassName").map(|v| ("storage.k8s.io/storageclasses".to_string(), v)));
            }
            ("rbac.authorization.k8s.io", "rolebindings") if s("/roleRef/kind").as_deref() == Some("ClusterRole") => {
                refs.extend(s("/roleRef/name").map(|v| ("rbac.authorization.k8s.io/clusterroles".to_string(), v)));
            }
            ("", "services")
                if obj
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .is_some_and(|m| !m.is_empty()) =>
            {
                let ns = s("/metadata/namespace").unwrap_or_default();
                let name = s("/metadata/name").unwrap_or_default();
                self.services_with_selector
                    .lock()
                    .expect("poisoned")
                    .insert(format!("{ns}/{name}"));
            }
            _ => {}
        }
        // Custom resources need their CRD; for built-in resources the lookup finds none.
        if r.namespaced && !r.group.is_empty() {
            refs.push((
                "apiextensions.k8s.io/customresourcedefinitions".to_string(),
                format!("{}.{}", r.plural, r.group),
            ));
        }
        if let Some(ns) = s("/metadata/namespace") {
            refs.push(("core/namespaces".to_string(), ns));
        }
        if !refs.is_empty() {
            self.referenced.lock().expect("poisoned").extend(refs);
        }
    }
}

/// Backs up the objects `opts.selection` covers into a new snapshot.
///
/// Guarantees: objects are stored as the API server returned them (with `apiVersion` and `kind`);
/// memory holds one page per resource type being listed plus the tree's directory entries. A
/// resource whose listing fails is recorded in the manifest's `errors` and the rest goes on.
pub fn backup(repo: &Repository, cluster: &Cluster, opts: &BackupOptions) -> Result<BackupOutcome, KubeError> {
    let started = Instant::now();
    let sel = &opts.selection;
    let (resources, mut skipped) = discover(cluster)?;
    for name in sel.include.iter().chain(&sel.exclude) {
        if !resources.iter().any(|r| r.matches(name)) {
            return Err(KubeError::BadOption(format!(
                "no resource named {name:?} is served by this cluster"
            )));
        }
    }
    let mut chosen = Vec::new();
    for r in resources.iter().cloned() {
        let forced = sel.include.iter().any(|n| r.matches(n));
        if let Some(why) = rules::excluded_resource(&r).filter(|_| !forced) {
            skipped.push(format!("{}: {why}", r.key()));
            continue;
        }
        if (!sel.include.is_empty() && !sel.include.iter().any(|n| r.matches(n)))
            || sel.exclude.iter().any(|n| r.matches(n))
        {
            continue;
        }
        if !r.namespaced && !sel.namespaces.is_empty() {
            continue; // taken below when something in scope refers to it
        }
        chosen.push(r);
    }
    let version = cluster
        .block_on(cluster.client().apiserver_version())
        .map_err(cluster.api_err("version"))?;
    let store = Store {
        chunker: Chunker::new(repo),
        asm: Mutex::new(TreeAssembler::new()),
        now_ns: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64,
        objects: AtomicU64::new(0),
        referenced: Mutex::new(BTreeSet::new()),
        services_with_selector: Mutex::new(HashSet::new()),
        errors: Mutex::new(Vec::new()),
        skipped_objects: AtomicU64::new(0),
        claims: Mutex::new(Vec::new()),
        hooks: Mutex::new(Vec::new()),
        namespaces: Mutex::new(BTreeSet::new()),
    };

    // Endpoints last: whether an Endpoints object is the controller's depends on its Service.
    let (endpoints, rest): (Vec<Resource>, Vec<Resource>) = chosen
        .into_iter()
        .partition(|r| r.group.is_empty() && r.plural == "endpoints");
    let mut counts = Vec::new();
    for phase in [rest, endpoints] {
        let got: Vec<Result<ResourceCount, KubeError>> = cluster.block_on(
            stream::iter(phase)
                .map(|r| list_resource(cluster, &store, sel, r))
                .buffer_unordered(PARALLEL)
                .collect(),
        );
        for g in got {
            counts.push(g?);
        }
    }

    // Cluster-scoped objects referred to from the selected namespaces.
    if !sel.namespaces.is_empty() {
        let wanted: Vec<(String, String)> = store.referenced.lock().expect("poisoned").iter().cloned().collect();
        for (gp, name) in wanted {
            let Some(r) = resources
                .iter()
                .find(|r| format!("{}/{}", if r.group.is_empty() { "core" } else { &r.group }, r.plural) == gp)
            else {
                continue;
            };
            let api: Api<DynamicObject> = Api::all_with(cluster.client().clone(), &r.api_resource());
            match cluster.block_on(api.get_opt(&name)) {
                Ok(Some(obj)) => {
                    if store.put(r, serde_json::to_value(&obj).expect("objects serialise"))? {
                        bump(&mut counts, r);
                    }
                }
                Ok(None) => {}
                Err(e) => store
                    .errors
                    .lock()
                    .expect("poisoned")
                    .push(format!("{gp}/{name}: {}", crate::short_error(&e))),
            }
        }
    }
    // Volume data of the bound claims in scope, between the pods' pre and post hooks.
    let mut hooks_ran = Vec::new();
    if opts.volumes {
        let (hooks, idle): (Vec<_>, Vec<_>) = store
            .hooks
            .lock()
            .expect("poisoned")
            .clone()
            .into_iter()
            .partition(|h| h.phase == "Running");
        for h in idle {
            store.errors.lock().expect("poisoned").push(format!(
                "pod {}/{} asks for backup hooks but is not running (phase {:?}): its hooks did not run",
                h.namespace, h.pod, h.phase
            ));
        }
        let mut pre_done = Vec::new();
        let mut failure = None;
        let mut ran = |h: &crate::hooks::PodHook, phase: &str| {
            if h.spec.command(phase).is_some() {
                hooks_ran.push(format!(
                    "{phase} pod {}/{} container {}",
                    h.namespace, h.pod, h.container
                ));
            }
        };
        for h in &hooks {
            ran(h, "pre");
            match cluster.run_hook(h, "pre") {
                Ok(note) => {
                    store.errors.lock().expect("poisoned").extend(note);
                    pre_done.push(h);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let claims = if failure.is_none() {
            store.claims.lock().expect("poisoned").clone()
        } else {
            Vec::new()
        };
        let progress = lifeboat_fs::backup::Progress::default();
        for (ns, claim) in claims {
            match cluster.read_pvc(repo, &ns, &claim, &opts.helper_image, &progress) {
                Ok(out) => {
                    for e in out.errors {
                        store
                            .errors
                            .lock()
                            .expect("poisoned")
                            .push(format!("claim {ns}/{claim}: {}: {}", e.path, e.error));
                    }
                    store
                        .asm
                        .lock()
                        .expect("poisoned")
                        .add(format!("volumes/{ns}/{claim}/data").as_bytes(), out.root);
                }
                Err(e @ KubeError::Repo(_)) => {
                    failure = Some(e);
                    break;
                }
                Err(e) => store
                    .errors
                    .lock()
                    .expect("poisoned")
                    .push(format!("claim {ns}/{claim}: data not backed up: {e}")),
            }
        }
        for h in pre_done {
            ran(h, "post");
            match cluster.run_hook(h, "post") {
                Ok(note) => store.errors.lock().expect("poisoned").extend(note),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
    counts.retain(|c| c.objects > 0);
    counts.sort_by(|a, b| a.resource.cmp(&b.resource));

    let manifest = Manifest {
        format: 1,
        context: cluster.context().to_string(),
        server: cluster.server().to_string(),
        server_version: version.git_version.clone(),
        selection: sel.clone(),
        resources: counts,
        skipped,
        errors: store.errors.lock().expect("poisoned").clone(),
        hooks: hooks_ran,
        namespaces: store.namespaces.lock().expect("poisoned").iter().cloned().collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
    let mut asm = store.asm.into_inner().expect("poisoned");
    asm.add_bytes(&store.chunker, b"kube.json", &json, store.now_ns)?;
    let root = asm.finish(repo)?;
    let objects = store.objects.load(Relaxed);
    let mut snapshot = Snapshot {
        time: time::OffsetDateTime::now_utc(),
        kind: "kube".into(),
        hostname: cluster.context().to_string(),
        username: lifeboat_repo::username(),
        paths: vec![cluster.server().to_string()],
        tags: {
            let mut t = opts.tags.clone();
            if !manifest.errors.is_empty() && !t.iter().any(|x| x == lifeboat_model::INCOMPLETE_TAG) {
                t.push(lifeboat_model::INCOMPLETE_TAG.to_string());
            }
            t
        },
        tree: root.subtree.expect("finish stores the root"),
        parent: None,
        program_version: concat!("lifeboat ", env!("CARGO_PKG_VERSION")).into(),
        summary: SnapshotSummary {
            files: objects + 1,
            errors: manifest.errors.len() as u64,
            ..Default::default()
        },
    };
    let snapshot_id = repo.commit_snapshot(&mut snapshot, started)?;
    Ok(BackupOutcome {
        snapshot_id,
        snapshot,
        manifest,
        objects,
    })
}

fn bump(counts: &mut Vec<ResourceCount>, r: &Resource) {
    match counts.iter_mut().find(|c| c.resource == r.key()) {
        Some(c) => c.objects += 1,
        None => counts.push(ResourceCount {
            resource: r.key(),
            kind: r.kind.clone(),
            namespaced: r.namespaced,
            objects: 1,
        }),
    }
}

/// Lists one resource type page by page (in each selected namespace, or cluster-wide) and stores
/// every object as it arrives.
async fn list_resource(
    cluster: &Cluster,
    store: &Store<'_>,
    sel: &Selection,
    r: Resource,
) -> Result<ResourceCount, KubeError> {
    let mut count = ResourceCount {
        resource: r.key(),
        kind: r.kind.clone(),
        namespaced: r.namespaced,
        objects: 0,
    };
    let ar = r.api_resource();
    let apis: Vec<Api<DynamicObject>> = if r.namespaced && !sel.namespaces.is_empty() {
        sel.namespaces
            .iter()
            .map(|ns| Api::namespaced_with(cluster.client().clone(), ns, &ar))
            .collect()
    } else {
        vec![Api::all_with(cluster.client().clone(), &ar)]
    };
    for api in apis {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(l) = &sel.label_selector {
            lp = lp.labels(l);
        }
        loop {
            let page = match api.list(&lp).await {
                Ok(p) => p,
                Err(e) => {
                    store.errors.lock().expect("poisoned").push(format!(
                        "{}: list failed: {}",
                        r.key(),
                        crate::short_error(&e)
                    ));
                    break;
                }
            };
            for obj in page.items {
                let ns = obj.metadata.namespace.as_deref().unwrap_or_default();
                let own_name = (r.group.is_empty() && r.plural == "namespaces")
                    .then(|| obj.metadata.name.as_deref().unwrap_or_default());
                if sel.namespaces.is_empty()
                    && sel
                        .exclude_namespaces
                        .iter()
                        .any(|x| x == ns || own_name == Some(x.as_str()))
                {
                    continue;
                }
                if store.put(&r, serde_json::to_value(&obj).expect("objects serialise"))? {
                    count.objects += 1;
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
    }
    Ok(count)
}
