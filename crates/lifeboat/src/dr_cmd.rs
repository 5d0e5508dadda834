//! DR plan commands: `backup --plan`, `plan check`, `runbook`, `failover`, `failback`, `watch`,
//! `drill`: argument handling and printing. The work is in lifeboat-orchestrator.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_orchestrator::journal::{Kind, Operation, Store};
use lifeboat_orchestrator::ops::{self, Env, Options, Outcome};
use lifeboat_orchestrator::watch::{self, BoxFuture, Event, Verdict, Watched, WitnessReport};
use lifeboat_orchestrator::{check, platform, probe, report, runbook, OrchestratorError};
use lifeboat_plan::{App, Plan, Profile};
use lifeboat_repo::Repository;
use lifeboat_traffic::Router;
use serde_json::json;
use time::OffsetDateTime;

use crate::commands::Ctx;

struct Loaded {
    plan: Plan,
    dir: PathBuf,
    repo: Repository,
}

fn load(ctx: &Ctx, path: &Path) -> Result<Loaded> {
    let plan = Plan::load(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let location = if plan.repository.contains("://") || plan.repository.starts_with("s3:") {
        plan.repository.clone()
    } else {
        dir.join(&plan.repository).display().to_string()
    };
    let repo = ctx
        .open_at(&location)
        .with_context(|| format!("the repository of plan {}", plan.metadata.name))?;
    Ok(Loaded { plan, dir, repo })
}

/// What the orchestrator needs for one command: the plan, its repository, the real sites, its
/// traffic routers and a log line printer.
fn env<'a>(
    plan: &'a Plan,
    dir: &Path,
    repo: &'a Repository,
    router: &'a ops::RouterFn<'a>,
    log: &'a (dyn Fn(&str) + Sync),
) -> Env<'a> {
    Env {
        plan,
        plan_dir: dir.to_path_buf(),
        repo,
        connect: platform::connector(plan),
        router,
        log,
    }
}

fn router_for(dir: PathBuf) -> impl Fn(&App) -> Result<Option<Box<dyn Router>>, OrchestratorError> + Sync {
    move |app: &App| match &app.traffic {
        None => Ok(None),
        Some(t) => lifeboat_traffic::router(t, &dir)
            .map(Some)
            .map_err(|e| OrchestratorError::Traffic {
                app: app.name.value.clone(),
                reason: e.to_string(),
            }),
    }
}

fn logger(ctx: &Ctx) -> impl Fn(&str) + Sync {
    let quiet = ctx.json;
    move |line: &str| {
        if !quiet {
            eprintln!("  {line}");
        }
    }
}

