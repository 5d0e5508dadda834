//! What the orchestrator asks of a site, for one app: the [`Platform`] trait and its Docker
//! implementation. Kubernetes sites are not implemented yet: [`connect`] says so.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_docker::{Capture, Existing, RestoreOptions, Selection, Site as DockerSite};
use lifeboat_plan::{App, Plan, Site};
use lifeboat_repo::Repository;
use serde_json::Value;
use time::OffsetDateTime;

use crate::OrchestratorError;

/// A running or stopped copy of an app on one site.
pub trait Platform: Send + Sync {
    /// Backs the app up; the snapshot's id and time.
    fn backup(&self, repo: &Repository, tags: Vec<String>) -> Result<(String, OffsetDateTime), OrchestratorError>;
    /// Stops the app's workloads (under `prefix`, or the unprefixed production ones). Idempotent.
    fn stop(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError>;
    /// Starts them. Idempotent.
    fn start(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError>;
    /// Restores `snapshot` here with nothing started, replacing what exists (idempotent), under
    /// `prefix` (empty: the production names). A summary.
    fn stage(&self, repo: &Repository, snapshot: &str, prefix: &str) -> Result<String, OrchestratorError>;
    /// Names of the app's workloads (under `prefix`) that run now.
    fn running(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError>;
    /// Removes everything made under `prefix`.
    fn remove(&self, prefix: &str) -> Result<Vec<String>, OrchestratorError>;
    /// The app's production workloads here.
    fn workloads(&self) -> Result<Vec<lifeboat_docker::Workload>, OrchestratorError>;
    /// Whether an image is present here.
    fn has_image(&self, image: &str) -> Result<bool, OrchestratorError>;
    /// CPUs and memory (bytes) of the site.
    fn capacity(&self) -> Result<(f64, u64), OrchestratorError>;
    /// Runs `command` (no shell) in the running container `container`; its exit code and the
    /// end of its output. Gives up after `timeout` (the command may go on in the container).
    fn exec(&self, container: &str, command: &[String], timeout: Duration) -> Result<(i64, String), OrchestratorError>;
    /// The app's definitions here as the engine reports them now: no volume data, no secret values.
    fn definitions(&self) -> Result<Capture, OrchestratorError>;
    /// Creates or replaces, from `defs`, the workloads named in `workloads` ("KIND/NAME" keys of
    /// [`essence`]) with nothing started, and creates the networks, volumes and configs of `defs`
    /// that are missing here (`here`: this site's [`Platform::definitions`], taken just before). Existing volumes and their data are left as they are; secrets are not
    /// written (their values are never read live). What was done, one line per object.
    fn apply_definitions(
        &self,
        repo: &Repository,
        defs: Capture,
        here: &Capture,
        workloads: &BTreeSet<String>,
    ) -> Result<Vec<String>, OrchestratorError>;
}

/// What a user chose of each workload of `defs` ("KIND/NAME" to its settings), for drift: without
/// what differs by design between an active site and a hot standby (running, replicas) and
/// without prefixed copies (a drill's).
pub fn essence(defs: &Capture) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for kind in ["containers", "services"] {
        for (name, doc) in defs.kind(kind) {
            if doc.pointer("/Config/Labels/io.lifeboat.prefix").is_some()
                || doc.pointer("/Spec/Labels/io.lifeboat.prefix").is_some()
            {
                continue;
            }
            let mut e = lifeboat_docker::diff::essence(kind, doc);
            if let Some(m) = e.as_object_mut() {
                m.remove("Running");
            }
            if let Some(m) = e.pointer_mut("/Spec/Mode/Replicated").and_then(|v| v.as_object_mut()) {
                m.remove("Replicas");
            }
            if let Some(l) = e.pointer_mut("/Spec/Labels").and_then(|v| v.as_object_mut()) {
                l.remove(lifeboat_docker::control::REPLICAS_LABEL);
            }
            out.insert(format!("{kind}/{name}"), e);
        }
    }
    out
}

/// One difference between the active site's workloads and the standby's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "drift", rename_all = "snake_case")]
pub enum Drift {
    /// On the active site, not on the standby.
    Missing { object: String },
    /// On both, with these settings different (paths into the definition, at most 5).
    Differs { object: String, fields: Vec<String> },
    /// Only on the standby.
    Extra { object: String },
    /// Running on the side that is not active (it must run nothing).
    Running { object: String },
}

impl Drift {
    /// The "KIND/NAME" it is about.
    pub fn object(&self) -> &str {
        match self {
            Drift::Missing { object }
            | Drift::Differs { object, .. }
            | Drift::Extra { object }
            | Drift::Running { object } => object,
        }
    }

    /// One line, naming the standby `site`.
    pub fn describe(&self, site: &str) -> String {
        match self {
            Drift::Missing { object } => format!("{object} missing on {site}"),
            Drift::Differs { object, fields } => format!("{object} differs ({})", fields.join(", ")),
            Drift::Extra { object } => format!("{object} only on {site}"),
            Drift::Running { object } => format!("{object} runs on {site}, which is not active"),
        }
    }
}

/// The drift between the essences of the active site and the standby, in object order.
pub fn drift(active: &BTreeMap<String, Value>, standby: &BTreeMap<String, Value>) -> Vec<Drift> {
    let mut out = Vec::new();
    for (k, v) in active {
        match standby.get(k) {
            None => out.push(Drift::Missing { object: k.clone() }),
            Some(w) if w != v => {
                let mut f = Vec::new();
                lifeboat_docker::diff::compare("", v, w, &mut f);
                out.push(Drift::Differs {
                    object: k.clone(),
                    fields: f.into_iter().take(5).map(|c| c.path).collect(),
                });
            }
            _ => {}
        }
    }
    out.extend(
        standby
            .keys()
            .filter(|k| !active.contains_key(*k))
            .map(|k| Drift::Extra { object: k.clone() }),
    );
    out
}

/// Opens `site` of `plan` for `app`. [`OrchestratorError::Unreachable`] when it cannot be reached.
pub type Connector = dyn Fn(&str, &App) -> Result<Arc<dyn Platform>, OrchestratorError> + Send + Sync;

/// The connector for real sites.
pub fn connector(plan: &Plan) -> Arc<Connector> {
    let sites = plan.sites.clone();
    Arc::new(move |name: &str, app: &App| {
        let site = sites.get(name).ok_or_else(|| OrchestratorError::Refused {
            reason: format!("no site {name:?} in the plan"),
        })?;
        match site {
            Site::Docker { host, .. } => {
                let host = host.clone().unwrap_or_else(lifeboat_docker::default_host);
                let d = DockerSite::connect(&host).map_err(|e| OrchestratorError::Unreachable {
                    site: name.to_string(),
                    reason: e.to_string(),
                })?;
                Ok(Arc::new(Docker {
                    name: name.to_string(),
                    site: d,
                    selection: selection(app),
                    stop_grace: app.stop_grace.map(|g| g.0),
                }) as Arc<dyn Platform>)
            }
            Site::Kubernetes { .. } => Err(OrchestratorError::Unsupported {
                site: name.to_string(),
                what: "DR operations on Kubernetes sites (back them up with `lifeboat backup kube`)".into(),
            }),
        }
    })
}

/// The Docker selection of an app: its labels and stack.
pub fn selection(app: &App) -> Selection {
    Selection {
        labels: app.select.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        stack: app.select.stack.clone(),
    }
}

struct Docker {
    name: String,
    site: DockerSite,
    selection: Selection,
    /// The app's `stop_grace`.
    stop_grace: Option<Duration>,
}

impl Docker {
    fn err(&self) -> impl Fn(lifeboat_docker::DockerError) -> OrchestratorError + '_ {
        |e| match e {
            lifeboat_docker::DockerError::Unreachable { reason, .. } => OrchestratorError::Unreachable {
                site: self.name.clone(),
                reason,
            },
            e => OrchestratorError::Site {
                site: self.name.clone(),
                reason: e.to_string(),
            },
        }
    }
}

fn describe(changes: Vec<lifeboat_docker::Change>) -> Vec<String> {
    changes
        .into_iter()
        .map(|c| format!("{} {}: {}", c.kind, c.name, c.action))
        .collect()
}

impl Platform for Docker {
    fn backup(&self, repo: &Repository, tags: Vec<String>) -> Result<(String, OffsetDateTime), OrchestratorError> {
        let _lock = repo
            .lock(false, "backup --plan", std::time::Duration::from_secs(60))
            .map_err(OrchestratorError::Repo)?;
        let opts = lifeboat_docker::BackupOptions {
            selection: self.selection.clone(),
            volumes: true,
            tags,
        };
        let out = lifeboat_docker::backup(repo, &self.site, &opts, &Default::default()).map_err(self.err())?;
        if let Some(e) = out.capture.manifest.errors.first() {
            return Err(OrchestratorError::Site {
                site: self.name.clone(),
                reason: format!(
                    "backup {} is incomplete: {e} ({} problems)",
                    out.snapshot_id.short(),
                    out.capture.manifest.errors.len()
                ),
            });
        }
        Ok((out.snapshot_id.to_hex(), out.snapshot.time))
    }

