//! The fence: what counts as evidence that a site is off, and stopping a site for good.
use std::sync::Arc;
use std::time::Duration;

use lifeboat_plan::App;

use super::runner::Runner;
use super::{store, summary, Env};
use crate::journal::{AppState, Kind, Step, Store};
use crate::platform::Platform;
use crate::OrchestratorError;

/// What the witness says about `site` now, when the plan has one: [`WitnessSays::Agrees`] carries
/// the report that agrees, as a line for the journal.
pub(super) enum WitnessSays {
    Agrees(String),
    Not(String),
    /// The serve instances' quorum does not confirm a self-fence: why.
    QuorumNot(String),
}

pub(super) fn witness_verdict(env: &Env, app: &App, site: &str) -> Option<WitnessSays> {
    use crate::watch::{Freshness, Verdict, WitnessReport};
    let rule = env.plan.witness.as_ref()?;
    let st = store(env, app);
    // Fresh means: seen to change on this process's clock within max_age (the witness writes a
    // report every probe interval). So read until the report changes, for up to max_age.
    let mut freshness = Freshness::default();
    let started = std::time::Instant::now();
    (env.log)(&format!(
        "fence: waiting for a new report of the witness (up to {:?})",
        rule.max_age.0
    ));
    let (report, ago) = loop {
        let report = match st.witness_report() {
            Ok(r) => r,
            Err(e) => return Some(WitnessSays::Not(format!("the witness's report cannot be read: {e}"))),
        };
        let ago = freshness.observe(report.as_ref(), std::time::Instant::now());
        if ago.is_some() || started.elapsed() > rule.max_age.0 {
            break (report, ago);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    Some(
        match WitnessReport::verdict(report.as_ref(), site, ago, rule.max_age.0) {
            Verdict::Agrees => {
                let r = report.expect("a verdict that agrees has a report");
                WitnessSays::Agrees(format!(
                    "report {} (witness clock {}): {} failed probes in a row{}",
                    r.sequence,
                    r.time
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    r.failures,
                    r.error.map(|e| format!(", last: {e}")).unwrap_or_default()
                ))
            }
            Verdict::Disagrees(why) | Verdict::Silent(why) => WitnessSays::Not(why),
        },
    )
}

/// The error of a fence that is not confirmed: what failed, that nothing changed, how to go on.
pub(super) fn unconfirmed(
    kind: Kind,
    from: &str,
    to: &str,
    failure: &OrchestratorError,
    witness: Option<WitnessSays>,
) -> OrchestratorError {
    let witness = match witness {
        None => "the plan has no witness".to_string(),
        Some(WitnessSays::Not(why)) | Some(WitnessSays::Agrees(why)) => {
            format!("the witness does not confirm it: {why}")
        }
        Some(WitnessSays::QuorumNot(why)) => format!("the serve instances do not confirm it: {why}"),
    };
    let cause = match failure {
        OrchestratorError::Unreachable { .. } => format!(
            "{from} cannot be reached, which does not show that it stopped (a hung engine or a partition leaves \
             the app running) and {witness}"
        ),
        OrchestratorError::Access { .. } => format!(
            "{from} answers but cannot be used (fix the plan's address or credentials for {from}, then run the {} again)",
            kind.as_str()
        ),
        _ => format!("stopping the app on {from} was not confirmed"),
    };
    OrchestratorError::Refused {
        reason: format!(
            "{from} is not fenced: {failure}. {cause}. Nothing was started on {to}. If {from} is really off, make \
             sure it stays off (power it off, or cut it from the network and its storage), then run `lifeboat {} PLAN \
             --fenced-by-hand {from}`",
            kind.as_str(),
        ),
    }
}

/// On a resume whose fence finished before: a fenced side that runs the app again (started by
/// hand, by an orchestrator, by a restart Lifeboat did not hold) is stopped again before the
/// operation goes on, as Pacemaker fences a node that rejoins with resources. A side that cannot
/// be reached now keeps the evidence it was fenced on. What was found and done is added to the
/// fence step's record.
pub(super) fn refence_on_resume(
    st: &Store,
    state: &mut AppState,
    run: &mut Runner,
    env: &Env,
    app: &App,
    from: &str,
    source: &mut Option<Arc<dyn Platform>>,
) -> Result<(), OrchestratorError> {
    let Ok(p) = (env.connect)(from, app) else {
        return Ok(());
    };
    let live = p.running(None)?;
    if !live.is_empty() {
        let changes = hold_and_stop(st, state, &*p, from).map_err(|e| OrchestratorError::Step {
            kind: run.op.kind.as_str(),
            app: run.op.app.clone(),
            step: "fence".into(),
            id: run.op.id.clone(),
            cause: Box::new(OrchestratorError::Site {
                site: from.to_string(),
                retry: e.retry(),
                source: format!("runs the app again ({}) and cannot be stopped: {e}", live.join(", ")).into(),
            }),
        })?;
        let line = summary(
            &format!(
                "on resume, {from} ran the app again ({}): fenced again",
                live.join(", ")
            ),
            &changes,
        );
        (env.log)(&format!("fence: {line}"));
        if let Some(rec) = run.op.steps.iter_mut().find(|s| s.name == Step::Fence) {
            rec.detail = format!("{}; {line}", rec.detail);
        }
        st.save_operation(&run.op)?;
    }
    *source = Some(p);
    Ok(())
}

/// The self-fence of a `serve` instance cut off from the quorum: stops `app` on `site` (where
/// the instance runs and the app may be active) without asking any leadership, since the others
/// may start it elsewhere once this instance's lease ends. The restart policies are read from the
/// site before the stop and recorded in the app's state after it, so a repository that does not
/// answer never delays the stop; when they cannot be recorded, the line says so. A line for the log.
pub fn self_fence(env: &Env, app: &str, site: &str) -> Result<String, OrchestratorError> {
    let a = env.plan.app(app).ok_or_else(|| OrchestratorError::Refused {
        reason: format!("no app {app}"),
    })?;
    let p = (env.connect)(site, a)?;
    let policies = p.restart_policies()?;
    let changes = p.stop(None)?;
    let mut line = summary(&format!("{app} stopped on {site}"), &changes);
    let st = store(env, a);
    let recorded = st.state().and_then(|mut state| {
        if merge_policies(&mut state, site, policies) {
            st.save_state(&state)?;
        }
        Ok(())
    });
    if let Err(e) = recorded {
        line += &format!(" (its restart policies were not recorded: {e}; a failback starts it without them)");
    }
    Ok(line)
}

/// Stops the app on `site` for good: its restart policies are recorded in `state` (saved) first,
/// then cleared by the stop. A policy recorded earlier is never overwritten by the "none" that a
/// second stop sees.
pub(crate) fn hold_and_stop(
    st: &Store,
    state: &mut AppState,
    platform: &dyn Platform,
    site: &str,
) -> Result<Vec<String>, OrchestratorError> {
    hold(st, state, platform, site)?;
    platform.stop(None)
}

/// Records the restart policies of the app on `site` in `state` (saved), keeping any recorded
/// before.
fn hold(st: &Store, state: &mut AppState, platform: &dyn Platform, site: &str) -> Result<(), OrchestratorError> {
    if merge_policies(state, site, platform.restart_policies()?) {
        st.save_state(state)?;
    }
    Ok(())
}

/// Adds `policies` of `site` to `state`, never overwriting one recorded before (a second stop
/// sees "none"); whether the state must be saved.
fn merge_policies(state: &mut AppState, site: &str, policies: std::collections::BTreeMap<String, String>) -> bool {
    if policies.is_empty() {
        return false;
    }
    let held = state.restart_policies.entry(site.to_string()).or_default();
    let before = held.len();
    for (name, policy) in policies {
        held.entry(name).or_insert(policy);
    }
    held.len() != before || before == 0
}
