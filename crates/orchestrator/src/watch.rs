//! The health watch: probes each app where it is active, judges with hysteresis, and fails over
//! once after `failure_threshold` consecutive failures, never on flapping below it.
//!
//! With a witness rule in the plan, a failover also needs the witness (another `lifeboat watch
//! --witness`, run where it sees the primary by another path) to have reported the primary
//! failing within `max_age`. A silent witness, a stale one, or one that still sees the primary
//! healthy stops the failover: a partition between this watcher and the primary alone never
//! makes two active sites. The witness reports through the repository
//! (`dr/PLAN/APP/witness`), which both can reach.
//!
//! Time comes from tokio's clock, so the logic is tested on a paused clock.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::journal::Kind;
use crate::{OrchestratorError, Retry};

/// A boxed future, for the traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a run of probe results means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No change of judgement.
    None,
    /// `failure_threshold` failures in a row while up.
    WentDown,
    /// `success_threshold` successes in a row while down.
    WentUp,
}

/// Hysteresis over consecutive probe results. Starts up.
#[derive(Debug, Clone)]
pub struct Monitor {
    failure_threshold: u32,
    success_threshold: u32,
    failures: u32,
    successes: u32,
    down: bool,
}

impl Monitor {
    pub fn new(failure_threshold: u32, success_threshold: u32) -> Monitor {
        Monitor {
            failure_threshold: failure_threshold.max(1),
            success_threshold: success_threshold.max(1),
            failures: 0,
            successes: 0,
            down: false,
        }
    }

    /// Takes one probe result.
    pub fn observe(&mut self, ok: bool) -> Transition {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.down && self.successes >= self.success_threshold {
                self.down = false;
                return Transition::WentUp;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if !self.down && self.failures >= self.failure_threshold {
                self.down = true;
                return Transition::WentDown;
            }
        }
        Transition::None
    }

    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// One app as the watch sees it.
#[derive(Debug, Clone)]
pub struct Watched {
    pub app: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

/// Probes an app where it is active now.
pub trait Prober: Send + Sync {
    fn probe(&self, app: &str) -> BoxFuture<'_, Result<(), String>>;
}

/// The witness's opinion.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The witness also sees the primary failing.
    Agrees,
    /// The witness sees the primary healthy (a partition, not a failure).
    Disagrees(String),
    /// No recent report.
    Silent(String),
}

/// Asks the witness.
pub trait Witness: Send + Sync {
    fn verdict(&self, app: &str) -> BoxFuture<'_, Verdict>;
}

/// A failover or resumption that failed: what to log, and whether the next try may succeed
/// without a fix ([`Retry::Later`]: after growing pauses) or not ([`Retry::AfterFix`]: the next
/// try waits [`MAX_RETRY_DELAY`] at once).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerError {
    pub error: String,
    pub retry: Retry,
}

impl From<OrchestratorError> for TriggerError {
    fn from(e: OrchestratorError) -> TriggerError {
        TriggerError {
            retry: e.retry(),
            error: e.to_string(),
        }
    }
}

/// Starts a failover; `first_failure` is when the failing run began, `detected` when the
/// threshold was reached. The result is a line for the log.
pub trait Trigger: Send + Sync {
    fn failover(
        &self,
        app: &str,
        first_failure: OffsetDateTime,
        detected: OffsetDateTime,
    ) -> BoxFuture<'_, Result<String, TriggerError>>;
    /// The kind of the app's unfinished operation, if one is open (a step failed or a process died
    /// in it).
    fn unfinished(&self, app: &str) -> BoxFuture<'_, Option<Kind>>;
    /// Resumes the app's unfinished operation, whatever its kind. A line for the log.
    fn resume(&self, app: &str) -> BoxFuture<'_, Result<String, TriggerError>>;
}

/// The longest pause between two attempts of a failover that keeps failing.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// What the watch reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Failing {
        app: String,
        failures: u32,
        error: String,
    },
    Down {
        app: String,
    },
    Up {
        app: String,
    },
    WitnessRefused {
        app: String,
        why: String,
    },
    FailedOver {
        app: String,
        detail: String,
    },
    FailoverFailed {
        app: String,
        error: String,
    },
    /// An unfinished operation was resumed (whatever the probes say) and finished.
    Resumed {
        app: String,
        kind: Kind,
        detail: String,
    },
}