fn apps<'p>(plan: &'p Plan, only: Option<&str>) -> Result<Vec<&'p App>> {
    if let Some(a) = only {
        return match plan.app(a) {
            Some(app) => Ok(vec![app]),
            None => bail!(
                "plan {} has no app {a:?} (apps: {})",
                plan.metadata.name,
                plan.apps
                    .iter()
                    .map(|a| a.name.value.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    Ok(plan.apps.iter().filter(|a| a.profile == Profile::Dr).collect())
}

pub fn backup(ctx: &Ctx, plan: &Path, app: Option<&str>) -> Result<bool> {
    let l = load(ctx, plan)?;
    let router = router_for(l.dir.clone());
    let log = logger(ctx);
    let env = env(&l.plan, &l.dir, &l.repo, &router, &log);
    let items = ops::backup_plan(&env, app, ctx.lock_wait)?;
    let ok = items.iter().all(|i| i.error.is_none());
    ctx.print(json!({ "plan": l.plan.metadata.name, "apps": items }), || {
        for i in &items {
            match (&i.snapshot, &i.error) {
                (_, Some(e)) => println!("{}: FAILED on {}: {e}", i.app, i.site),
                (Some(s), None) => println!(
                    "{}: snapshot {} of {}{}",
                    i.app,
                    &s[..8],
                    i.site,
                    i.staged
                        .as_ref()
                        .map(|s| format!("; staged on {s}"))
                        .unwrap_or_default()
                ),
                (None, None) => {}
            }
            for h in &i.hooks {
                println!("  {h}");
            }
        }
    });
    Ok(ok)
}

/// `sync PLAN`: a round now, then one every `every` unless `once`. False when a round failed for
/// some app (with `--once`); a long-running sync logs failures and goes on.
pub fn sync(ctx: &Ctx, plan: &Path, app: Option<&str>, once: bool, every: Duration, dry_run: bool) -> Result<bool> {
    let l = load(ctx, plan)?;
    let router = router_for(l.dir.clone());
    let log = logger(ctx);
    let env = env(&l.plan, &l.dir, &l.repo, &router, &log);
    loop {
        let items = lifeboat_orchestrator::sync::sync_plan(&env, app, dry_run, ctx.lock_wait)?;
        let ok = items.iter().all(|i| i.error.is_none());
        ctx.print(json!({ "plan": l.plan.metadata.name, "apps": items }), || {
            for i in &items {
                let head = format!("{}: {} -> {}", i.app, i.from, i.to);
                if let Some(e) = &i.error {
                    println!("{}: FAILED: {e}", i.app);
                    continue;
                }
                match (&i.note, i.drift.is_empty()) {
                    (Some(n), true) => println!("{head}: {n}"),
                    (None, true) => println!("{head}: in step"),
                    (note, false) => {
                        println!(
                            "{head}: {} differences{}",
                            i.drift.len(),
                            note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
                        );
                        for d in &i.drift {
                            println!("  drift: {}", d.describe(&i.to));
                        }
                        for c in &i.corrected {
                            println!("  corrected: {c}");
                        }
                    }
                }
            }
        });
        if once {
            return Ok(ok);
        }
        std::thread::sleep(every);
    }
}

pub fn switch(ctx: &Ctx, args: &crate::cli::OpArgs, kind: Kind) -> Result<bool> {
    let l = load(ctx, &args.plan)?;
    let router = router_for(l.dir.clone());
    let log = logger(ctx);
    let env = env(&l.plan, &l.dir, &l.repo, &router, &log);
    let fenced_by_hand = match &args.fenced_by_hand {
        None => None,
        Some(site) if !l.plan.sites.contains_key(site) => bail!(
            "--fenced-by-hand {site}: plan {} has no site {site:?} (sites: {})",
            l.plan.metadata.name,
            l.plan.sites.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Some(site) => Some(ops::ManualFence {
            site: site.clone(),
            by: operator(),
        }),
    };
    let opts = Options {
        health_timeout: Duration::from_secs(args.health_timeout),
        final_backup: !args.no_final_backup,
        accept_data_loss: args.accept_data_loss,
        fenced_by_hand,
        accept_incomplete: args.accept_incomplete,
        ignore_capacity: args.ignore_capacity,
        ..Default::default()
    };
    let mut results = Vec::new();
    let mut ok = true;
    for app in apps(&l.plan, args.app.as_deref())? {
        if !ctx.json {
            eprintln!("{} of {}:", kind.as_str(), app.name.value);
        }
        match ops::switch_over(&env, &app.name.value, kind, &opts) {
            Ok(Outcome::AlreadyThere { site, last }) => {
                if !ctx.json {
                    println!(
                        "{}: already on {site}{}; nothing to do",
                        app.name.value,
                        last.map(|l| format!(" (operation {l})")).unwrap_or_default()
                    );
                }
                results.push(json!({"app": app.name.value, "status": "already-there", "site": site}));
            }
            Ok(Outcome::Done(op)) => {
                if !ctx.json {
                    print!("{}", report::timeline_text(&op));
                }
                results.push(report::json(&op));
            }
            Err(e) => {
                ok = false;
                if !ctx.json {
                    eprintln!("{}: {e}", app.name.value);
                }
                results.push(json!({"app": app.name.value, "status": "failed", "error": e.to_string()}));
            }
        }
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "operations": results }))?);
    }
    Ok(ok)
}

