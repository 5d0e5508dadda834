//! What the orchestrator asks of a site: the [`SiteKind`] registry (one entry per platform:
//! connecting, its preflight checks, its runbook commands, what the plan's section says about its
//! endpoints) and, per app, the [`Platform`] trait; the Docker ([`docker`]) and Kubernetes
//! ([`kube`]) implementations; and the drift between two sites' [`Definitions`].
//!
//! A third platform is one module here that implements [`SiteKind`] and [`Platform`], one line in
//! [`KINDS`], and its section of a plan's `sites` in `lifeboat-plan` (a `Site` variant with its
//! validation, which the plan crate owns because it parses plans without knowing the platforms).
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::{App, Plan, Site};
use lifeboat_repo::Repository;
use serde_json::Value;
use time::OffsetDateTime;

use crate::check::CheckResult;
use crate::OrchestratorError;

mod docker;
mod kube;

pub(crate) use docker::filters as docker_filters;
pub use docker::selection;

/// One kind of site (a platform), as the orchestrator knows it: everything that differs between
/// Docker and Kubernetes outside the [`Platform`] calls. Registered once, in [`KINDS`].
pub trait SiteKind: Send + Sync {
    /// The key of its section in a plan's site (`docker`, `kubernetes`); what [`Site::kind`]
    /// answers for the sites it serves.
    fn name(&self) -> &'static str;
    /// How the runbook names it ("Docker") and where its endpoint is, in words.
    fn describe(&self, site: &Site) -> (&'static str, String);
    /// Opens `site` (named `name` in the plan) for `app`. [`OrchestratorError::Unreachable`] when
    /// it cannot be reached.
    fn connect(&self, name: &str, site: &Site, app: &App) -> Result<Arc<dyn Platform>, OrchestratorError>;
    /// The hosts its control endpoints name in the plan besides the site's `address` (compared as
    /// written, never resolved), for the repository's failure-domain check.
    fn endpoint_hosts(&self, site: &Site) -> Vec<String>;
    /// Whether its control endpoint is on this host (a local socket).
    fn on_this_host(&self, site: &Site) -> bool;
    /// The preflight checks only this kind has, for `app` on its site `name`, reached as `p`.
    fn checks(&self, app: &App, name: &str, site: &Site, p: &dyn Platform) -> Vec<CheckResult>;
    /// The runbook's commands by hand for `app` on `site`.
    fn hand(&self, app: &App, site: &Site) -> Box<dyn HandCommands>;
}

/// What the runbook tells an operator to type for one app on one site.
pub trait HandCommands {
    /// The command that stops the app here, so it cannot write (`grace`: seconds to stop).
    fn fence(&self, grace: Option<u64>) -> String;
    /// The command that starts the app here.
    fn start(&self) -> String;
    /// What `lifeboat restore ... --to` takes for this site.
    fn restore_to(&self) -> String;
    /// A plan hook run by hand.
    fn exec(&self, container: &str, command: &str) -> String;
    /// A backup of the app here with the plan's tags.
    fn backup(&self, plan: &str, app: &str) -> String;
}

/// Every site kind, once.
pub static KINDS: [&dyn SiteKind; 2] = [&docker::DockerKind, &kube::KubeKind];

/// The kind of `site`.
pub fn kind(site: &Site) -> &'static dyn SiteKind {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name() == site.kind())
        .unwrap_or_else(|| panic!("no site kind {:?} in platform::KINDS", site.kind()))
}

/// One workload of an app (a container, service, Deployment or StatefulSet), as a preflight
/// sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `KIND NAME` as the site names it.
    pub name: String,
    pub running: bool,
    pub images: Vec<String>,
    /// CPU (cores) and memory (bytes) it asks for, over all its replicas; 0 when unknown.
    pub cpus: f64,
    pub memory: u64,
}

/// An app's definitions on one site as its engine reports them now (no volume data, no secret
/// values): their essence, which every kind gives in one form, and the platform's own form, which
/// only the same kind's [`Platform::apply_definitions`] reads back.
#[derive(Clone)]
pub struct Definitions {
    essence: BTreeMap<String, Value>,
    native: Arc<dyn Any + Send + Sync>,
}

impl Definitions {
    /// Definitions of `essence` ("KIND/NAME" to its settings) and the platform's own `native` form.
    pub fn new<T: Any + Send + Sync>(essence: BTreeMap<String, Value>, native: T) -> Definitions {
        Definitions {
            essence,
            native: Arc::new(native),
        }
    }

    /// What a user chose of each object ("KIND/NAME" to its settings), for [`drift`]: without what
    /// differs by design between an active site and a hot standby (running, replicas) and what
    /// each cluster or engine assigns itself.
    pub fn essence(&self) -> &BTreeMap<String, Value> {
        &self.essence
    }

    /// The platform's own form, if it is a `T`.
    pub fn native<T: Any>(&self) -> Option<&T> {
        self.native.downcast_ref()
    }
}