/// Where an earlier prober of the same app in this process left off (a `serve` instance's own
/// probes, when the instance becomes the leader): its consecutive failures and when the first of
/// them was seen. The default: nothing seen yet.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Seed {
    pub failures: u32,
    pub first_failure: Option<OffsetDateTime>,
}

impl Seed {
    /// Takes in one probe result at `now`.
    pub fn observe(&mut self, ok: bool, now: OffsetDateTime) {
        if ok {
            *self = Seed::default();
        } else {
            self.failures += 1;
            self.first_failure.get_or_insert(now);
        }
    }
}

/// Watches one app until it has failed over (then returns) or forever.
pub async fn watch_app(
    w: Watched,
    prober: Arc<dyn Prober>,
    witness: Option<Arc<dyn Witness>>,
    trigger: Arc<dyn Trigger>,
    events: Arc<dyn Fn(Event) + Send + Sync>,
) {
    watch_app_from(w, Seed::default(), prober, witness, trigger, events).await
}

/// [`watch_app`], starting where `seed` left off: an app already seen failing `failure_threshold`
/// times is down from the first probe on (one more failed probe and a witness that agrees fail it
/// over). While the app fails but is not down yet, the witness is asked too (its answer unused),
/// so that by the threshold it has been seen to report and its verdict counts at once.
pub async fn watch_app_from(
    w: Watched,
    seed: Seed,
    prober: Arc<dyn Prober>,
    witness: Option<Arc<dyn Witness>>,
    trigger: Arc<dyn Trigger>,
    events: Arc<dyn Fn(Event) + Send + Sync>,
) {
    let mut monitor = Monitor::new(w.failure_threshold, w.success_threshold);
    for _ in 0..seed.failures {
        monitor.observe(false);
    }
    if monitor.is_down() {
        events(Event::Down { app: w.app.clone() });
    }
    let mut tick = tokio::time::interval(w.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first_failure = seed.first_failure.filter(|_| seed.failures > 0);
    // After a failed attempt, the next waits (doubling up to MAX_RETRY_DELAY).
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    let wait_retry = |retry: &Option<(tokio::time::Instant, Duration)>| {
        retry.is_some_and(|(at, _)| tokio::time::Instant::now() < at)
    };
    let failed = |retry: &mut Option<(tokio::time::Instant, Duration)>, class: Retry| {
        let delay = match (*retry, class) {
            (_, Retry::AfterFix) => MAX_RETRY_DELAY,
            (None, Retry::Later) => w.interval,
            (Some((_, d)), Retry::Later) => (d * 2).min(MAX_RETRY_DELAY),
        };
        *retry = Some((tokio::time::Instant::now() + delay, delay));
    };
    loop {
        tick.tick().await;
        // An open operation is driven to its end first, whatever the probes of the active site
        // say: half a failover (the standby started, traffic not moved) must not stay so because
        // the primary answers again.
        if let Some(kind) = trigger.unfinished(&w.app).await {
            if wait_retry(&retry) {
                continue;
            }
            match trigger.resume(&w.app).await {
                Ok(detail) => {
                    retry = None;
                    events(Event::Resumed {
                        app: w.app.clone(),
                        kind,
                        detail,
                    });
                    if kind == Kind::Failover {
                        return;
                    }
                    monitor = Monitor::new(w.failure_threshold, w.success_threshold);
                    first_failure = None;
                }
                Err(e) => {
                    failed(&mut retry, e.retry);
                    events(Event::FailoverFailed {
                        app: w.app.clone(),
                        error: e.error,
                    });
                }
            }
            continue;
        }
        let result = match tokio::time::timeout(w.timeout, prober.probe(&w.app)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", w.timeout)),
        };
        let ok = result.is_ok();
        if !ok && first_failure.is_none() {
            first_failure = Some(OffsetDateTime::now_utc());
        }
        if ok && !monitor.is_down() {
            first_failure = None;
        }
        let t = monitor.observe(ok);
        if let Err(error) = &result {
            events(Event::Failing {
                app: w.app.clone(),
                failures: monitor.failures(),
                error: error.clone(),
            });
        }
        match t {
            Transition::WentUp => {
                first_failure = None;
                events(Event::Up { app: w.app.clone() });
            }
            Transition::WentDown => events(Event::Down { app: w.app.clone() }),
            Transition::None => {}
        }
        if !ok && !monitor.is_down() {
            if let Some(wit) = &witness {
                let _ = wit.verdict(&w.app).await;
            }
        }
        // Down and still failing: fail over, if the witness agrees (asked again each round). The
        // failover itself fences the primary or stops: one that cannot be reached is fenced only
        // when the witness confirms it is down, so without a witness it is never failed over.
        if monitor.is_down() && !ok && !wait_retry(&retry) {
            if let Some(wit) = &witness {
                match wit.verdict(&w.app).await {
                    Verdict::Agrees => {}
                    Verdict::Disagrees(why) | Verdict::Silent(why) => {
                        events(Event::WitnessRefused {
                            app: w.app.clone(),
                            why,
                        });
                        continue;
                    }
                }
            }
            let detected = OffsetDateTime::now_utc();
            let first = first_failure.unwrap_or(detected);
            match trigger.failover(&w.app, first, detected).await {
                Ok(detail) => {
                    events(Event::FailedOver {
                        app: w.app.clone(),
                        detail,
                    });
                    return;
                }
                Err(e) => {
                    failed(&mut retry, e.retry);
                    events(Event::FailoverFailed {
                        app: w.app.clone(),
                        error: e.error,
                    })
                }
            }
        }
        if !monitor.is_down() {
            retry = None;
        }
    }
}

/// What a witness writes for each app it watches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WitnessReport {
    /// When the witness wrote it, on the witness's clock: shown, never used to judge freshness
    /// (a witness clock ahead would make an old report look new).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Grows with every report the witness writes; a reader judges freshness by seeing it change
    /// on its own clock ([`Freshness`]). Reports of a witness before 0.9 have none (0) and are
    /// never fresh.
    #[serde(default)]
    pub sequence: u64,
    /// The site it probed.
    pub site: String,
    /// Its judgement, with the same hysteresis as the watch.
    pub down: bool,
    pub failures: u32,
    #[serde(default)]
    pub error: Option<String>,
}

