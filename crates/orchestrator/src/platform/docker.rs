//! The Docker [`Platform`]: an app's containers and services on one engine or Swarm, selected by
//! labels and/or a stack.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_docker::{Capture, Existing, RestoreOptions, Selection, Site as DockerSite};
use lifeboat_plan::{App, Site};
use lifeboat_repo::Repository;
use serde_json::Value;
use time::OffsetDateTime;

use super::{Definitions, HandCommands, Platform, SiteKind, Workload};
use crate::check::CheckResult;
use crate::OrchestratorError;

/// Docker engines and Swarms (`sites.NAME.docker`).
pub(super) struct DockerKind;

impl SiteKind for DockerKind {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn describe(&self, site: &Site) -> (&'static str, String) {
        let host = match site {
            Site::Docker { host, .. } => host.clone(),
            _ => None,
        };
        ("Docker", host.unwrap_or_else(|| "local socket".into()))
    }

    fn connect(&self, name: &str, site: &Site, app: &App) -> Result<Arc<dyn Platform>, OrchestratorError> {
        let Site::Docker {
            host, tls, insecure, ..
        } = site
        else {
            return Err(wrong_kind(name));
        };
        connect(
            name,
            host.as_deref(),
            &transport(host.is_some(), tls.as_ref(), *insecure),
            app,
        )
    }

    fn endpoint_hosts(&self, site: &Site) -> Vec<String> {
        let Site::Docker { host: Some(h), .. } = site else {
            return Vec::new();
        };
        let Some(rest) = h.strip_prefix("tcp://").or_else(|| h.strip_prefix("ssh://")) else {
            return Vec::new();
        };
        let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        vec![rest.rsplit_once(':').map_or(rest, |(h, _)| h).to_string()]
    }

    fn on_this_host(&self, site: &Site) -> bool {
        matches!(site, Site::Docker { host: Some(h), .. } if h.starts_with("unix://"))
    }

    fn checks(&self, _: &App, _: &str, _: &Site, _: &dyn Platform) -> Vec<CheckResult> {
        Vec::new()
    }

    fn hand(&self, app: &App, site: &Site) -> Box<dyn HandCommands> {
        let host = match site {
            Site::Docker { host, .. } => host.clone(),
            _ => None,
        };
        Box::new(Hand {
            host: host.as_ref().map(|h| format!("-H {h} ")).unwrap_or_default(),
            filters: filters(app),
            target: host.unwrap_or_default(),
        })
    }
}

fn wrong_kind(name: &str) -> OrchestratorError {
    OrchestratorError::Refused {
        reason: format!("site {name} is not a Docker site"),
    }
}

/// `docker ... --filter` arguments of the app's selection.
pub(crate) fn filters(app: &App) -> String {
    let mut f: Vec<String> = app
        .select
        .labels
        .iter()
        .map(|(k, v)| format!("--filter label={k}={v}"))
        .collect();
    if let Some(s) = &app.select.stack {
        f.push(format!("--filter label=com.docker.stack.namespace={s}"));
    }
    f.join(" ")
}

/// The hand commands of an app on a Docker site.
struct Hand {
    /// `-H HOST ` or nothing.
    host: String,
    /// `--filter ...` of the app's selection.
    filters: String,
    /// What `--to docker:` takes.
    target: String,
}

impl HandCommands for Hand {
    fn fence(&self, grace: Option<u64>) -> String {
        let Hand { host, filters, .. } = self;
        format!(
            "`docker {host}stop {}$(docker {host}ps -q {filters})`",
            grace.map(|g| format!("-t {g} ")).unwrap_or_default()
        )
    }

    fn start(&self) -> String {
        let Hand { host, filters, .. } = self;
        format!("`docker {host}start $(docker {host}ps -aq {filters})`")
    }

    fn restore_to(&self) -> String {
        format!("docker:{}", self.target)
    }

