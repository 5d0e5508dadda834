//! The Kubernetes [`Platform`]: an app's objects in its namespaces on one cluster (matching its
//! labels as a selector when it has any).
//!
//! - Stop and start scale the Deployments and StatefulSets to zero and back
//!   ([`lifeboat_kube::Cluster::scale_down`] records what ran).
//! - Stage restores a snapshot so that it runs nothing: every workload at zero replicas (the
//!   count recorded), CronJobs and Jobs suspended, DaemonSets held off every node, bare Pods (and
//!   Jobs on clusters that cannot suspend them) kept until the start; existing objects and the
//!   files of existing claims are replaced. Start undoes all of it.
//! - A drill's copy lives in the app's namespaces with the drill's prefix in front, behind a
//!   default-deny NetworkPolicy; its cluster-scoped objects are only created when missing, never
//!   replaced; its start leaves CronJobs and Jobs suspended. Removing it deletes those namespaces
//!   and the cluster-scoped objects it created.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_kube::restore::Existing;
use lifeboat_kube::{Cluster, KubeError, RestoreOptions, Selection};
use lifeboat_plan::{App, Site};
use lifeboat_repo::Repository;
use serde_json::Value;
use time::OffsetDateTime;

use super::{Definitions, HandCommands, Platform, SiteKind, Workload};
use crate::check::{line, CheckResult, Status};
use crate::OrchestratorError;

/// Kubernetes clusters (`sites.NAME.kubernetes`).
pub(super) struct KubeKind;

impl SiteKind for KubeKind {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn describe(&self, site: &Site) -> (&'static str, String) {
        let Site::Kubernetes {
            kubeconfig, context, ..
        } = site
        else {
            return ("Kubernetes", String::new());
        };
        (
            "Kubernetes",
            format!(
                "{} {}",
                kubeconfig.as_ref().map(|k| k.display().to_string()).unwrap_or_default(),
                context.clone().unwrap_or_default()
            ),
        )
    }

    fn connect(&self, name: &str, site: &Site, app: &App) -> Result<Arc<dyn Platform>, OrchestratorError> {
        let Site::Kubernetes {
            kubeconfig,
            context,
            helper_image,
            ..
        } = site
        else {
            return Err(OrchestratorError::Refused {
                reason: format!("site {name} is not a Kubernetes site"),
            });
        };
        connect(
            name,
            kubeconfig.as_deref(),
            context.as_deref(),
            helper_image.as_deref(),
            app,
        )
    }

    /// None besides the site's `address`: the API server's host is in the kubeconfig, which the
    /// plan only names.
    fn endpoint_hosts(&self, _: &Site) -> Vec<String> {
        Vec::new()
    }

    fn on_this_host(&self, _: &Site) -> bool {
        false
    }

    /// The helper image that reads and writes volume data: a site whose nodes lack it and cannot
    /// pull it (air-gapped, or the lab) starts no helper.
    fn checks(&self, app: &App, name: &str, site: &Site, p: &dyn Platform) -> Vec<CheckResult> {
        let Site::Kubernetes { helper_image, .. } = site else {
            return Vec::new();
        };
        let a = Some(app.name.value.as_str());
        let check = format!("helper image on {name}");
        let image = helper_image
            .as_deref()
            .unwrap_or(lifeboat_kube::volumes::DEFAULT_HELPER_IMAGE);
        vec![match p.has_image(image) {
            Ok(true) => line(a, &check, Status::Ok, format!("{image} present")),
            Ok(false) => line(
                a,
                &check,
                Status::Fail,
                format!(
                    "{image} is on no node of {name}: volume data cannot be read or written there unless its nodes can pull it (sites.{name}.helper_image names another)"
                ),
            ),
            Err(e) => line(a, &check, Status::Fail, e.to_string()),
        }]
    }