impl WitnessReport {
    /// The verdict this report gives about `site`, given how long ago (on the reader's clock) the
    /// reader last saw the report change (`None`: not seen changing yet) and `max_age`.
    pub fn verdict(
        report: Option<&WitnessReport>,
        site: &str,
        changed_ago: Option<Duration>,
        max_age: Duration,
    ) -> Verdict {
        let Some(r) = report else {
            return Verdict::Silent("the witness has not reported".into());
        };
        match changed_ago {
            None => {
                return Verdict::Silent(
                    "the witness's report has not been seen to change yet (a witness that still runs writes a new \
                     one every probe interval)"
                        .into(),
                )
            }
            Some(age) if age > max_age => {
                return Verdict::Silent(format!(
                    "the witness's report has not changed for {:.0} s (max {max_age:?}): the witness is not running",
                    age.as_secs_f64()
                ))
            }
            Some(_) => {}
        }
        if r.site != site {
            return Verdict::Silent(format!("the witness watches {}, not {site}", r.site));
        }
        if r.down {
            Verdict::Agrees
        } else {
            Verdict::Disagrees(format!(
                "the witness still sees {site} healthy ({} failures in a row)",
                r.failures
            ))
        }
    }
}

/// When a reader last saw a witness's report change, on the reader's own monotonic clock: the
/// witness's clock is never compared with the reader's. A report is fresh only when its
/// `sequence` changed within `max_age` of now, as this reader saw it.
#[derive(Debug, Default)]
pub struct Freshness {
    /// The sequence last read, and when it was seen to change (`None`: not yet).
    seen: Option<(u64, Option<std::time::Instant>)>,
}

