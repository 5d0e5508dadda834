//! Real-world acceptance: the published manifests of seven public projects in
//! `../shared/corpus/kube` (see its `SOURCES.md` for the hazards built in) are applied to lab site
//! a, the whole cluster is backed up, and the snapshot is restored into site b. Every object of the
//! corpus must be on b and equal its original on a after normalisation, with nothing blocked by
//! the corpus's webhooks, conversion webhooks or its APIService without a backend.
//!
//! Its own test binary, so no other Kubernetes test runs beside it: the corpus's APIService makes
//! namespace deletion wait while it exists, and the test removes everything it made before and after.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::{kube_sites, wait_for, KubeSite};
use common::{json, ok};
use serde_json::{json, Value};

fn corpus_dir() -> PathBuf {
    std::env::var_os("LIFEBOAT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../../shared/corpus/kube"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("the corpus at {} is needed: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Every object of the corpus, `*List` documents expanded, in file order.
fn corpus() -> Vec<Value> {
    let mut files = Vec::new();
    yaml_files(&corpus_dir(), &mut files);
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
        for d in docs {
            if d.is_null() {
                continue;
            }
            let kind = d["kind"].as_str().unwrap_or_default();
            if kind.ends_with("List") {
                objects.extend(d["items"].as_array().cloned().unwrap_or_default());
            } else {
                objects.push(d);
            }
        }
    }
    objects
}

/// `(kind, namespace, name)`; cluster-scoped objects have no namespace, namespaced ones without
/// one go to `default` (as `kubectl create` puts them).
type Key = (String, String, String);

fn key(obj: &Value, cluster_kinds: &BTreeSet<String>) -> Key {
    let kind = obj["kind"].as_str().unwrap().to_string();
    let ns = if cluster_kinds.contains(&kind) {
        String::new()
    } else {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    };
    (kind, ns, obj["metadata"]["name"].as_str().unwrap().to_string())
}

/// The kinds the site serves: kind -> (`resource.group` for kubectl, namespaced).
fn served_kinds(site: &KubeSite) -> BTreeMap<String, (String, bool)> {
    // Discovery of the corpus's APIService fails while it has no backend; kubectl still prints the rest.
    let (_, out, _) = site.kubectl_try(&["api-resources", "--no-headers"], None);
    let mut kinds = BTreeMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [name, .., api_version, namespaced, kind] = cols[..] else {
            continue;
        };
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let res = if group.is_empty() {
            name.to_string()
        } else {
            format!("{name}.{group}")
        };
        kinds.insert(kind.to_string(), (res, namespaced == "true"));
    }
    kinds
}

fn list(objs: &[&Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": objs}).to_string()
}

/// `kubectl create` of `objs`; every error but "already exists" fails the test.
fn create(site: &KubeSite, objs: &[&Value]) {
    let (_, _, err) = site.kubectl_try(&["create", "-f", "-"], Some(&list(objs)));
    let real: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("AlreadyExists") && !l.contains("already exists"))
        .filter(|l| !l.contains("couldn't get resource list") && !l.contains("memcache.go"))
        .collect();
    assert!(
        real.is_empty(),
        "creating the corpus on {} failed:\n{}",
        site.name,
        real.join("\n")
    );
}

fn is_hazard_last(kind: &str) -> bool {
    matches!(
        kind,
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" | "APIService"
    )
}

/// Removes every corpus object from `site`: the APIService and webhooks first (they block
/// namespace deletion and object changes), then the rest, then waits until the namespaces are gone.
fn clean(site: &KubeSite, objects: &[Value]) {
    let _ = site.kubectl_try(
        &["delete", "apiservice", "v1beta1.metrics.k8s.io", "--ignore-not-found"],
        None,
    );
    let first: Vec<&Value> = objects
        .iter()
        .filter(|o| is_hazard_last(o["kind"].as_str().unwrap()))
        .collect();
    let _ = site.kubectl_try(&["delete", "--ignore-not-found", "-f", "-"], Some(&list(&first)));
    let rest: Vec<&Value> = objects
        .iter()
        .rev()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .collect();
    let _ = site.kubectl_try(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        Some(&list(&rest)),
    );
    let crds: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    let _ = site.kubectl_try(&["delete", "--ignore-not-found", "-f", "-"], Some(&list(&crds)));
    // Claims a StatefulSet made from its templates outlive it.
    for sts in objects.iter().filter(|o| o["kind"] == "StatefulSet") {
        let ns = sts
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let sts_name = sts["metadata"]["name"].as_str().unwrap();
        for t in sts
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let prefix = format!("{}-{sts_name}-", t["metadata"]["name"].as_str().unwrap());
            let (_, names, _) = site.kubectl_try(&["-n", ns, "get", "pvc", "-o", "name"], None);
            for n in names
                .lines()
                .filter(|n| n.trim_start_matches("persistentvolumeclaim/").starts_with(&prefix))
            {
                let _ = site.kubectl_try(&["-n", ns, "delete", n, "--ignore-not-found"], None);
            }
        }
    }
    for ns in objects.iter().filter(|o| o["kind"] == "Namespace") {
        let name = ns["metadata"]["name"].as_str().unwrap();
        wait_for(
            &format!("namespace {name} to go on {}", site.name),
            Duration::from_secs(180),
            || site.get_json("namespace", None, name).is_none().then_some(()),
        );
    }
    for pv in objects.iter().filter(|o| o["kind"] == "PersistentVolume") {
        let name = pv["metadata"]["name"].as_str().unwrap();
        wait_for(
            &format!("persistent volume {name} to go on {}", site.name),
            Duration::from_secs(60),
            || site.get_json("pv", None, name).is_none().then_some(()),
        );
    }
}