    fn hand(&self, app: &App, site: &Site) -> Box<dyn HandCommands> {
        let (kubeconfig, context) = match site {
            Site::Kubernetes {
                kubeconfig, context, ..
            } => (kubeconfig.as_ref(), context.as_ref()),
            _ => (None, None),
        };
        let kfile = kubeconfig.map(|k| format!("--kubeconfig {}", k.display()));
        let labels: Vec<String> = app.select.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Box::new(Hand {
            kc: [kfile.clone(), context.map(|c| format!("--context {c}"))]
                .into_iter()
                .flatten()
                .map(|a| a + " ")
                .collect(),
            target: format!(
                "kube{}{}",
                context.map(|c| format!(":{c}")).unwrap_or_default(),
                kfile.map(|k| format!(" {k}")).unwrap_or_default()
            ),
            namespaces: app.select.namespaces.clone(),
            selector: if labels.is_empty() {
                String::new()
            } else {
                format!("-l {} ", labels.join(","))
            },
        })
    }
}

/// The hand commands of an app on a Kubernetes site.
struct Hand {
    /// `--kubeconfig FILE --context CONTEXT ` or less.
    kc: String,
    /// `kube` or `kube:CONTEXT`, then ` --kubeconfig FILE` when one is set.
    target: String,
    namespaces: Vec<String>,
    /// `-l SELECTOR ` or nothing.
    selector: String,
}

impl Hand {
    /// A shell block that reads `Kind/name=VALUE` of each of the app's workloads per namespace
    /// into `vars` and runs `body` (`KC` and `NS` stand for the kubeconfig arguments and the
    /// namespace).
    fn each_workload(&self, value: &str, vars: &str, body: &str) -> String {
        let Hand {
            kc,
            namespaces,
            selector,
            ..
        } = self;
        let lines: String = namespaces
            .iter()
            .map(|ns| {
                format!(
                    "   kubectl {kc}-n {ns} get deploy,statefulset {selector}-o jsonpath='{{range .items[*]}}{{.kind}}/{{.metadata.name}}={value}{{\"\\n\"}}{{end}}' | while IFS== read {vars}; do {}; done\n",
                    body.replace("KC", kc).replace("NS", ns)
                )
            })
            .collect();
        format!("   ```\n{lines}   ```")
    }
}

impl HandCommands for Hand {
    fn fence(&self, _grace: Option<u64>) -> String {
        format!(
            "each Deployment and StatefulSet to zero, its count kept in the annotation `lifeboat.io/replicas`:\n{}",
            self.each_workload(
                "{.spec.replicas}",
                "w n",
                "[ \"$n\" = 0 ] || { kubectl KC-n NS annotate --overwrite \"$w\" lifeboat.io/replicas=\"$n\"; kubectl KC-n NS scale \"$w\" --replicas=0; }"
            )
        )
    }

    fn start(&self) -> String {
        format!(
            "each Deployment and StatefulSet at zero back to its recorded count:\n{}",
            self.each_workload(
                "{.spec.replicas}={.metadata.annotations.lifeboat\\.io/replicas}",
                "w r n",
                "[ \"$r\" != 0 ] || kubectl KC-n NS scale \"$w\" --replicas=\"${n:-1}\""
            )
        )
    }

    fn restore_to(&self) -> String {
        self.target.clone()
    }

    fn exec(&self, container: &str, command: &str) -> String {
        let (ns, name, c) = lifeboat_kube::exec::target(container).unwrap_or((container, "", None));
        let c = c.map(|c| format!("-c {c} ")).unwrap_or_default();
        format!(
            "`kubectl {}-n {ns} exec {name} {c}-- {command}` (a workload: `deploy/{name}` or `statefulset/{name}`)",
            self.kc
        )
    }

    fn backup(&self, plan: &str, app: &str) -> String {
        format!(
            "`lifeboat backup kube {}{}{}--tag plan={plan} --tag app={app}`",
            self.kc,
            self.namespaces.iter().map(|n| format!("-n {n} ")).collect::<String>(),
            self.selector
        )
    }
}

/// Connects to the API server of site `name`.
pub(super) fn connect(
    name: &str,
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    helper_image: Option<&str>,
    app: &App,
) -> Result<Arc<dyn Platform>, OrchestratorError> {
    let cluster = Cluster::connect(kubeconfig, context).map_err(|e| connect_error(name, e))?;
    let labels = &app.select.labels;
    Ok(Arc::new(Kube {
        name: name.to_string(),
        stop_grace: app.stop_grace.map(|g| g.0),
        cluster,
        namespaces: app.select.namespaces.clone(),
        selector: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        helper_image: helper_image
            .unwrap_or(lifeboat_kube::volumes::DEFAULT_HELPER_IMAGE)
            .to_string(),
        drill_allow: app.drill.allow.iter().map(|a| a.value.clone()).collect(),
    }))
}

