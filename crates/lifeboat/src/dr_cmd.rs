//! DR plan commands: `backup --plan`, `plan check`, `runbook`, `failover`, `failback`, `watch`,
//! `drill`, `serve`: argument handling and printing. The work is in lifeboat-orchestrator, the
//! long-running loops in lifeboat-server.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_orchestrator::journal::{Kind, Operation};
use lifeboat_orchestrator::ops::{self, Options, Outcome};
use lifeboat_orchestrator::{check, platform, report, runbook};
use lifeboat_plan::{App, Plan};
use lifeboat_repo::Repository;
use lifeboat_server::{ByHand, Coordination, Event, Instance, ServeOptions, Server};
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

fn apps<'p>(plan: &'p Plan, only: Option<&str>) -> Result<Vec<&'p App>> {
    Ok(lifeboat_server::apps(plan, only)?)
}

pub fn backup(ctx: &Ctx, plan: &Path, app: Option<&str>, without_coordination: bool) -> Result<bool> {
    let s = acting(ctx, plan, without_coordination)?;
    s.with_env(true, |env| {
        let items = ops::backup_plan(env, app, ctx.lock_wait, "cli")?;
        let ok = items.iter().all(|i| i.error.is_none());
        ctx.print(json!({ "plan": env.plan.metadata.name, "apps": items }), || {
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
    })
}

/// What `sync` was asked.
pub struct SyncArgs {
    pub once: bool,
    pub every: Duration,
    pub dry_run: bool,
    pub without_coordination: bool,
}

/// `sync PLAN`: a round now, then one every `every` unless `once`. False when a round failed for
/// some app (with `--once`); a long-running sync logs failures and goes on. On a plan with
/// `coordination`, a sync that changes things runs one round (`--once`): the leading `serve`
/// instance runs the rounds, and a long-running sync would hold the leadership from it.
pub fn sync(ctx: &Ctx, plan: &Path, app: Option<&str>, a: &SyncArgs) -> Result<bool> {
    let SyncArgs {
        once,
        every,
        dry_run,
        without_coordination,
    } = *a;
    let s = if dry_run {
        server(ctx, plan)?
    } else {
        let p = Plan::load(plan)?;
        if p.coordination.is_some() && !once {
            bail!(
                "plan {} has a coordination section: its leading serve instance runs the sync rounds (serve \
                 --sync-every); run one round by hand with --once, or report with --dry-run",
                p.metadata.name
            );
        }
        acting(ctx, plan, without_coordination)?
    };
    s.with_env(true, |env| loop {
        let items = lifeboat_orchestrator::sync::sync_plan(env, app, dry_run, ctx.lock_wait)?;
        let ok = items.iter().all(|i| i.error.is_none());
        ctx.print(json!({ "plan": env.plan.metadata.name, "apps": items }), || {
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
    })
}

pub fn switch(ctx: &Ctx, args: &crate::cli::OpArgs, kind: Kind) -> Result<bool> {
    let s = acting(ctx, &args.plan, args.without_coordination)?;
    s.with_env(true, |env| {
        let fenced_by_hand = match &args.fenced_by_hand {
            None => None,
            Some(site) if !env.plan.sites.contains_key(site) => bail!(
                "--fenced-by-hand {site}: plan {} has no site {site:?} (sites: {})",
                env.plan.metadata.name,
                env.plan.sites.keys().cloned().collect::<Vec<_>>().join(", ")
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
        for app in apps(env.plan, args.app.as_deref())? {
            if !ctx.json {
                eprintln!("{} of {}:", kind.as_str(), app.name.value);
            }
            match ops::switch_over(env, &app.name.value, kind, &opts) {
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
    })
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
    without_coordination: bool,
) -> Result<bool> {
    let s = acting(ctx, plan, without_coordination)?;
    s.with_env(true, |env| {
        let opts = Options {
            health_timeout: Duration::from_secs(health_timeout),
            drill_site: site,
            ..Default::default()
        };
        let mut done: Vec<Operation> = Vec::new();
        let mut errors = Vec::new();
        for a in apps(env.plan, app)? {
            if !ctx.json {
                eprintln!("drill of {}:", a.name.value);
            }
            match ops::drill(env, &a.name.value, &opts) {
                Ok(op) => done.push(op),
                Err(e) => errors.push(format!("{}: {e}", a.name.value)),
            }
        }
        let r = report::DrillReport::new(env.plan, done, errors);
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
    })
}

/// `drills PLAN`: each app's drills as the repository holds them, newest first.
pub fn drills(ctx: &Ctx, plan: &Path, app: Option<&str>) -> Result<bool> {
    let s = server(ctx, plan)?;
    s.with_env(false, |env| {
        let mut all = Vec::new();
        for a in apps(env.plan, app)? {
            all.extend(lifeboat_orchestrator::drills::history(env.repo, env.plan, a)?);
        }
        ctx.print(
            json!({ "plan": env.plan.metadata.name, "drills": all.iter().map(|d| d.to_json()).collect::<Vec<_>>() }),
            || {
                if all.is_empty() {
                    println!("no drills yet (lifeboat drill PLAN, or drill.every in the plan)");
                }
                for d in &all {
                    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} s"));
                    println!(
                        "{}  {}  on {}  {:?}  RTO {}  RPO {}{}",
                        d.op.id,
                        d.op.app,
                        d.op.to,
                        d.outcome(),
                        secs(lifeboat_orchestrator::report::rto_seconds(&d.op)),
                        secs(d.op.rpo_seconds()),
                        if d.problems.is_empty() {
                            String::new()
                        } else {
                            format!("  ({})", d.problems.join("; "))
                        }
                    );
                }
            },
        );
        Ok(true)
    })
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
    let router = lifeboat_server::routers(dir.clone());
    let mut results = check::run(
        &plan_v,
        repo.as_ref().map_err(crate::error_line),
        &platform::connector(&plan_v),
        &*router,
    );
    results.extend(lifeboat_server::coord::check(&plan_v, &dir));
    let ok = results.iter().all(|r| r.status != check::Status::Fail);
    let readiness = check::readiness(&plan_v, &results);
    ctx.print(
        json!({ "plan": plan_v.metadata.name, "ok": ok, "checks": results, "readiness": readiness }),
        || {
            print!("{}", check::table(&results));
            print!("{}", check::readiness_table(&readiness));
            println!("{}", if ok { "plan check passed" } else { "plan check FAILED" });
        },
    );
    Ok(ok)
}

pub fn watch(ctx: &Ctx, plan_path: &Path, only: Option<&str>, witness: bool) -> Result<bool> {
    let server = server(ctx, plan_path)?;
    let rt = runtime()?;
    let shutdown = lifeboat_server::shutdown_signal();
    let run = if witness {
        rt.block_on(server.witness(only, shutdown))
    } else {
        rt.block_on(server.watch(only, shutdown))
    };
    // Dropping the runtime waits for a failover under way.
    drop(rt);
    run?;
    Ok(true)
}

/// What `serve` was asked.
pub struct ServeArgs {
    pub only: Option<String>,
    pub no_watch: bool,
    pub sync_every: Duration,
    pub instance: Option<String>,
    pub site: Option<String>,
    pub api: crate::cli::ApiArgs,
}

/// `serve PLAN`: the plan's backup schedule with its retention, sync rounds, and the watch, in one
/// process until SIGTERM or SIGINT; with the plan's `coordination`, as one of its instances.
pub fn serve(ctx: &Ctx, plan_path: &Path, args: &ServeArgs) -> Result<bool> {
    if ctx.password_file.is_none() && std::env::var_os("LIFEBOAT_PASSWORD").is_some() {
        // A daemon's environment is shown to others: `systemctl show` prints an `Environment=`
        // line to every local user, and /proc/PID/environ to root and the same user.
        tracing::warn!(
            "the repository password comes from LIFEBOAT_PASSWORD, which a service's environment shows to others \
             (systemctl show); give serve --password-file (with systemd: LoadCredential= and \
             --password-file $CREDENTIALS_DIRECTORY/NAME)"
        );
    }
    let (mut server, board) = server_with_board(ctx, plan_path)?;
    if server.plan.coordination.is_some() {
        if let Some(site) = &args.site {
            if !server.plan.sites.contains_key(site) {
                bail!(
                    "--site {site}: plan {} has no such site (sites: {}); a witness elsewhere gives no --site",
                    server.plan.metadata.name,
                    server.plan.sites.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        let name = match (&args.instance, &args.site) {
            (Some(n), _) | (None, Some(n)) => n.clone(),
            (None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
        };
        let me = Instance {
            name,
            site: args.site.clone(),
        };
        let c = Coordination::join(&server.plan, &server.plan_dir, me)?;
        Arc::get_mut(&mut server).expect("not shared yet").coordination = Some(Arc::new(c));
    } else if args.instance.is_some() || args.site.is_some() {
        bail!(
            "--instance and --site name this serve among the instances of a plan's `coordination`, and plan {} has \
             none",
            server.plan.metadata.name
        );
    }
    let rt = runtime()?;
    let opts = ServeOptions {
        only: args.only.clone(),
        watch: !args.no_watch,
        sync_every: args.sync_every,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let run = rt.block_on(async {
        tokio::spawn(async move {
            lifeboat_server::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        if let Some(addr) = args.api.listen {
            let api = start_api(&server, &args.api, addr, board, ctx.log_json).await?;
            tokio::spawn(api.0.clone().run(stop()));
            tokio::spawn(api.1.run(api.2, stop()));
        }
        anyhow::Ok(server.serve(&opts, stop()).await?)
    });
    // Dropping the runtime waits for the jobs under way (a backup, a failover).
    drop(rt);
    run?;
    Ok(true)
}

/// Binds the API (TLS and tokens loaded) before anything is served; prints where it listens
/// and, for a certificate made here, its fingerprint.
async fn start_api(
    server: &Arc<Server>,
    a: &crate::cli::ApiArgs,
    addr: std::net::SocketAddr,
    board: BoardSlot,
    log_json: bool,
) -> Result<(
    Arc<lifeboat_api::Board>,
    lifeboat_api::Listener,
    Arc<lifeboat_api::http::Api>,
)> {
    use lifeboat_api::tls::TlsSource;
    let tokens = match &a.tokens {
        Some(p) => lifeboat_api::auth::Tokens::load(p)?,
        None => {
            tracing::warn!(
                "serve --listen without --tokens: only /healthz, /readyz, /metrics and the dashboard's files answer"
            );
            lifeboat_api::auth::Tokens::default()
        }
    };
    let tls = match (&a.tls_cert, &a.tls_key, a.no_tls) {
        (_, _, true) => None,
        (Some(cert), Some(key), _) => Some(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => {
            let dir = a.tls_dir.clone().unwrap_or_else(|| {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                home.join(".local/state/lifeboat/tls").join(&server.plan.metadata.name)
            });
            let mut names = vec!["localhost".to_string(), addr.ip().to_string()];
            if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                names.push(h.trim().to_string());
            }
            Some(TlsSource::SelfSigned { dir, names })
        }
    };
    let listener = lifeboat_api::Listener::bind(addr, tls.as_ref()).await?;
    let line = match &listener.tls {
        Some(t) => format!(
            "API, dashboard and metrics on https://{} (certificate {}{}, SHA-256 {})",
            listener.addr,
            t.cert_path.display(),
            if t.generated { ", self-signed, made now" } else { "" },
            t.fingerprint
        ),
        None => format!("API, dashboard and metrics on http://{} (no TLS)", listener.addr),
    };
    if log_json {
        tracing::info!(kind = "api_listening", "{line}");
    } else {
        eprintln!("{} {line}", OffsetDateTime::now_utc().time());
    }
    let b = lifeboat_api::Board::new(server.clone(), a.status_every, a.check_every);
    b.counters.set_plan(&server.plan.metadata.name);
    let _ = board.set(b.clone());
    let api = lifeboat_api::http::Api::new(b.clone(), tokens);
    Ok((b, listener, api))
}

/// `status PLAN`: the status model as a table (or JSON), once or every `every`.
pub fn status(ctx: &Ctx, plan_path: &Path, app: Option<&str>, watch: bool, every: Duration) -> Result<bool> {
    let plan_v = Plan::load(plan_path)?;
    if let Some(a) = app {
        apps(&plan_v, Some(a))?;
    }
    let dir = plan_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let repo = load(ctx, plan_path).map(|l| l.repo);
    let router = lifeboat_server::routers(dir.clone());
    let connect = platform::connector(&plan_v);
    loop {
        let now = OffsetDateTime::now_utc();
        let src = lifeboat_orchestrator::status::Sources {
            plan: &plan_v,
            repo: repo.as_ref().map_err(crate::error_line),
            router: &*router,
            refresh: every,
            only: app,
        };
        let mut st = lifeboat_orchestrator::status::collect(&src, now);
        let mut results = check::run(&plan_v, repo.as_ref().map_err(crate::error_line), &connect, &*router);
        results.extend(lifeboat_server::coord::check(&plan_v, &dir));
        st.with_checks(&plan_v, &results, now, every);
        let healthy = st.apps.iter().all(|a| {
            matches!(
                a.health,
                lifeboat_orchestrator::status::Health::Ok | lifeboat_orchestrator::status::Health::Warning
            )
        });
        if ctx.json {
            println!("{}", serde_json::to_string(&st)?);
        } else {
            if watch {
                // Clear the screen and go home, then redraw.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", lifeboat_orchestrator::status::table(&st));
        }
        if !watch {
            return Ok(healthy);
        }
        std::thread::sleep(every);
    }
}

/// `alerts PLAN`: Prometheus alerting rules from the plan's objectives.
pub fn alerts(
    plan_path: &Path,
    out: Option<&Path>,
    rpo_for: Duration,
    repository_check_every: Duration,
) -> Result<bool> {
    let plan_v = Plan::load(plan_path)?;
    let text = lifeboat_api::alerts::rules(
        &plan_v,
        &lifeboat_api::alerts::AlertOptions {
            rpo_for,
            check_refresh: lifeboat_orchestrator::status::DEFAULT_CHECK_REFRESH,
            repository_check_every,
        },
    );
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(true)
}

/// `token new NAME --role R --file F`: prints a new token once and adds its hash to the file.
pub fn new_token(name: &str, role: crate::cli::TokenRole, file: &Path) -> Result<bool> {
    let role = match role {
        crate::cli::TokenRole::Viewer => lifeboat_api::auth::Role::Viewer,
        crate::cli::TokenRole::Operator => lifeboat_api::auth::Role::Operator,
    };
    let token = lifeboat_api::auth::add_token(file, name, role)?;
    println!("{token}");
    eprintln!(
        "token {name} ({}) added to {}: the line above is the token, shown only now",
        role.as_str(),
        file.display()
    );
    Ok(true)
}

/// The plan's server, its events printed one line each: with a time on stderr, or as JSON lines
/// on stdout with `--json` (a failover's step lines only without it).
fn server(ctx: &Ctx, plan_path: &Path) -> Result<Arc<Server>> {
    Ok(server_with_board(ctx, plan_path)?.0)
}

/// The server of a command that acts (`backup --plan`, `failover`, `failback`, `drill`, `sync`).
/// On a plan with `coordination` the command leads while it runs, its term the fencing token of
/// every step (refused while a serve instance leads: [`ByHand::take`]); `without_coordination`
/// acts without a term, only when no etcd endpoint answers ([`ByHand::without`]).
fn acting(ctx: &Ctx, plan_path: &Path, without_coordination: bool) -> Result<Arc<Server>> {
    let mut s = server(ctx, plan_path)?;
    if s.plan.coordination.is_none() {
        if without_coordination {
            bail!(
                "--without-coordination: plan {} has no coordination section (nothing to act without)",
                s.plan.metadata.name
            );
        }
        return Ok(s);
    }
    if without_coordination {
        let line = ByHand::without(&s.plan, &s.plan_dir)?;
        tracing::warn!("{line}");
        return Ok(s);
    }
    let h = ByHand::take(&s.plan, &s.plan_dir, &operator())?;
    if !ctx.json {
        eprintln!(
            "{} leads plan {} while this command runs (term {}); the serve instances follow until it ends",
            h.holder, s.plan.metadata.name, h.term.revision
        );
    }
    Arc::get_mut(&mut s).expect("not shared yet").by_hand = Some(Arc::new(h));
    Ok(s)
}

/// Where the status board of `serve --listen` goes once it is made.
type BoardSlot = Arc<std::sync::OnceLock<Arc<lifeboat_api::Board>>>;

/// The server, and where its status board goes once `serve --listen` makes one: every event
/// is shown to it first.
fn server_with_board(ctx: &Ctx, plan_path: &Path) -> Result<(Arc<Server>, BoardSlot)> {
    let l = load(ctx, plan_path)?;
    let (json, log_json) = (ctx.json, ctx.log_json);
    let board: BoardSlot = Arc::default();
    let b = board.clone();
    let events = Arc::new(move |e: Event| {
        if let Some(b) = b.get() {
            b.observe(&e);
        }
        let now = OffsetDateTime::now_utc();
        if log_json {
            // Structured: one object per line on stderr, through tracing (main set it up).
            let (kind, app) = (e.kind(), e.app().unwrap_or(""));
            if e.is_failure() {
                tracing::warn!(kind, app, "{e}");
            } else {
                tracing::info!(kind, app, "{e}");
            }
            return;
        }
        match (&e, json) {
            (Event::Progress { .. }, true) => {}
            (Event::Progress { line }, false) => eprintln!("  {line}"),
            (Event::Watch(w), true) => println!("{}", json!({"time": now.to_string(), "event": format!("{w:?}")})),
            (_, true) => println!("{}", json!({"time": now.to_string(), "event": e.to_string()})),
            (_, false) => eprintln!("{} {e}", now.time()),
        }
    });
    Ok((Server::new(l.plan, l.dir, l.repo, events), board))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
