//! Where each app is active now, as its journaled state says, read on the blocking pool within
//! [`REPO_DEADLINE`]; and the watch's prober, which probes the app there.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_orchestrator::journal::Store;
use lifeboat_orchestrator::watch::{BoxFuture, Prober};
use lifeboat_orchestrator::{ops, probe};
use lifeboat_plan::Plan;
use lifeboat_repo::Repository;

/// How long a read or write of the repository by the watch or the witness may take before that
/// round counts as "unknown": an S3 stall must not stop all watching. The reads run on the
/// blocking pool; the watch's tasks only wait for them this long.
pub const REPO_DEADLINE: Duration = Duration::from_secs(10);

/// The active site of each app of a plan.
///
/// Guarantees: [`ActiveSites::active`] never answers with the plan's primary by default when the
/// state cannot be read (after a failover that would probe the fenced side): it answers with the
/// site it last read, and with none, an error.
pub struct ActiveSites {
    pub(crate) plan: Arc<Plan>,
    pub(crate) repo: Arc<Repository>,
    /// The active site of each app as last read from its state.
    known: Mutex<HashMap<String, String>>,
}

impl ActiveSites {
    pub fn new(plan: Arc<Plan>, repo: Arc<Repository>) -> ActiveSites {
        ActiveSites {
            plan,
            repo,
            known: Default::default(),
        }
    }

    /// The journal of `app`.
    pub(crate) fn store<'r>(repo: &'r Repository, plan: &Plan, app: &str) -> Store<'r> {
        Store {
            repo,
            plan: plan.metadata.name.clone(),
            app: app.to_string(),
        }
    }

    /// Where `app` was active when its state was last read (no read now).
    pub fn last_known(&self, app: &str) -> Option<String> {
        self.known.lock().unwrap().get(app).cloned()
    }

    /// Where `app` is active: its state's `active` site, the plan's primary while no operation
    /// moved it.
    pub async fn active(self: &Arc<Self>, app: &str) -> Result<String, String> {
        let me = self.clone();
        let name = app.to_string();
        let read = tokio::task::spawn_blocking(move || {
            Self::store(&me.repo, &me.plan, &name).state().map(|s| {
                s.active
                    .unwrap_or_else(|| me.plan.app(&name).map(|a| a.primary.value.clone()).unwrap_or_default())
            })
        });
        let known = || self.known.lock().unwrap().get(app).cloned();
        match tokio::time::timeout(REPO_DEADLINE, read).await {
            Ok(Ok(Ok(site))) => {
                self.known.lock().unwrap().insert(app.to_string(), site.clone());
                Ok(site)
            }
            Ok(Ok(Err(e))) => known().ok_or_else(|| format!("the app's state cannot be read: {e}")),
            Ok(Err(e)) => known().ok_or_else(|| e.to_string()),
            Err(_) => known().ok_or_else(|| format!("the app's state was not read within {REPO_DEADLINE:?}")),
        }
    }
}

/// The watch's prober: the app's health probes at its active site.
pub struct ActiveProbe(pub Arc<ActiveSites>);

impl Prober for ActiveProbe {
    fn probe(&self, app: &str) -> BoxFuture<'_, Result<(), String>> {
        let (sites, app) = (self.0.clone(), app.to_string());
        Box::pin(async move {
            let site = sites.active(&app).await?;
            let plan = sites.plan.clone();
            tokio::task::spawn_blocking(move || {
                let a = plan.app(&app).ok_or("no such app")?;
                let addr = ops::site_address(&plan, &site).map_err(|e| e.to_string())?;
                probe::healthy(a, &addr).map_err(|e| format!("{site}: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}