/// A failed connection as the orchestrator reads it: only [`KubeError::Unreachable`] is "cannot be
/// reached"; a kubeconfig that cannot be used is a configuration error, refused credentials, TLS
/// and error answers are [`OrchestratorError::Access`] too.
pub(super) fn connect_error(site: &str, e: KubeError) -> OrchestratorError {
    use lifeboat_model::reach::AccessProblem;
    let site = site.to_string();
    match e {
        KubeError::Unreachable { .. } => OrchestratorError::Unreachable {
            site,
            source: Box::new(e),
        },
        KubeError::Access { problem, .. } => OrchestratorError::Access {
            site,
            problem,
            source: Box::new(e),
        },
        KubeError::Config(reason) => OrchestratorError::Access {
            site,
            problem: AccessProblem::Config,
            source: format!("kubeconfig: {reason}").into(),
        },
        e => OrchestratorError::Access {
            site,
            problem: AccessProblem::Protocol,
            source: Box::new(e),
        },
    }
}

/// The name of the copy made under `prefix` (a label value: `drill-ID-` without its dash).
fn copy_name(prefix: &str) -> String {
    prefix.trim_matches('-').to_string()
}

struct Kube {
    name: String,
    /// The app's `stop_grace`: how long its pods may take to stop (beyond 30 s).
    stop_grace: Option<Duration>,
    cluster: Cluster,
    namespaces: Vec<String>,
    selector: Option<String>,
    helper_image: String,
    /// The app's `drill.allow`: networks a drill's copy may reach.
    drill_allow: Vec<String>,
}

fn describe(changes: Vec<lifeboat_kube::control::Change>) -> Vec<String> {
    changes
        .into_iter()
        .map(|c| format!("{} {}: {}", c.kind, c.name, c.action))
        .collect()
}

impl Kube {
    fn err(&self) -> impl Fn(KubeError) -> OrchestratorError + '_ {
        |e| match e {
            KubeError::Unreachable { .. } => OrchestratorError::Unreachable {
                site: self.name.clone(),
                source: Box::new(e),
            },
            e => OrchestratorError::Site {
                site: self.name.clone(),
                retry: e.retry(),
                source: Box::new(e),
            },
        }
    }

    /// The app's namespaces under `prefix`.
    fn namespaces(&self, prefix: Option<&str>) -> Vec<String> {
        let p = prefix.unwrap_or_default();
        self.namespaces.iter().map(|n| format!("{p}{n}")).collect()
    }
}

impl Platform for Kube {
    fn backup(
        &self,
        repo: &Repository,
        tags: Vec<String>,
    ) -> Result<(lifeboat_model::Id, OffsetDateTime), OrchestratorError> {
        let _lock = repo
            .lock(false, "backup --plan", Duration::from_secs(60))
            .map_err(OrchestratorError::Repo)?;
        let opts = lifeboat_kube::BackupOptions {
            selection: Selection {
                namespaces: self.namespaces.clone(),
                label_selector: self.selector.clone(),
                ..Default::default()
            },
            tags,
            volumes: true,
            helper_image: self.helper_image.clone(),
        };
        let out = lifeboat_kube::backup(repo, &self.cluster, &opts).map_err(self.err())?;
        if let Some(e) = out.manifest.errors.first() {
            return Err(OrchestratorError::Site {
                site: self.name.clone(),
                retry: lifeboat_model::Retry::Later,
                source: format!(
                    "backup {} is incomplete: {e} ({} problems)",
                    out.snapshot_id.short(),
                    out.manifest.errors.len()
                )
                .into(),
            });
        }
        Ok((out.snapshot_id, out.snapshot.time))
    }

