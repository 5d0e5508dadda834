//! The probe steps that operations and drills share: wait until healthy, verify.
use std::time::{Duration, Instant};

use lifeboat_plan::App;

use crate::journal::StepOutcome;
use crate::{probe, OrchestratorError};

/// Probes until every probe passed `success_threshold` times in a row (that of the first probe).
pub(super) fn wait_healthy(
    app: &App,
    address: &str,
    limit: Duration,
) -> Result<(StepOutcome, String), OrchestratorError> {
    let Some(first) = app.health.first() else {
        return Ok((
            StepOutcome::Skipped,
            "the plan has no health probes for this app".into(),
        ));
    };
    let need = first.success_threshold.value.max(1);
    let every = first.interval.value.0.min(Duration::from_secs(1));
    let start = Instant::now();
    let mut streak = 0;
    let mut last = String::new();
    loop {
        let t = Instant::now();
        match probe::healthy(app, address) {
            Ok(()) => {
                streak += 1;
                if streak >= need {
                    return Ok((
                        StepOutcome::Done,
                        format!(
                            "healthy after {:.1} s ({need} passing probe rounds)",
                            start.elapsed().as_secs_f64()
                        ),
                    ));
                }
            }
            Err(e) => {
                streak = 0;
                last = e;
            }
        }
        if start.elapsed() >= limit {
            return Err(OrchestratorError::Unhealthy {
                app: app.name.value.clone(),
                address: address.to_string(),
                waited: limit,
                last,
            });
        }
        // Probe faster than the plan's interval while waiting: the RTO is measured here.
        std::thread::sleep(every.min(Duration::from_millis(250)).saturating_sub(t.elapsed()));
    }
}

pub(super) fn verify_step(app: &App, address: &str) -> Result<(StepOutcome, String), OrchestratorError> {
    if app.verify.is_empty() {
        return Ok((
            StepOutcome::Skipped,
            "the plan has no verify checks for this app".into(),
        ));
    }
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for c in &app.verify {
        match probe::verify(c, address) {
            Ok(s) => seen.push(s),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok((StepOutcome::Done, seen.join("; ")))
    } else {
        Err(OrchestratorError::Verify {
            app: app.name.value.clone(),
            failures: failed,
        })
    }
}
