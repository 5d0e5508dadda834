//! The plan's hooks (`hooks:` of an app): commands run in the app's containers before and after
//! `backup --plan`, and after a failover, failback or drill brought the app up.
use lifeboat_plan::{App, Hook, HookOnError};

use crate::platform::Platform;
use crate::OrchestratorError;

/// Runs `hooks` of `phase` in order on `site`, in containers named `prefix` + the hook's container.
/// Returns one line per hook; a failure under `on_error: continue` is one of those lines, a
/// failure under `on_error: fail` stops at that hook with [`OrchestratorError::Hook`].
pub fn run(
    platform: &dyn Platform,
    app: &App,
    site: &str,
    phase: &'static str,
    hooks: &[Hook],
    prefix: &str,
) -> Result<Vec<String>, OrchestratorError> {
    let mut lines = Vec::new();
    for h in hooks {
        let exec = &h.exec.value;
        let container = format!("{prefix}{}", exec.container);
        let failure = match platform.exec(&container, &exec.command, h.timeout.0) {
            Ok((0, _)) => {
                lines.push(format!("{phase} hook in {container}: ok"));
                continue;
            }
            Ok((code, output)) => format!("exit code {code}: {output}"),
            Err(e) => e.to_string(),
        };
        // The hook's output goes into the journal, the reports (plaintext) and the logs: URLs lose
        // their user info and query, secret-looking values are replaced (a database client may
        // echo its connection string).
        let failure = lifeboat_model::redact::redact(&failure);
        match h.on_error {
            HookOnError::Fail => {
                return Err(OrchestratorError::Hook {
                    app: app.name.value.clone(),
                    phase,
                    site: site.to_string(),
                    container,
                    reason: failure,
                })
            }
            HookOnError::Continue => lines.push(format!(
                "{phase} hook in {container} failed (on_error: continue): {failure}"
            )),
        }
    }
    Ok(lines)
}