    fn stop(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        let namespaces = self.namespaces(prefix);
        let mut done = describe(
            self.cluster
                .scale_down(&namespaces, self.selector.as_deref())
                .map_err(self.err())?,
        );
        // What runs without replicas (CronJobs, Jobs, DaemonSets, bare Pods) is held as a staged
        // copy's is; the start releases it.
        done.extend(describe(
            self.cluster
                .hold(&namespaces, self.selector.as_deref())
                .map_err(self.err())?,
        ));
        // Stopped means no longer writing: the pods' containers must have ended, within their
        // grace period and the app's stop_grace.
        let limit = self.stop_grace.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(30);
        let running = self
            .cluster
            .wait_stopped(&namespaces, self.selector.as_deref(), limit)
            .map_err(self.err())?;
        if !running.is_empty() {
            // Scaled to zero is not stopped: a kubelet cut off from the API server keeps its pods
            // running. Not confirmed, so not fenced.
            return Err(OrchestratorError::Site {
                site: self.name.clone(),
                retry: lifeboat_model::Retry::Later,
                source: format!(
                    "scaled to zero, but pods still run after {} s (their node may not answer), so the fence is not \
                     confirmed: {} ({})",
                    limit.as_secs(),
                    running.join(", "),
                    done.join("; ")
                )
                .into(),
            });
        }
        Ok(done)
    }

    fn start(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        let namespaces = self.namespaces(prefix);
        let mut done = describe(
            self.cluster
                .scale_up(&namespaces, self.selector.as_deref())
                .map_err(self.err())?,
        );
        // What staging held back: a drill's copy runs no CronJobs and Jobs.
        done.extend(describe(
            self.cluster
                .release(&namespaces, self.selector.as_deref(), prefix.is_none())
                .map_err(self.err())?,
        ));
        Ok(done)
    }