    fn exec(&self, container: &str, command: &str) -> String {
        format!("`docker {}exec {container} {command}`", self.host)
    }

    fn backup(&self, plan: &str, app: &str) -> String {
        format!(
            "`lifeboat backup docker {}--label ...` with the selection above, tags `plan={plan}` and `app={app}`",
            if self.target.is_empty() {
                String::new()
            } else {
                format!("--host {} ", self.target)
            }
        )
    }
}

/// The Docker selection of an app: its labels and stack.
pub fn selection(app: &App) -> Selection {
    Selection {
        labels: app.select.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        stack: app.select.stack.clone(),
    }
}

/// How to reach a site's engine: the plan's `tls`/`insecure`; for a site without a `host`
/// (`DOCKER_HOST`), the environment's `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` unless the plan says.
pub(super) fn transport(
    has_host: bool,
    tls: Option<&lifeboat_plan::DockerTls>,
    insecure: bool,
) -> lifeboat_docker::Transport {
    if !has_host && tls.is_none() && !insecure {
        return lifeboat_docker::Transport::from_env();
    }
    lifeboat_docker::Transport {
        tls: tls.map(|t| lifeboat_docker::TlsFiles {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
        insecure,
    }
}

/// Connects to the engine of site `name` (`host`: default `DOCKER_HOST` or the local socket).
pub(super) fn connect(
    name: &str,
    host: Option<&str>,
    transport: &lifeboat_docker::Transport,
    app: &App,
) -> Result<std::sync::Arc<dyn Platform>, OrchestratorError> {
    let host = host.map(str::to_string).unwrap_or_else(lifeboat_docker::default_host);
    let site = DockerSite::connect(&host, transport).map_err(|e| connect_error(name, e))?;
    Ok(std::sync::Arc::new(Docker {
        name: name.to_string(),
        site,
        selection: selection(app),
        stop_grace: app.stop_grace.map(|g| g.0),
    }))
}

/// A failed connection as the orchestrator reads it: only [`lifeboat_docker::DockerError::Unreachable`]
/// is "cannot be reached"; an address or handshake problem is [`OrchestratorError::Access`].
pub(super) fn connect_error(site: &str, e: lifeboat_docker::DockerError) -> OrchestratorError {
    match e {
        lifeboat_docker::DockerError::Unreachable { reason, .. } => OrchestratorError::Unreachable {
            site: site.to_string(),
            source: reason.into(),
        },
        lifeboat_docker::DockerError::Access { problem, host, reason } => OrchestratorError::Access {
            site: site.to_string(),
            problem,
            source: format!("{host}: {reason}").into(),
        },
        e @ lifeboat_docker::DockerError::Transport { .. } => OrchestratorError::Access {
            site: site.to_string(),
            problem: lifeboat_model::reach::AccessProblem::Config,
            source: Box::new(e),
        },
        e => OrchestratorError::Access {
            site: site.to_string(),
            problem: lifeboat_model::reach::AccessProblem::Protocol,
            source: Box::new(e),
        },
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
                source: reason.into(),
            },
            e => OrchestratorError::Site {
                site: self.name.clone(),
                retry: e.retry(),
                source: Box::new(e),
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
    fn backup(
        &self,
        repo: &Repository,
        tags: Vec<String>,
    ) -> Result<(lifeboat_model::Id, OffsetDateTime), OrchestratorError> {
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
                retry: lifeboat_model::Retry::Later,
                source: format!(
                    "backup {} is incomplete: {e} ({} problems)",
                    out.snapshot_id.short(),
                    out.capture.manifest.errors.len()
                )
                .into(),
            });
        }
        Ok((out.snapshot_id, out.snapshot.time))
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

    fn restart_policies(&self) -> Result<std::collections::BTreeMap<String, String>, OrchestratorError> {
        self.site.restart_policies(&self.selection, None).map_err(self.err())
    }

    fn set_restart_policies(
        &self,
        policies: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<String>, OrchestratorError> {
        self.site
            .set_restart_policies(policies)
            .map(describe)
            .map_err(self.err())
    }

    fn stage(
        &self,
        repo: &Repository,
        snapshot: &str,
        prefix: &str,
        _base: Option<&str>,
    ) -> Result<String, OrchestratorError> {
        let _lock = repo
            .lock(false, "restore (DR)", std::time::Duration::from_secs(60))
            .map_err(OrchestratorError::Repo)?;
        let (id, snap) = repo.find_snapshot(snapshot)?;
        let stored = lifeboat_docker::restore::load(repo, &id.to_hex(), &snap.tree).map_err(self.err())?;
        let opts = RestoreOptions {
            replicas: Some(0),
            name_prefix: prefix.to_string(),
            existing: Existing::Update,
            // A drill's copy (the only prefixed stage) is cut off from the network.
            isolate: !prefix.is_empty(),
            ..Default::default()
        };
        let report = lifeboat_docker::restore(repo, &self.site, &stored, &opts).map_err(self.err())?;
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
                        .map(|i| format!("{} {}: {}", i.kind, i.name, i.detail.clone().unwrap_or_default()))
                        .unwrap_or_default()
                )
                .into(),
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

    fn workloads(&self) -> Result<Vec<Workload>, OrchestratorError> {
        Ok(self
            .site
            .workloads(&self.selection, None)
            .map_err(self.err())?
            .into_iter()
            .map(|w| Workload {
                name: format!("{} {}", w.kind, w.name),
                running: w.running,
                images: vec![w.image],
                cpus: w.cpus,
                memory: w.memory,
            })
            .collect())
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
        Ok((out.exit_code, super::output_tail(&out.stdout, &out.stderr)))
    }

    fn definitions(&self) -> Result<Definitions, OrchestratorError> {
        self.site
            .capture(&self.selection)
            .map(|c| Definitions::new(essence(&c), c))
            .map_err(self.err())
    }

    fn apply_definitions(
        &self,
        repo: &Repository,
        defs: Definitions,
        here: &Definitions,
        workloads: &BTreeSet<String>,
    ) -> Result<Vec<String>, OrchestratorError> {
        let (Some(defs), Some(here)) = (defs.native::<Capture>(), here.native::<Capture>()) else {
            return Err(OrchestratorError::Refused {
                reason: format!(
                    "site {}: Docker definitions are needed to change a Docker site",
                    self.name
                ),
            });
        };
        let mut defs = defs.clone();
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
                    retry: lifeboat_model::Retry::AfterFix,
                    source: format!("{line} failed: {}", i.detail.unwrap_or_default()).into(),
                });
            }
            done.push(line);
        }
        Ok(done)
    }
}

/// The essence of Docker definitions (see [`Definitions::essence`]), without prefixed copies (a
/// drill's).
fn essence(defs: &Capture) -> BTreeMap<String, Value> {
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
            if let Some(spec) = e.get_mut("Spec") {
                // A global service held back on a standby differs by design, like replicas.
                if lifeboat_docker::control::held_back(spec) {
                    lifeboat_docker::control::hold_global(spec, false);
                }
                // An empty placement is no placement, whichever way it was written.
                if let Some(p) = spec
                    .pointer_mut("/TaskTemplate/Placement")
                    .and_then(|v| v.as_object_mut())
                {
                    if p.get("Constraints")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                    {
                        p.remove("Constraints");
                    }
                    if p.is_empty() {
                        if let Some(t) = spec.get_mut("TaskTemplate").and_then(|v| v.as_object_mut()) {
                            t.remove("Placement");
                        }
                    }
                }
            }
            if let Some(l) = e.pointer_mut("/Spec/Labels").and_then(|v| v.as_object_mut()) {
                l.remove(lifeboat_docker::control::REPLICAS_LABEL);
            }
            out.insert(format!("{kind}/{name}"), e);
        }
    }
    out
}