    fn stop(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        self.site
            .stop_workloads(&self.selection, prefix, self.stop_grace)
            .map(describe)
            .map_err(self.err())
    }

    fn start(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        self.site
            .start_workloads(&self.selection, prefix)
            .map(describe)
            .map_err(self.err())
    }

    fn stage(&self, repo: &Repository, snapshot: &str, prefix: &str) -> Result<String, OrchestratorError> {
        let _lock = repo
            .lock(false, "restore (DR)", std::time::Duration::from_secs(60))
            .map_err(OrchestratorError::Repo)?;
        let (id, snap) = repo.find_snapshot(snapshot)?;
        let stored = lifeboat_docker::restore::load(repo, &id.to_hex(), &snap.tree).map_err(self.err())?;
        let opts = RestoreOptions {
            replicas: Some(0),
            name_prefix: prefix.to_string(),
            existing: Existing::Update,
            ..Default::default()
        };
        let report = lifeboat_docker::restore(repo, &self.site, &stored, &opts).map_err(self.err())?;
        if report.failed > 0 {
            let first = report.items.iter().find(|i| i.status == "failed");
            return Err(OrchestratorError::Site {
                site: self.name.clone(),
                reason: format!(
                    "restore of {} failed for {} objects; first: {}",
                    id.short(),
                    report.failed,
                    first
                        .map(|i| format!("{} {}: {}", i.kind, i.name, i.detail.clone().unwrap_or_default()))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(format!("{} objects restored from {}", report.items.len(), id.short()))
    }

    fn running(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError> {
        Ok(self
            .site
            .workloads(&self.selection, prefix)
            .map_err(self.err())?
            .into_iter()
            .filter(|w| w.running)
            .map(|w| format!("{} {}", w.kind, w.name))
            .collect())
    }

    fn remove(&self, prefix: &str) -> Result<Vec<String>, OrchestratorError> {
        self.site.remove_prefixed(prefix).map(describe).map_err(self.err())
    }

    fn workloads(&self) -> Result<Vec<lifeboat_docker::Workload>, OrchestratorError> {
        self.site.workloads(&self.selection, None).map_err(self.err())
    }

    fn has_image(&self, image: &str) -> Result<bool, OrchestratorError> {
        self.site.image_exists(image).map_err(self.err())
    }

    fn capacity(&self) -> Result<(f64, u64), OrchestratorError> {
        self.site.capacity().map_err(self.err())
    }

    fn exec(&self, container: &str, command: &[String], timeout: Duration) -> Result<(i64, String), OrchestratorError> {
        let out = self
            .site
            .exec(container, command.to_vec(), timeout)
            .map_err(self.err())?;
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        // The end of the output says most about a failure.
        let start = text.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
        Ok((out.exit_code, text[start..].to_string()))
    }

    fn definitions(&self) -> Result<Capture, OrchestratorError> {
        self.site.capture(&self.selection).map_err(self.err())
    }

    fn apply_definitions(
        &self,
        repo: &Repository,
        mut defs: Capture,
        here: &Capture,
        workloads: &BTreeSet<String>,
    ) -> Result<Vec<String>, OrchestratorError> {
        defs.containers
            .retain(|n, _| workloads.contains(&format!("containers/{n}")));
        defs.services
            .retain(|n, _| workloads.contains(&format!("services/{n}")));
        defs.networks.retain(|n, _| !here.networks.contains_key(n));
        defs.volumes.retain(|n, _| !here.volumes.contains_key(n));
        defs.configs.retain(|n, _| !here.configs.contains_key(n));
        // Secret values cannot be read from a live engine; node labels belong to each site.
        defs.secrets.clear();
        defs.nodes.clear();
        let stored = lifeboat_docker::restore::Stored {
            capture: defs,
            secret_values: Default::default(),
            volume_data: Default::default(),
        };
        let opts = RestoreOptions {
            replicas: Some(0),
            existing: Existing::Update,
            no_volume_data: true,
            ..Default::default()
        };
        let report = lifeboat_docker::restore(repo, &self.site, &stored, &opts).map_err(self.err())?;
        let mut done = Vec::new();
        for i in report.items {
            let line = format!("{} {} {}", i.action, i.kind, i.name);
            if i.status == "failed" {
                return Err(OrchestratorError::Site {
                    site: self.name.clone(),
                    reason: format!("{line} failed: {}", i.detail.unwrap_or_default()),
                });
            }
            done.push(line);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drift_names_what_is_missing_different_and_extra_on_the_standby() {
        let active: BTreeMap<String, Value> = [
            ("containers/web".to_string(), json!({"Config": {"Env": ["A=1"]}})),
            ("containers/db".to_string(), json!({"Config": {"Env": []}})),
            ("containers/new".to_string(), json!({})),
        ]
        .into();
        let standby: BTreeMap<String, Value> = [
            ("containers/web".to_string(), json!({"Config": {"Env": ["A=2"]}})),
            ("containers/db".to_string(), json!({"Config": {"Env": []}})),
            ("containers/old".to_string(), json!({})),
        ]
        .into();
        let d = drift(&active, &standby);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(
            d[0],
            Drift::Missing {
                object: "containers/new".into()
            }
        );
        match &d[1] {
            Drift::Differs { object, fields } => {
                assert_eq!(object, "containers/web");
                assert!(fields.iter().any(|f| f.contains("Env")), "{fields:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d[2],
            Drift::Extra {
                object: "containers/old".into()
            }
        );
        assert!(drift(&active, &active).is_empty());
    }
}