struct Clean<'a>(&'a [KubeSite], &'a [Value]);
impl Drop for Clean<'_> {
    fn drop(&mut self) {
        for s in self.0 {
            clean(s, self.1);
        }
    }
}

/// Every object of the kinds in `resources` on `site`, by key.
fn objects_on(site: &KubeSite, resources: &[String], cluster_kinds: &BTreeSet<String>) -> BTreeMap<Key, Value> {
    let (_, out, err) = site.kubectl_try(&["get", &resources.join(","), "-A", "-o", "json"], None);
    let all: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl get on {}: {e}: {err}", site.name));
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (key(o, cluster_kinds), o.clone()))
        .collect()
}

/// The differences between `want` (from a) and `got` (from b) for every corpus key.
fn differences(keys: &[Key], a: &BTreeMap<Key, Value>, b: &BTreeMap<Key, Value>) -> Vec<String> {
    let mut diffs = Vec::new();
    for k in keys {
        let (Some(want), Some(got)) = (a.get(k), b.get(k)) else {
            diffs.push(format!("{k:?}: on a {}, on b {}", a.contains_key(k), b.contains_key(k)));
            continue;
        };
        let (want, got) = (
            lifeboat_kube::rules::normalize(&k.0, want),
            lifeboat_kube::rules::normalize(&k.0, got),
        );
        if want != got {
            diffs.push(format!("{k:?} differs:\n  a: {want}\n  b: {got}"));
        }
    }
    diffs
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn published_manifests_of_seven_projects_move_to_an_empty_cluster() {
    let objects = corpus();
    assert_eq!(objects.len(), 261, "the corpus has 261 objects (SOURCES.md)");
    let sites = kube_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let _c = Clean(&sites[..2], &objects);
    clean(a, &objects);
    clean(b, &objects);

    // On a: CRDs first and Established; then namespaces and everything else; the webhooks and the
    // APIService last, as an installation that works would have them (the ClusterIssuer cannot
    // be created once cert-manager's webhooks exist without their backend).
    let by_kind = |pred: &dyn Fn(&str) -> bool| -> Vec<&Value> {
        objects.iter().filter(|o| pred(o["kind"].as_str().unwrap())).collect()
    };
    let crds = by_kind(&|k| k == "CustomResourceDefinition");
    create(a, &crds);
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        a.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd", name]);
    }
    create(a, &by_kind(&|k| k == "Namespace"));
    create(
        a,
        &by_kind(&|k| k != "CustomResourceDefinition" && k != "Namespace" && !is_hazard_last(k)),
    );
    create(a, &by_kind(&is_hazard_last));

    let served = served_kinds(a);
    let cluster_kinds: BTreeSet<String> = served
        .iter()
        .filter(|(_, (_, ns))| !ns)
        .map(|(k, _)| k.clone())
        .collect();
    let mut keys: Vec<Key> = objects.iter().map(|o| key(o, &cluster_kinds)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), objects.len(), "two corpus objects share a key");
    let resources: Vec<String> = keys
        .iter()
        .map(|k| &k.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|kind| {
            served
                .get(kind)
                .unwrap_or_else(|| panic!("site a does not serve {kind}"))
                .0
                .clone()
        })
        .collect();
    let on_a = objects_on(a, &resources, &cluster_kinds);
    let missing: Vec<&Key> = keys.iter().filter(|k| !on_a.contains_key(*k)).collect();
    assert!(missing.is_empty(), "site a did not accept {missing:?}");

    // The whole cluster with no scope flag: the system namespaces too (the corpus keeps RBAC, a
    // CronJob, a Job, a ServiceAccount and a ConfigMap in kube-system).
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    ok(&repo, &["repo", "init"]);
    let backup = json(
        &repo,
        &[
            "backup",
            "kube",
            "--kubeconfig",
            &a.kubeconfig,
            "--helper-image",
            "lifeboat-lab/web:1",
        ],
    );
    assert_eq!(backup["errors"], json!([]), "{backup}");
    let covered: Vec<&str> = backup["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        covered.contains(&"kube-system"),
        "the summary lists kube-system: {covered:?}"
    );
    let snap = backup["snapshot_id"].as_str().unwrap().to_string();

    let report = json(
        &repo,
        &[
            "restore",
            &snap,
            "--to",
            &format!("kube:{}", b.context),
            "--kubeconfig",
            &b.kubeconfig,
            "--helper-image",
            "lifeboat-lab/web:1",
        ],
    );
    let failed: Vec<&Value> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "failed")
        .collect();
    assert!(failed.is_empty(), "the restore into b failed for {failed:#?}");

    // The 11 objects the corpus keeps in kube-system reached b (a whole-cluster backup is whole).
    let system: Vec<&Key> = keys.iter().filter(|k| k.1 == "kube-system").collect();
    let names: BTreeSet<(&str, &str)> = system.iter().map(|k| (k.0.as_str(), k.2.as_str())).collect();
    assert_eq!(
        system.len(),
        11,
        "the corpus keeps 11 objects in kube-system: {names:?}"
    );
    for kind in ["CronJob", "Job", "ServiceAccount", "ConfigMap", "Role", "RoleBinding"] {
        assert!(
            names.iter().any(|(k, _)| *k == kind),
            "no {kind} in kube-system: {names:?}"
        );
    }
    let on_b = objects_on(b, &resources, &cluster_kinds);
    let lost: Vec<&&Key> = system.iter().filter(|k| !on_b.contains_key(**k)).collect();
    assert!(lost.is_empty(), "not restored into b: {lost:?}");

    // Every corpus object on b, equal to a's. Controllers finish some objects on both sides
    // (aggregated ClusterRoles, bound claims), so compare until they agree or time runs out.
    let mut last = Vec::new();
    let agreed = wait_for_option(Duration::from_secs(90), || {
        let on_a = objects_on(a, &resources, &cluster_kinds);
        let on_b = objects_on(b, &resources, &cluster_kinds);
        last = differences(&keys, &on_a, &on_b);
        last.is_empty().then_some(())
    });
    assert!(
        agreed.is_some(),
        "{} of {} corpus objects differ after the move:\n{}",
        last.len(),
        keys.len(),
        last.join("\n")
    );
}

/// Like [`wait_for`], but gives up with `None` so the caller can report what it saw last.
fn wait_for_option<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The package's directory: cargo's at run time (a test binary built from another checkout that
/// shares the target directory still reads this checkout's files), else the one it was built in.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