/// Who runs this command, for the journal: the user (the one behind sudo, if any) and the host.
fn operator() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    format!("operator {user} on {host}")
}

pub fn drill(
    ctx: &Ctx,
    plan: &Path,
    app: Option<&str>,
    site: Option<String>,
    out: Option<&Path>,
    health_timeout: u64,
) -> Result<bool> {
    let l = load(ctx, plan)?;
    let router = router_for(l.dir.clone());
    let log = logger(ctx);
    let env = env(&l.plan, &l.dir, &l.repo, &router, &log);
    let opts = Options {
        health_timeout: Duration::from_secs(health_timeout),
        drill_site: site,
        ..Default::default()
    };
    let mut done: Vec<Operation> = Vec::new();
    let mut errors = Vec::new();
    for a in apps(&l.plan, app)? {
        if !ctx.json {
            eprintln!("drill of {}:", a.name.value);
        }
        match ops::drill(&env, &a.name.value, &opts) {
            Ok(op) => done.push(op),
            Err(e) => errors.push(format!("{}: {e}", a.name.value)),
        }
    }
    let r = report::DrillReport::new(&l.plan, done, errors);
    if let Some(base) = out {
        if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for (ext, text) in [
            ("md", r.markdown()),
            ("json", serde_json::to_string_pretty(&r.to_json())?),
            ("xml", r.junit()),
            ("html", r.html()),
        ] {
            let path = base.with_extension(ext);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    ctx.print(r.to_json(), || print!("{}", r.markdown()));
    Ok(r.passed())
}

pub fn runbook(ctx: &Ctx, plan: &Path, out: Option<&Path>) -> Result<bool> {
    let plan_v = Plan::load(plan)?;
    let text = runbook::markdown(&plan_v, plan);
    match out {
        Some(p) => std::fs::write(p, &text).with_context(|| format!("cannot write {}", p.display()))?,
        None if ctx.json => println!("{}", json!({ "markdown": text })),
        None => print!("{text}"),
    }
    Ok(true)
}

pub fn check(ctx: &Ctx, plan: &Path) -> Result<bool> {
    let plan_v = Plan::load(plan)?;
    let dir = plan.parent().unwrap_or(Path::new(".")).to_path_buf();
    let repo = load(ctx, plan).map(|l| l.repo);
    let router = router_for(dir);
    let results = check::run(
        &plan_v,
        repo.as_ref().map_err(|e| format!("{e:#}")),
        &platform::connector(&plan_v),
        &router,
    );
    let ok = results.iter().all(|r| r.status != check::Status::Fail);
    ctx.print(
        json!({ "plan": plan_v.metadata.name, "ok": ok, "checks": results }),
        || {
            print!("{}", check::table(&results));
            println!("{}", if ok { "plan check passed" } else { "plan check FAILED" });
        },
    );
    Ok(ok)
}

/// Probes one app where it is active now.
/// How long a read or write of the repository by the watch or the witness may take before that
/// round counts as "unknown" (an S3 stall must not stop all watching: the reads run on the
/// blocking pool, the watch's tasks only wait for them this long).
const REPO_DEADLINE: Duration = Duration::from_secs(10);

struct LiveProber {
    plan: Arc<Plan>,
    repo: Arc<Repository>,
    /// The active site of each app as last read from its state.
    known: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl LiveProber {
    fn new(plan: Arc<Plan>, repo: Arc<Repository>) -> LiveProber {
        LiveProber {
            plan,
            repo,
            known: Default::default(),
        }
    }

    /// Where `app` is active, read from its state on the blocking pool within [`REPO_DEADLINE`].
    /// A state that cannot be read gives the site last read, and with none, an error: never the
    /// plan's primary by default (after a failover, that would probe the fenced side).
    async fn active(self: &Arc<Self>, app: &str) -> Result<String, String> {
        let me = self.clone();
        let name = app.to_string();
        let read = tokio::task::spawn_blocking(move || {
            let st = Store {
                repo: &me.repo,
                plan: me.plan.metadata.name.clone(),
                app: name.clone(),
            };
            st.state().map(|s| {
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

/// The watch's prober: the app's health at its active site.
struct Probe(Arc<LiveProber>);

impl watch::Prober for Probe {
    fn probe(&self, app: &str) -> BoxFuture<'_, Result<(), String>> {
        let (p, app) = (self.0.clone(), app.to_string());
        Box::pin(async move {
            let site = p.active(&app).await?;
            let plan = p.plan.clone();
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

struct RepoWitness {
    prober: Arc<LiveProber>,
    max_age: Duration,
    /// When this process last saw each app's witness report change.
    freshness: std::sync::Mutex<std::collections::HashMap<String, watch::Freshness>>,
}

impl watch::Witness for RepoWitness {
    fn verdict(&self, app: &str) -> BoxFuture<'_, Verdict> {
        let app = app.to_string();
        Box::pin(async move {
            let site = match self.prober.active(&app).await {
                Ok(s) => s,
                Err(e) => return Verdict::Silent(e),
            };
            let p = self.prober.clone();
            let name = app.clone();
            let read = tokio::task::spawn_blocking(move || {
                let st = Store {
                    repo: &p.repo,
                    plan: p.plan.metadata.name.clone(),
                    app: name,
                };
                st.witness_report()
            });
            let report: Option<WitnessReport> = match tokio::time::timeout(REPO_DEADLINE, read).await {
                Ok(Ok(Ok(report))) => report,
                Ok(Ok(Err(e))) => return Verdict::Silent(format!("the witness's report cannot be read: {e}")),
                Ok(Err(e)) => return Verdict::Silent(e.to_string()),
                Err(_) => {
                    return Verdict::Silent(format!("the witness's report was not read within {REPO_DEADLINE:?}"))
                }
            };
            let ago = self
                .freshness
                .lock()
                .unwrap()
                .entry(app)
                .or_default()
                .observe(report.as_ref(), std::time::Instant::now());
            WitnessReport::verdict(report.as_ref(), &site, ago, self.max_age)
        })
    }
}

struct Failover {
    plan_path: PathBuf,
    ctx_json: bool,
    repo_location: Arc<Repository>,
    plan: Arc<Plan>,
}

impl watch::Trigger for Failover {
    fn failover(
        &self,
        app: &str,
        first_failure: OffsetDateTime,
        detected: OffsetDateTime,
    ) -> BoxFuture<'_, Result<String, String>> {
        let (app, plan, repo, json) = (
            app.to_string(),
            self.plan.clone(),
            self.repo_location.clone(),
            self.ctx_json,
        );
        let dir = self.plan_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let router = router_for(dir.clone());
                let log = move |l: &str| {
                    if !json {
                        eprintln!("  {l}");
                    }
                };
                let env = env(&plan, &dir, &repo, &router, &log);
                let opts = Options {
                    trigger: Some(first_failure),
                    detected: Some(detected),
                    reason: "health".into(),
                    ..Default::default()
                };
                match ops::switch_over(&env, &app, Kind::Failover, &opts) {
                    Ok(Outcome::Done(op)) => Ok(report::timeline_text(&op)),
                    Ok(Outcome::AlreadyThere { site, .. }) => Ok(format!("already on {site}")),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }

    fn unfinished(&self, app: &str) -> BoxFuture<'_, Option<Kind>> {
        let (app, plan, repo) = (app.to_string(), self.plan.clone(), self.repo_location.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let st = Store {
                    repo: &repo,
                    plan: plan.metadata.name.clone(),
                    app,
                };
                let id = st.state().ok()?.running?;
                st.operation(&id).ok().flatten().map(|op| op.kind)
            })
            .await
            .ok()
            .flatten()
        })
    }

    fn resume(&self, app: &str) -> BoxFuture<'_, Result<String, String>> {
        let (app, plan, repo, json) = (
            app.to_string(),
            self.plan.clone(),
            self.repo_location.clone(),
            self.ctx_json,
        );
        let dir = self.plan_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let router = router_for(dir.clone());
                let log = move |l: &str| {
                    if !json {
                        eprintln!("  {l}");
                    }
                };
                let env = env(&plan, &dir, &repo, &router, &log);
                let st = Store {
                    repo: &repo,
                    plan: plan.metadata.name.clone(),
                    app: app.clone(),
                };
                let kind = st
                    .state()
                    .ok()
                    .and_then(|s| s.running)
                    .and_then(|id| st.operation(&id).ok().flatten())
                    .map(|op| op.kind)
                    .ok_or_else(|| "no unfinished operation".to_string())?;
                let opts = Options {
                    reason: "health".into(),
                    ..Default::default()
                };
                match ops::switch_over(&env, &app, kind, &opts) {
                    Ok(Outcome::Done(op)) => Ok(report::timeline_text(&op)),
                    Ok(Outcome::AlreadyThere { site, .. }) => Ok(format!("already on {site}")),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

pub fn watch(ctx: &Ctx, plan_path: &Path, only: Option<&str>, witness: bool) -> Result<bool> {
    let l = load(ctx, plan_path)?;
    let plan = Arc::new(l.plan);
    let repo = Arc::new(l.repo);
    let rt = runtime()?;
    let tasks = watch_tasks(&rt, ctx, plan_path, &plan, &repo, only, witness)?;
    rt.block_on(join_all(tasks));
    Ok(true)
}

/// `serve PLAN`: the plan's backup schedule with its retention, sync rounds, and the watch, in one
/// process until interrupted.
pub fn serve(ctx: &Ctx, plan_path: &Path, only: Option<&str>, no_watch: bool, sync_every: Duration) -> Result<bool> {
    if ctx.password_file.is_none() && std::env::var_os("LIFEBOAT_PASSWORD").is_some() {
        // A daemon's environment is shown to others: `systemctl show` prints an `Environment=`
        // line to every local user, and /proc/PID/environ to root and the same user.
        tracing::warn!(
            "the repository password comes from LIFEBOAT_PASSWORD, which a service's environment shows to others \
             (systemctl show); give serve --password-file (with systemd: LoadCredential= and \
             --password-file $CREDENTIALS_DIRECTORY/NAME)"
        );
    }
    let l = load(ctx, plan_path)?;
    let dir = l.dir.clone();
    let plan = Arc::new(l.plan);
    let repo = Arc::new(l.repo);
    let rt = runtime()?;
    let mut tasks = Vec::new();
    let json = ctx.json;
    let say = move |line: String| {
        let now = OffsetDateTime::now_utc();
        if json {
            println!("{}", json!({"time": now.to_string(), "event": line}));
        } else {
            eprintln!("{} {line}", now.time());
        }
    };
    // Runs `f` with an `Env` on a blocking thread (the platforms block on their own runtimes).
    let blocking = {
        let (plan, repo, dir) = (plan.clone(), repo.clone(), dir.clone());
        move |f: Box<dyn FnOnce(&Env) -> String + Send>| {
            let (plan, repo, dir) = (plan.clone(), repo.clone(), dir.clone());
            tokio::task::spawn_blocking(move || {
                let router = router_for(dir.clone());
                // Each job reports in one line of its own (`say`).
                let log = |_: &str| {};
                f(&env(&plan, &dir, &repo, &router, &log))
            })
        }
    };
    for a in apps(&plan, only)? {
        let Some(policy) = &a.backup else { continue };
        let every = policy.every.value.0;
        let since = ops::latest_recovery_point(&repo, &plan.metadata.name, &a.name.value)?.map(|rp| {
            (OffsetDateTime::now_utc() - rp.time)
                .try_into()
                .unwrap_or(Duration::ZERO)
        });
        let first = lifeboat_orchestrator::schedule::first_delay(every, since);
        say(format!("{}: backup every {every:?}, next in {first:?}", a.name.value));
        let (name, blocking, say) = (a.name.value.clone(), blocking.clone(), say);
        tasks.push(rt.spawn(lifeboat_orchestrator::schedule::every(every, first, move || {
            let (name, say) = (name.clone(), say);
            let app_name = name.clone();
            let job = blocking(Box::new(move |env: &Env| {
                let name = app_name;
                let app = env.plan.app(&name).expect("an app of the plan");
                let mut line = match ops::backup_plan(env, Some(&name), Duration::from_secs(300)) {
                    Ok(items) => items
                        .iter()
                        .map(|i| match (&i.snapshot, &i.error) {
                            (_, Some(e)) => format!("{}: backup FAILED on {}: {e}", i.app, i.site),
                            (Some(s), None) => format!("{}: snapshot {} of {}", i.app, &s[..8], i.site),
                            (None, None) => format!("{}: nothing backed up", i.app),
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(e) => format!("{name}: backup FAILED: {e}"),
                };
                match lifeboat_orchestrator::schedule::apply_retention(env, app, Duration::from_secs(300)) {
                    Ok(removed) if removed.is_empty() => {}
                    Ok(removed) => line += &format!("; retention removed {}", removed.join(", ")),
                    Err(e) => line += &format!("; retention FAILED: {e}"),
                }
                line
            }));
            async move {
                match job.await {
                    Ok(line) => say(line),
                    Err(e) => say(format!("{name}: backup task failed: {e}")),
                }
            }
        })));
    }
    if !sync_every.is_zero() {
        let only = only.map(str::to_string);
        let (blocking, say) = (blocking.clone(), say);
        tasks.push(rt.spawn(async move {
            let mut tick = tokio::time::interval(sync_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let only = only.clone();
                let job = blocking(Box::new(move |env: &Env| match lifeboat_orchestrator::sync::sync_plan(
                    env,
                    only.as_deref(),
                    false,
                    Duration::from_secs(300),
                ) {
                    Ok(items) => items
                        .iter()
                        .filter(|i| i.error.is_some() || !i.corrected.is_empty())
                        .map(|i| match &i.error {
                            Some(e) => format!("{}: sync FAILED: {e}", i.app),
                            None => format!("{}: sync corrected {}", i.app, i.corrected.join(", ")),
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(e) => format!("sync FAILED: {e}"),
                }));
                match job.await {
                    Ok(line) if line.is_empty() => {}
                    Ok(line) => say(line),
                    Err(e) => say(format!("sync task failed: {e}")),
                }
            }
        }));
    }
    if !no_watch {
        match watch_tasks(&rt, ctx, plan_path, &plan, &repo, only, false) {
            Ok(t) => tasks.extend(t),
            Err(e) => say(format!("not watching: {e}")),
        }
    }
    if tasks.is_empty() {
        bail!(
            "nothing to serve for plan {}: no app has a backup schedule, sync is off and nothing is watched",
            plan.metadata.name
        );
    }
    rt.block_on(join_all(tasks));
    Ok(true)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// The tasks of `watch` (or of the witness), spawned on `rt`.
fn watch_tasks(
    rt: &tokio::runtime::Runtime,
    ctx: &Ctx,
    plan_path: &Path,
    plan: &Arc<Plan>,
    repo: &Arc<Repository>,
    only: Option<&str>,
    witness: bool,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let prober = Arc::new(LiveProber::new(plan.clone(), repo.clone()));
    let json = ctx.json;
    let events: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |e: Event| {
        let now = OffsetDateTime::now_utc();
        let line = match &e {
            Event::Failing { app, failures, error } => format!("{app}: probe failed ({failures} in a row): {error}"),
            Event::Down { app } => format!("{app}: DOWN (failure threshold reached)"),
            Event::Up { app } => format!("{app}: up again"),
            Event::WitnessRefused { app, why } => format!("{app}: no failover: {why}"),
            Event::FailedOver { app, detail } => format!("{app}: failed over\n{detail}"),
            Event::FailoverFailed { app, error } => format!("{app}: failover failed: {error}"),
            Event::Resumed { app, kind, detail } => {
                format!("{app}: unfinished {} resumed and finished\n{detail}", kind.as_str())
            }
        };
        if json {
            println!("{}", json!({"time": now.to_string(), "event": format!("{e:?}")}));
        } else {
            eprintln!("{} {line}", now.time());
        }
    });
    let watched: Vec<(Watched, String)> = apps(plan, only)?
        .into_iter()
        .filter_map(|a| {
            let h = a.health.first()?;
            Some((
                Watched {
                    app: a.name.value.clone(),
                    interval: h.interval.value.0,
                    timeout: h.timeout.0,
                    failure_threshold: h.failure_threshold.value,
                    success_threshold: h.success_threshold.value,
                },
                a.name.value.clone(),
            ))
        })
        .collect();
    if watched.is_empty() {
        bail!("no app of plan {} has health probes to watch", plan.metadata.name);
    }
    if witness {
        eprintln!("witness for {} apps: reporting to the repository", watched.len());
        return Ok(watched
            .into_iter()
            .map(|(w, _)| rt.spawn(witness_loop(w, prober.clone(), repo.clone(), plan.clone())))
            .collect());
    }
    let wit: Option<Arc<dyn watch::Witness>> = plan.witness.as_ref().map(|w| {
        Arc::new(RepoWitness {
            prober: prober.clone(),
            max_age: w.max_age.0,
            freshness: Default::default(),
        }) as Arc<dyn watch::Witness>
    });
    let trigger = Arc::new(Failover {
        plan_path: plan_path.to_path_buf(),
        ctx_json: json,
        repo_location: repo.clone(),
        plan: plan.clone(),
    });
    eprintln!(
        "watching {} apps{}",
        watched.len(),
        if wit.is_some() {
            " (a witness must agree before a failover)"
        } else {
            " (no witness: a primary that cannot be reached stays active until `failover --fenced-by-hand`)"
        }
    );
    let probe: Arc<dyn watch::Prober> = Arc::new(Probe(prober.clone()));
    Ok(watched
        .into_iter()
        .map(|(w, _)| {
            rt.spawn(watch::watch_app(
                w,
                probe.clone(),
                wit.clone(),
                trigger.clone(),
                events.clone(),
            ))
        })
        .collect())
}

async fn witness_loop(w: Watched, prober: Arc<LiveProber>, repo: Arc<Repository>, plan: Arc<Plan>) {
    use watch::Prober;
    let probe = Probe(prober.clone());
    let mut monitor = watch::Monitor::new(w.failure_threshold, w.success_threshold);
    let mut tick = tokio::time::interval(w.interval);
    // Readers judge freshness by seeing the sequence change (never by this host's clock).
    let mut sequence: u64 = 0;
    loop {
        tick.tick().await;
        let site = match prober.active(&w.app).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("witness: {}: {e}: no report this round", w.app);
                continue;
            }
        };
        let r = match tokio::time::timeout(w.timeout, probe.probe(&w.app)).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        };
        monitor.observe(r.is_ok());
        sequence += 1;
        let report = WitnessReport {
            time: OffsetDateTime::now_utc(),
            sequence,
            site,
            down: monitor.is_down(),
            failures: monitor.failures(),
            error: r.err(),
        };
        let (repo, plan_name, app) = (repo.clone(), plan.metadata.name.clone(), w.app.clone());
        let write = move || {
            let st = Store {
                repo: &repo,
                plan: plan_name,
                app,
            };
            st.save_witness_report(&report)
        };
        match tokio::time::timeout(REPO_DEADLINE, tokio::task::spawn_blocking(write)).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("witness: cannot report for {}: {e}", w.app),
            Ok(Err(e)) => eprintln!("witness: cannot report for {}: {e}", w.app),
            Err(_) => eprintln!(
                "witness: the report for {} was not written within {REPO_DEADLINE:?}",
                w.app
            ),
        }
    }
}