impl std::fmt::Debug for Definitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Definitions")
            .field("objects", &self.essence.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A running or stopped copy of an app on one site.
///
/// `prefix` names an isolated copy (a drill's): on Docker, objects whose names start with it; on
/// Kubernetes, the app's namespaces with it in front.
pub trait Platform: Send + Sync {
    /// Backs the app up; the snapshot's id and time.
    fn backup(
        &self,
        repo: &Repository,
        tags: Vec<String>,
    ) -> Result<(lifeboat_model::Id, OffsetDateTime), OrchestratorError>;
    /// Stops the app's workloads (under `prefix`, or the production ones), so that they stay
    /// stopped when the site restarts (Docker: restart policies cleared), and returns only once
    /// they stopped: an error when that cannot be confirmed. Idempotent.
    fn stop(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError>;
    /// Starts them. Idempotent.
    fn start(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError>;
    /// The restart policies of the app's production workloads that restart on their own
    /// (container name to policy), which [`Platform::stop`] clears so that a fence survives the
    /// site's restart. Docker only; none elsewhere.
    fn restart_policies(&self) -> Result<BTreeMap<String, String>, OrchestratorError> {
        Ok(BTreeMap::new())
    }
    /// Gives workloads back the policies [`Platform::restart_policies`] reported. One line each.
    fn set_restart_policies(&self, policies: &BTreeMap<String, String>) -> Result<Vec<String>, OrchestratorError> {
        let _ = policies;
        Ok(Vec::new())
    }
    /// Restores `snapshot` here with nothing started, replacing what exists (idempotent), under
    /// `prefix` (empty: the production names). `base`: the snapshot the site is known to hold
    /// now, if any (a hot standby's last staging); a platform may then write only what changed
    /// (Kubernetes does for claims; Docker writes everything). A summary.
    fn stage(
        &self,
        repo: &Repository,
        snapshot: &str,
        prefix: &str,
        base: Option<&str>,
    ) -> Result<String, OrchestratorError>;
    /// Names of the app's workloads (under `prefix`) that run now.
    fn running(&self, prefix: Option<&str>) -> Result<Vec<String>, OrchestratorError>;
    /// Removes everything made under `prefix` (never empty).
    fn remove(&self, prefix: &str) -> Result<Vec<String>, OrchestratorError>;
    /// The app's production workloads here.
    fn workloads(&self) -> Result<Vec<Workload>, OrchestratorError>;
    /// Whether an image is present here.
    fn has_image(&self, image: &str) -> Result<bool, OrchestratorError>;
    /// CPUs and memory (bytes) of the site.
    fn capacity(&self) -> Result<(f64, u64), OrchestratorError>;
    /// Runs `command` (no shell) in the running container `container` (Docker: its name;
    /// Kubernetes: `NAMESPACE/POD-OR-WORKLOAD[/CONTAINER]`); its exit code and the end of its
    /// output. Gives up after `timeout` (the command may go on in the container).
    fn exec(&self, container: &str, command: &[String], timeout: Duration) -> Result<(i64, String), OrchestratorError>;
    /// The app's definitions here, as the engine reports them now.
    fn definitions(&self) -> Result<Definitions, OrchestratorError>;
    /// Creates or replaces, from `defs` (another site's [`Platform::definitions`]), the objects
    /// named in `objects` ("KIND/NAME" keys of [`Definitions::essence`]) with nothing started,
    /// and (Docker) creates the networks, volumes and configs of `defs` that are missing here
    /// (`here`: this site's definitions, taken just before). Existing volumes and their data are
    /// left as they are; secrets are not written (their values are never read live). What was
    /// done, one line per object.
    fn apply_definitions(
        &self,
        repo: &Repository,
        defs: Definitions,
        here: &Definitions,
        objects: &BTreeSet<String>,
    ) -> Result<Vec<String>, OrchestratorError>;
}

/// The end of a command's output (stderr, else stdout): what says most about a failure.
fn output_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(stdout).trim().to_string();
    }
    let start = text.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
    text[start..].to_string()
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
            Some(w) => {
                // Different as `compare` sees it: an empty map or list is the same as none (a
                // hold that was undone may leave `Labels: {}` where the owner wrote nothing).
                let mut f = Vec::new();
                lifeboat_docker::diff::compare("", v, w, &mut f);
                if !f.is_empty() {
                    out.push(Drift::Differs {
                        object: k.clone(),
                        fields: f.into_iter().take(5).map(|c| c.path).collect(),
                    });
                }
            }
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

/// The connector for real sites: each site opened by its kind.
pub fn connector(plan: &Plan) -> Arc<Connector> {
    let sites = plan.sites.clone();
    Arc::new(move |name: &str, app: &App| {
        let site = sites.get(name).ok_or_else(|| OrchestratorError::Refused {
            reason: format!("no site {name:?} in the plan"),
        })?;
        kind(site).connect(name, site, app)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_of_plan_site_is_registered_once() {
        let sites = [
            Site::Docker {
                host: None,
                address: None,
                tls: None,
                insecure: false,
            },
            Site::Kubernetes {
                kubeconfig: None,
                context: None,
                address: None,
                helper_image: None,
            },
        ];
        for s in &sites {
            assert_eq!(kind(s).name(), s.kind());
        }
        let names: BTreeSet<&str> = KINDS.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), KINDS.len(), "a kind registered twice");
        assert_eq!(names.len(), sites.len(), "a registered kind no plan site has");
    }

    #[test]
    fn definitions_give_back_only_their_own_platforms_form() {
        let defs = Definitions::new(BTreeMap::new(), vec![json!({"kind": "Deployment"})]);
        assert!(defs.native::<Vec<Value>>().is_some());
        assert!(defs.native::<lifeboat_docker::Capture>().is_none());
    }

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

    #[test]
    fn a_global_service_released_with_empty_labels_does_not_drift() {
        // The regression: `Labels: {}` left by an undone hold against an owner's spec without
        // labels was reported as "differs ()", with no field to show.
        let active: BTreeMap<String, Value> = [(
            "services/agent".to_string(),
            json!({"Spec": {"Name": "agent", "Mode": {"Global": {}}}}),
        )]
        .into();
        let standby: BTreeMap<String, Value> = [(
            "services/agent".to_string(),
            json!({"Spec": {"Name": "agent", "Labels": {}, "Mode": {"Global": {}}}}),
        )]
        .into();
        assert_eq!(drift(&active, &standby), Vec::new());
    }
}