    fn stage(
        &self,
        repo: &Repository,
        snapshot: &str,
        prefix: &str,
        base: Option<&str>,
    ) -> Result<String, OrchestratorError> {
        let _lock = repo
            .lock(false, "restore (DR)", Duration::from_secs(60))
            .map_err(OrchestratorError::Repo)?;
        let load = |snapshot: &str| -> Result<_, OrchestratorError> {
            let (id, snap) = repo.find_snapshot(snapshot)?;
            let stored = lifeboat_kube::restore::load(repo, &id.to_hex(), &snap.tree).map_err(self.err())?;
            Ok((id, stored))
        };
        let (id, stored) = load(snapshot)?;
        // The claims' data as the base snapshot left it: only what changed since is written. A
        // base that cannot be read (forgotten by hand) means writing everything.
        let volume_base = match base.filter(|_| prefix.is_empty()) {
            Some(b) => load(b).map(|(_, s)| s.volume_data).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        let namespace_map: BTreeMap<String, String> = if prefix.is_empty() {
            BTreeMap::new()
        } else {
            self.namespaces
                .iter()
                .map(|n| (n.clone(), format!("{prefix}{n}")))
                .collect()
        };
        let opts = RestoreOptions {
            namespace_map,
            replicas: Some(0),
            existing: Existing::Update,
            helper_image: self.helper_image.clone(),
            volume_base,
            hold: true,
            isolated: (!prefix.is_empty()).then(|| copy_name(prefix)),
            ..Default::default()
        };
        let report = lifeboat_kube::restore(repo, &self.cluster, &stored, &opts).map_err(self.err())?;
        let mut isolated = Vec::new();
        if !prefix.is_empty() {
            // Before anything of the copy runs (its start comes after).
            for ns in self.namespaces(Some(prefix)) {
                let c = self
                    .cluster
                    .isolate_namespace(&ns, &copy_name(prefix), &self.drill_allow)
                    .map_err(self.err())?;
                isolated.push(format!("{} {}: {}", c.kind, c.name, c.action));
            }
        }
        if report.failed > 0 {
            let first = report.items.iter().find(|i| i.status == "failed");
            return Err(OrchestratorError::Site {
                site: self.name.clone(),
                retry: lifeboat_model::Retry::AfterFix,
                source: format!(
                    "restore of {} failed for {} objects; first: {}",
                    id.short(),
                    report.failed,
                    first
                        .map(|i| format!(
                            "{} {}/{}: {}",
                            i.kind,
                            i.namespace.as_deref().unwrap_or_default(),
                            i.name,
                            i.message.as_deref().unwrap_or_default()
                        ))
                        .unwrap_or_default()
                )
                .into(),
            });
        }
        let data: Vec<String> = report
            .items
            .iter()
            .filter(|i| i.action == "data")
            .map(|i| {
                format!(
                    "{}/{}: {}",
                    i.namespace.as_deref().unwrap_or_default(),
                    i.name,
                    i.message.as_deref().unwrap_or_default()
                )
            })
            .collect();
        let held: Vec<String> = report
            .items
            .iter()
            .filter(|i| i.action == "hold")
            .map(|i| format!("{} {}/{}", i.kind, i.namespace.as_deref().unwrap_or_default(), i.name))
            .collect();
        let objects = report.items.len() - data.len();
        let mut out = format!("{objects} objects restored from {}", id.short());
        if !data.is_empty() {
            out.push_str(&format!(" ({})", data.join("; ")));
        }
        if !held.is_empty() {
            out.push_str(&format!("; held back until start: {}", held.join(", ")));
        }
        if !isolated.is_empty() {
            out.push_str(&format!("; {}", isolated.join("; ")));
        }
        Ok(out)
    }

    fn running(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        self.cluster
            .running_workloads(&self.namespaces(prefix), self.selector.as_deref())
            .map_err(self.err())
    }

    fn remove(&self, prefix: &str) -> Result<Vec<String>, OrchestratorError> {
        if prefix.is_empty() {
            return Err(OrchestratorError::Refused {
                reason: "removing needs a prefix: the production namespaces are never removed".into(),
            });
        }
        let mut done = describe(
            self.cluster
                .delete_isolated_cluster_objects(&copy_name(prefix))
                .map_err(self.err())?,
        );
        done.extend(describe(
            self.cluster
                .delete_namespaces(&self.namespaces(Some(prefix)))
                .map_err(self.err())?,
        ));
        Ok(done)
    }

    fn workloads(&self) -> Result<Vec<Workload>, OrchestratorError> {
        Ok(self
            .cluster
            .workloads(&self.namespaces, self.selector.as_deref())
            .map_err(self.err())?
            .into_iter()
            .map(|w| Workload {
                name: format!("{} {}", w.kind, w.name),
                running: w.running,
                images: w.images,
                cpus: w.cpus,
                memory: w.memory,
            })
            .collect())
    }

    fn has_image(&self, image: &str) -> Result<bool, OrchestratorError> {
        self.cluster.has_image(image).map_err(self.err())
    }

    fn capacity(&self) -> Result<(f64, u64), OrchestratorError> {
        self.cluster.capacity().map_err(self.err())
    }

    fn exec(&self, container: &str, command: &[String], timeout: Duration) -> Result<(i64, String), OrchestratorError> {
        let Some((ns, name, c)) = lifeboat_kube::exec::target(container) else {
            return Err(OrchestratorError::Refused {
                reason: format!("{container:?}: on Kubernetes a hook names NAMESPACE/POD-OR-WORKLOAD[/CONTAINER]"),
            });
        };
        let pod = self.cluster.running_pod(ns, name).map_err(self.err())?;
        let out = self.cluster.exec(ns, &pod, c, command, timeout).map_err(self.err())?;
        Ok((out.code, super::output_tail(&out.stdout, &out.stderr)))
    }

    fn definitions(&self) -> Result<Definitions, OrchestratorError> {
        self.cluster
            .objects(
                &self.namespaces,
                self.selector.as_deref(),
                lifeboat_kube::control::APP_KINDS,
            )
            .map(|objects| {
                let essence = objects
                    .iter()
                    .map(|o| {
                        (
                            lifeboat_kube::control::definition_key(o),
                            lifeboat_kube::control::essence(o),
                        )
                    })
                    .collect();
                Definitions::new(essence, objects)
            })
            .map_err(self.err())
    }

    fn apply_definitions(
        &self,
        _repo: &Repository,
        defs: Definitions,
        _here: &Definitions,
        objects: &BTreeSet<String>,
    ) -> Result<Vec<String>, OrchestratorError> {
        let Some(live) = defs.native::<Vec<Value>>() else {
            return Err(OrchestratorError::Refused {
                reason: format!(
                    "site {}: Kubernetes definitions are needed to change a Kubernetes site",
                    self.name
                ),
            });
        };
        let mut done = Vec::new();
        for obj in live {
            let key = lifeboat_kube::control::definition_key(obj);
            if objects.contains(&key) {
                let action = self.cluster.put(obj.clone(), Some(0)).map_err(self.err())?;
                done.push(format!("{action} {key}"));
            }
        }
        Ok(done)
    }
}
