//! The watch's trigger: a failover of an app when its probes and the witness agree that it is
//! down, and the resumption of an operation a process left unfinished.
use std::sync::Arc;

use lifeboat_orchestrator::journal::Kind;
use lifeboat_orchestrator::ops::{self, Options, Outcome};
use lifeboat_orchestrator::report;
use lifeboat_orchestrator::watch::{BoxFuture, Trigger, TriggerError};
use lifeboat_orchestrator::Retry;
use time::OffsetDateTime;

use crate::active::ActiveSites;
use crate::Server;

/// Failovers and resumptions run on the blocking pool with the server's sites and routers; their
/// step lines go out as [`crate::Event::Progress`].
pub struct Failover(pub Arc<Server>);

impl Failover {
    fn switch(&self, app: String, kind: Option<Kind>, opts: Options) -> BoxFuture<'_, Result<String, TriggerError>> {
        let server = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                server.with_env(true, |env| {
                    let kind = match kind {
                        Some(k) => k,
                        None => unfinished(&server, &app).ok_or_else(|| TriggerError {
                            error: "no unfinished operation".into(),
                            retry: Retry::Later,
                        })?,
                    };
                    match ops::switch_over(env, &app, kind, &opts) {
                        Ok(Outcome::Done(op)) => Ok(report::timeline_text(&op)),
                        Ok(Outcome::AlreadyThere { site, .. }) => Ok(format!("already on {site}")),
                        Err(e) => Err(e.into()),
                    }
                })
            })
            .await
            .map_err(|e| TriggerError {
                error: e.to_string(),
                retry: Retry::Later,
            })?
        })
    }
}

/// The kind of the app's unfinished operation, if its state names one that can be read.
fn unfinished(server: &Server, app: &str) -> Option<Kind> {
    let st = ActiveSites::store(&server.repo, &server.plan, app);
    let id = st.state().ok()?.running?;
    st.operation(&id).ok().flatten().map(|op| op.kind)
}

impl Trigger for Failover {
    fn failover(
        &self,
        app: &str,
        first_failure: OffsetDateTime,
        detected: OffsetDateTime,
    ) -> BoxFuture<'_, Result<String, TriggerError>> {
        let opts = Options {
            trigger: Some(first_failure),
            detected: Some(detected),
            reason: "health".into(),
            ..Default::default()
        };
        self.switch(app.to_string(), Some(Kind::Failover), opts)
    }

    fn unfinished(&self, app: &str) -> BoxFuture<'_, Option<Kind>> {
        let (server, app) = (self.0.clone(), app.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || unfinished(&server, &app))
                .await
                .ok()
                .flatten()
        })
    }

    fn resume(&self, app: &str) -> BoxFuture<'_, Result<String, TriggerError>> {
        let opts = Options {
            reason: "health".into(),
            ..Default::default()
        };
        self.switch(app.to_string(), None, opts)
    }
}