impl Freshness {
    /// Takes in the report read at `now`; returns how long ago it last changed (`None` until a
    /// change has been seen: the first report read proves nothing about the witness running).
    pub fn observe(&mut self, report: Option<&WitnessReport>, now: std::time::Instant) -> Option<Duration> {
        let seq = report?.sequence;
        let changed = match self.seen {
            None => None,
            Some((last, at)) if last == seq => at,
            Some(_) => Some(now),
        };
        self.seen = Some((seq, changed));
        changed.map(|at| now.saturating_duration_since(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    struct Script {
        results: Vec<bool>,
        next: AtomicUsize,
    }
    impl Prober for Script {
        fn probe(&self, _: &str) -> BoxFuture<'_, Result<(), String>> {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            // After the script, the last result repeats.
            let ok = *self.results.get(i).or(self.results.last()).unwrap();
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("refused".into())
                }
            })
        }
    }
    fn later(error: &str) -> TriggerError {
        TriggerError {
            error: error.into(),
            retry: Retry::Later,
        }
    }

    struct Count {
        calls: AtomicUsize,
        at: Mutex<Option<tokio::time::Instant>>,
    }
    impl Trigger for Count {
        fn failover(
            &self,
            _: &str,
            _: OffsetDateTime,
            _: OffsetDateTime,
        ) -> BoxFuture<'_, Result<String, TriggerError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            *self.at.lock().unwrap() = Some(tokio::time::Instant::now());
            Box::pin(async { Ok("failed over".to_string()) })
        }
        fn unfinished(&self, _: &str) -> BoxFuture<'_, Option<Kind>> {
            Box::pin(async { None })
        }
        fn resume(&self, _: &str) -> BoxFuture<'_, Result<String, TriggerError>> {
            Box::pin(async { Err(later("nothing to resume")) })
        }
    }
    /// A trigger whose failover fails `fail_first` times and leaves an operation open when
    /// `leaves_open`; resuming fails `resume_fails` times, then finishes it.
    struct Stubborn {
        fail_first: usize,
        leaves_open: bool,
        resume_fails: usize,
        /// The class of the failovers' failures.
        fails_with: Retry,
        failovers: AtomicUsize,
        resumes: AtomicUsize,
        open: Mutex<bool>,
        at: Mutex<Vec<tokio::time::Instant>>,
    }
    impl Stubborn {
        fn new(fail_first: usize, leaves_open: bool, resume_fails: usize) -> Arc<Stubborn> {
            Stubborn::failing_with(fail_first, leaves_open, resume_fails, Retry::Later)
        }

        fn failing_with(fail_first: usize, leaves_open: bool, resume_fails: usize, fails_with: Retry) -> Arc<Stubborn> {
            Arc::new(Stubborn {
                fail_first,
                leaves_open,
                resume_fails,
                fails_with,
                failovers: AtomicUsize::new(0),
                resumes: AtomicUsize::new(0),
                open: Mutex::new(false),
                at: Mutex::new(Vec::new()),
            })
        }
    }
    impl Trigger for Stubborn {
        fn failover(
            &self,
            _: &str,
            _: OffsetDateTime,
            _: OffsetDateTime,
        ) -> BoxFuture<'_, Result<String, TriggerError>> {
            let n = self.failovers.fetch_add(1, Ordering::SeqCst);
            self.at.lock().unwrap().push(tokio::time::Instant::now());
            let r = if n < self.fail_first {
                *self.open.lock().unwrap() = self.leaves_open;
                Err(TriggerError {
                    error: "start: standby unhealthy".into(),
                    retry: self.fails_with,
                })
            } else {
                Ok("failed over".to_string())
            };
            Box::pin(async move { r })
        }
        fn unfinished(&self, _: &str) -> BoxFuture<'_, Option<Kind>> {
            let open = *self.open.lock().unwrap();
            Box::pin(async move { open.then_some(Kind::Failover) })
        }
        fn resume(&self, _: &str) -> BoxFuture<'_, Result<String, TriggerError>> {
            let n = self.resumes.fetch_add(1, Ordering::SeqCst);
            let r = if n < self.resume_fails {
                Err(later("health: still unhealthy"))
            } else {
                *self.open.lock().unwrap() = false;
                Ok("resumed and finished".to_string())
            };
            Box::pin(async move { r })
        }
    }

    async fn run_with(results: Vec<bool>, trigger: Arc<Stubborn>, secs: u64) -> (bool, Vec<Event>) {
        let prober = Arc::new(Script {
            results,
            next: AtomicUsize::new(0),
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let ended = tokio::time::timeout(
            Duration::from_secs(secs),
            watch_app(
                watched(),
                prober,
                None,
                trigger,
                Arc::new(move |e| ev.lock().unwrap().push(e)),
            ),
        )
        .await
        .is_ok();
        let events = events.lock().unwrap().clone();
        (ended, events)
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_operation_is_driven_to_its_end_even_when_the_primary_answers_again() {
        // Down for three probes, then healthy forever: the failover that failed after starting
        // the standby is resumed anyway, until it finishes.
        let trigger = Stubborn::new(1, true, 2);
        let (ended, events) = run_with(vec![false, false, false, true], trigger.clone(), 600).await;
        assert!(ended, "the watch ends once the failover finished: {events:?}");
        assert_eq!(trigger.failovers.load(Ordering::SeqCst), 1);
        assert_eq!(trigger.resumes.load(Ordering::SeqCst), 3);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Resumed {
                kind: Kind::Failover,
                ..
            }
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failover_that_keeps_failing_is_retried_with_growing_pauses_and_stops_when_the_primary_recovers() {
        // An unconfirmed fence closes the operation and fails the failover each time.
        let trigger = Stubborn::new(usize::MAX, false, 0);
        let (ended, _) = run_with(vec![false], trigger.clone(), 600).await;
        assert!(!ended);
        let at = trigger.at.lock().unwrap().clone();
        let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= MAX_RETRY_DELAY.as_secs() + 1), "{gaps:?}");
        assert!(
            (8..=20).contains(&at.len()),
            "{} attempts in 10 minutes: {gaps:?}",
            at.len()
        );
        // The primary recovers after a failed attempt: no more attempts.
        let trigger = Stubborn::new(usize::MAX, false, 0);
        let (_, events) = run_with(vec![false, false, false, true], trigger.clone(), 600).await;
        assert_eq!(trigger.failovers.load(Ordering::SeqCst), 1, "{events:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failover_that_needs_a_fix_is_tried_again_only_after_the_longest_pause() {
        // A failed hook, a wrong credential: trying again sooner gives the same answer.
        let trigger = Stubborn::failing_with(usize::MAX, false, 0, Retry::AfterFix);
        let (ended, _) = run_with(vec![false], trigger.clone(), 600).await;
        assert!(!ended);
        let at = trigger.at.lock().unwrap().clone();
        let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert!(!gaps.is_empty());
        assert!(
            gaps.iter().all(|g| *g >= MAX_RETRY_DELAY.as_secs()),
            "tried again before the longest pause: {gaps:?}"
        );
    }

    #[test]
    fn a_trigger_error_keeps_the_retry_class_of_a_failed_steps_cause() {
        let step = |cause| OrchestratorError::Step {
            kind: "failover",
            app: "web".into(),
            step: "fence".into(),
            id: "x".into(),
            cause: Box::new(cause),
        };
        let unreachable = TriggerError::from(step(OrchestratorError::Unreachable {
            site: "a".into(),
            source: "no route to host".into(),
        }));
        assert_eq!(unreachable.retry, Retry::Later);
        assert!(
            unreachable.error.contains("site a cannot be reached"),
            "{}",
            unreachable.error
        );
        let hook = TriggerError::from(step(OrchestratorError::Hook {
            app: "web".into(),
            phase: "pre_backup",
            site: "a".into(),
            container: "db".into(),
            reason: "exit code 1".into(),
        }));
        assert_eq!(hook.retry, Retry::AfterFix);
    }

    struct Fixed(Verdict);
    impl Witness for Fixed {
        fn verdict(&self, _: &str) -> BoxFuture<'_, Verdict> {
            let v = self.0.clone();
            Box::pin(async move { v })
        }
    }

    fn watched() -> Watched {
        Watched {
            app: "web".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }

    /// Runs the watch for `secs` of (paused) time; the number of failovers and when the first came.
    async fn run(results: Vec<bool>, witness: Option<Verdict>, secs: u64) -> (usize, Option<Duration>, Vec<Event>) {
        run_from(
            Seed::default(),
            results,
            witness.map(|v| Arc::new(Fixed(v)) as Arc<dyn Witness>),
            secs,
        )
        .await
    }

    async fn run_from(
        seed: Seed,
        results: Vec<bool>,
        witness: Option<Arc<dyn Witness>>,
        secs: u64,
    ) -> (usize, Option<Duration>, Vec<Event>) {
        let prober = Arc::new(Script {
            results,
            next: AtomicUsize::new(0),
        });
        let trigger = Arc::new(Count {
            calls: AtomicUsize::new(0),
            at: Mutex::new(None),
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let start = tokio::time::Instant::now();
        let _ = tokio::time::timeout(
            Duration::from_secs(secs),
            watch_app_from(
                watched(),
                seed,
                prober,
                witness,
                trigger.clone(),
                Arc::new(move |e| ev.lock().unwrap().push(e)),
            ),
        )
        .await;
        let at = trigger.at.lock().unwrap().map(|t| t - start);
        let events = events.lock().unwrap().clone();
        (trigger.calls.load(Ordering::SeqCst), at, events)
    }

    /// Agrees, counting how often it was asked.
    struct Counted(AtomicUsize);
    impl Witness for Counted {
        fn verdict(&self, _: &str) -> BoxFuture<'_, Verdict> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Verdict::Agrees })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_seeded_with_the_threshold_of_failures_fails_over_at_its_first_failed_probe() {
        let mut seed = Seed::default();
        let first = OffsetDateTime::now_utc();
        for _ in 0..3 {
            seed.observe(false, first);
        }
        assert_eq!((seed.failures, seed.first_failure), (3, Some(first)));
        let (n, at, events) = run_from(seed, vec![false], Some(Arc::new(Fixed(Verdict::Agrees))), 60).await;
        assert_eq!((n, at), (1, Some(Duration::ZERO)));
        assert_eq!(events[0], Event::Down { app: "web".into() });
        // Two seen, one more of its own: down at its first probe too.
        let two = Seed {
            failures: 2,
            first_failure: Some(first),
        };
        let (n, at, _) = run_from(two, vec![false], Some(Arc::new(Fixed(Verdict::Agrees))), 60).await;
        assert_eq!((n, at), (1, Some(Duration::ZERO)));
        // A success in between starts over.
        seed.observe(true, first);
        assert_eq!(seed, Seed::default());
    }

    #[tokio::test(start_paused = true)]
    async fn the_witness_is_asked_on_every_failed_probe_before_the_threshold_so_it_is_known_at_it() {
        let w = Arc::new(Counted(AtomicUsize::new(0)));
        let (n, at, _) = run_from(Seed::default(), vec![true, false], Some(w.clone()), 60).await;
        assert_eq!((n, at), (1, Some(Duration::from_secs(3))));
        // Failures at 1 and 2 s asked it (unused), the third at 3 s decided with it.
        assert_eq!(w.0.load(Ordering::SeqCst), 3);
        let quiet = Arc::new(Counted(AtomicUsize::new(0)));
        let _ = run_from(Seed::default(), vec![true], Some(quiet.clone()), 60).await;
        assert_eq!(quiet.0.load(Ordering::SeqCst), 0, "never asked while the app is up");
    }

    #[test]
    fn hysteresis_needs_consecutive_results() {
        let mut m = Monitor::new(3, 2);
        assert_eq!(m.observe(false), Transition::None);
        assert_eq!(m.observe(false), Transition::None);
        assert_eq!(m.observe(true), Transition::None);
        assert_eq!(m.observe(false), Transition::None);
        assert_eq!(m.observe(false), Transition::None);
        assert_eq!(m.observe(false), Transition::WentDown);
        assert_eq!(m.observe(false), Transition::None, "down once, not again");
        assert_eq!(m.observe(true), Transition::None);
        assert_eq!(m.observe(false), Transition::None);
        assert_eq!(m.observe(true), Transition::None);
        assert_eq!(m.observe(true), Transition::WentUp);
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_below_the_threshold_never_fails_over() {
        // Two failures, one success, over and over for 10 minutes.
        let pattern: Vec<bool> = (0..600).map(|i| i % 3 == 2).collect();
        let (n, _, events) = run(pattern, None, 600).await;
        assert_eq!(n, 0);
        assert!(events.iter().any(|e| matches!(e, Event::Failing { failures: 2, .. })));
        assert!(!events.iter().any(|e| matches!(e, Event::Down { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sustained_failure_fails_over_exactly_once_after_the_threshold() {
        let (n, at, _) = run(vec![true, true, false], None, 600).await;
        assert_eq!(n, 1);
        // Probes at 0 and 1 s pass; failures at 2, 3 and 4 s: the third failure decides.
        assert_eq!(at, Some(Duration::from_secs(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_witness_that_still_sees_the_primary_stops_the_failover() {
        let (n, _, events) = run(vec![false], Some(Verdict::Disagrees("healthy".into())), 120).await;
        assert_eq!(n, 0);
        assert!(events.iter().any(|e| matches!(e, Event::WitnessRefused { .. })));
        let (n, _, _) = run(vec![false], Some(Verdict::Silent("no report".into())), 120).await;
        assert_eq!(n, 0, "a silent witness does not agree");
        let (n, _, _) = run(vec![false], Some(Verdict::Agrees), 120).await;
        assert_eq!(n, 1);
    }

    #[test]
    fn a_witness_report_is_read_by_age_site_and_judgement() {
        let r = WitnessReport {
            time: OffsetDateTime::now_utc(),
            sequence: 7,
            site: "a".into(),
            down: true,
            failures: 4,
            error: None,
        };
        let max = Duration::from_secs(10);
        let fresh = Some(Duration::from_secs(3));
        assert_eq!(WitnessReport::verdict(Some(&r), "a", fresh, max), Verdict::Agrees);
        assert!(matches!(
            WitnessReport::verdict(Some(&r), "b", fresh, max),
            Verdict::Silent(_)
        ));
        assert!(matches!(
            WitnessReport::verdict(Some(&r), "a", Some(Duration::from_secs(20)), max),
            Verdict::Silent(_)
        ));
        assert!(matches!(
            WitnessReport::verdict(Some(&r), "a", None, max),
            Verdict::Silent(_)
        ));
        let up = WitnessReport { down: false, ..r };
        assert!(matches!(
            WitnessReport::verdict(Some(&up), "a", fresh, max),
            Verdict::Disagrees(_)
        ));
        assert!(matches!(
            WitnessReport::verdict(None, "a", fresh, max),
            Verdict::Silent(_)
        ));
    }

    /// Regression (review finding 19): a witness whose clock runs ahead wrote reports dated in
    /// the future, which looked fresh long after the witness had died.
    #[test]
    fn a_dead_witness_with_a_clock_ahead_is_not_fresh() {
        let t0 = std::time::Instant::now();
        let ahead = WitnessReport {
            time: OffsetDateTime::now_utc() + Duration::from_secs(3600),
            sequence: 41,
            site: "a".into(),
            down: true,
            failures: 9,
            error: None,
        };
        let max = Duration::from_secs(10);
        let mut f = Freshness::default();
        // First sight: not known to be fresh, whatever its date says.
        let ago = f.observe(Some(&ahead), t0);
        assert_eq!(ago, None);
        assert!(matches!(
            WitnessReport::verdict(Some(&ahead), "a", ago, max),
            Verdict::Silent(_)
        ));
        // The witness writes again: fresh from then on, on the reader's clock.
        let next = WitnessReport {
            sequence: 42,
            ..ahead.clone()
        };
        let ago = f.observe(Some(&next), t0 + Duration::from_secs(1));
        assert_eq!(ago, Some(Duration::ZERO));
        assert_eq!(WitnessReport::verdict(Some(&next), "a", ago, max), Verdict::Agrees);
        // Then it dies: the same report, read 5 s and 30 s later.
        assert_eq!(
            f.observe(Some(&next), t0 + Duration::from_secs(6)),
            Some(Duration::from_secs(5))
        );
        let ago = f.observe(Some(&next), t0 + Duration::from_secs(31));
        assert!(matches!(
            WitnessReport::verdict(Some(&next), "a", ago, max),
            Verdict::Silent(_)
        ));
        // A restarted witness counts again from 1: a change all the same.
        let restarted = WitnessReport { sequence: 1, ..next };
        assert_eq!(
            f.observe(Some(&restarted), t0 + Duration::from_secs(40)),
            Some(Duration::ZERO)
        );
        assert_eq!(f.observe(None, t0 + Duration::from_secs(41)), None);
    }
}
