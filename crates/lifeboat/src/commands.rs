use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lifeboat_fs::backup::{self, BackupOptions, Parent};
use lifeboat_fs::restore;
use lifeboat_model::NodeKind;
use lifeboat_repo::check::{self, CheckProgress, Severity};
use lifeboat_repo::forget::Policy;
use lifeboat_repo::keys::KdfParams;
use lifeboat_repo::{open_location, prune, RepoError, Repository};
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::{BackupArgs, BackupCmd, Cli, Command, KeyCmd, PlanCmd, RepoCmd, TokenCmd};
use crate::docker_cmd;
use crate::dr_cmd;
use crate::kube_cmd;
use crate::progress::{bytes, Ticker};

pub(crate) struct Ctx {
    location: String,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) lock_wait: Duration,
    /// Log lines as JSON objects (`--log-format json`).
    pub(crate) log_json: bool,
}

fn default_location() -> String {
    let base = std::env::var("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".local/share")
    });
    base.join("lifeboat/repo").display().to_string()
}

/// A password from `file` or the variable `env`, wiped from this process's memory when dropped.
fn read_password(file: Option<&PathBuf>, env: &str, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(f) = file {
        let mut pw =
            Zeroizing::new(std::fs::read(f).with_context(|| format!("cannot read {what} file {}", f.display()))?);
        if let Some(warning) = lifeboat_model::redact::loose_permissions(f) {
            tracing::warn!("{what} file {warning}");
        }
        while pw.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            pw.pop();
        }
        if pw.is_empty() {
            bail!("{what} file {} is empty", f.display());
        }
        return Ok(pw);
    }
    match std::env::var_os(env) {
        Some(p) if !p.is_empty() => Ok(Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(p))),
        _ => bail!("no {what} given: set {env} or pass a password file"),
    }
}

impl Ctx {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>> {
        read_password(self.password_file.as_ref(), "LIFEBOAT_PASSWORD", "password")
    }

    pub(crate) fn open(&self) -> Result<Repository> {
        self.open_at(&self.location)
    }

    /// Opens the repository at `location` (a plan's) with this invocation's password.
    pub(crate) fn open_at(&self, location: &str) -> Result<Repository> {
        let backend = open_location(location)?;
        let pw = self.password()?;
        Ok(Repository::open(backend, &pw)?)
    }

    /// Prints `value` as JSON with `--json` (written out as it is serialised: a large report is
    /// never held twice), else runs `human`.
    pub(crate) fn print(&self, value: impl serde::Serialize, human: impl FnOnce()) {
        if self.json {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            // A closed stdout (a pipe to `head`) is not worth a panic.
            let _ = serde_json::to_writer_pretty(&mut out, &value)
                .map_err(std::io::Error::from)
                .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
                .and_then(|()| std::io::Write::flush(&mut out));
        } else {
            human();
        }
    }
}

/// Runs a command. `Ok(false)` means it ran but some items failed (listed already).
pub fn run(args: Cli) -> Result<bool> {
    let ctx = Ctx {
        location: args.repo.clone().unwrap_or_else(default_location),
        password_file: args.password_file.clone(),
        json: args.json,
        lock_wait: Duration::from_secs(args.lock_wait),
        log_json: args.log_format == crate::cli::LogFormat::Json,
    };
    match args.command {
        Command::Repo(RepoCmd::Init) => init(&ctx),
        Command::Repo(RepoCmd::Check { read_data }) => check(&ctx, read_data),
        Command::Repo(RepoCmd::Key(k)) => key(&ctx, k),
        Command::Backup(BackupArgs {
            cmd:
                Some(BackupCmd::Files {
                    paths,
                    tags,
                    no_parent,
                    parent,
                }),
            ..
        }) => backup_files(&ctx, paths, tags, no_parent, parent),
        Command::Snapshots => snapshots(&ctx),
        Command::Show { snapshot, recursive } => show(&ctx, &snapshot, recursive),
        Command::Restore(r) => match r.to.strip_prefix("docker") {
            Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                let host = rest.strip_prefix(':').filter(|h| !h.is_empty());
                docker_cmd::restore(&ctx, &r, host)
            }
            _ => match r.to.strip_prefix("kube") {
                Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                    let context = rest.strip_prefix(':').filter(|c| !c.is_empty());
                    kube_cmd::restore(&ctx, &r, context)
                }
                _ => restore_cmd(&ctx, &r.snapshot, &r.to, r.allow_special),
            },
        },
        Command::Backup(BackupArgs {
            cmd:
                Some(BackupCmd::Etcd {
                    endpoints,
                    cacert,
                    cert,
                    key,
                    tags,
                }),
            ..
        }) => kube_cmd::backup_etcd(
            &ctx,
            lifeboat_etcd::Endpoint {
                url: endpoints,
                cacert,
                cert,
                key,
            },
            tags,
        ),
        Command::Backup(BackupArgs {
            cmd:
                Some(BackupCmd::Kube {
                    kubeconfig,
                    context,
                    namespaces,
                    all_namespaces: _,
                    exclude_namespaces,
                    selector,
                    include,
                    exclude,
                    no_volumes,
                    helper_image,
                    tags,
                }),
            ..
        }) => kube_cmd::backup(
            &ctx,
            kubeconfig,
            context,
            lifeboat_kube::BackupOptions {
                selection: lifeboat_kube::Selection {
                    namespaces,
                    exclude_namespaces,
                    label_selector: selector,
                    include,
                    exclude,
                },
                tags,
                volumes: !no_volumes,
                helper_image,
            },
        ),
        Command::Diff { snapshot, other, host } => docker_cmd::diff_cmd(&ctx, &snapshot, &other, host.as_deref()),
        Command::Helper(h) => docker_cmd::helper(h),
        Command::Backup(BackupArgs {
            cmd:
                Some(BackupCmd::Docker {
                    host,
                    labels,
                    stack,
                    no_volumes,
                    tags,
                }),
            ..
        }) => docker_cmd::backup(&ctx, host, labels, stack, no_volumes, tags),
        Command::Forget(f) => forget(
            &ctx,
            Policy {
                last: f.keep_last,
                hourly: f.keep_hourly,
                daily: f.keep_daily,
                weekly: f.keep_weekly,
                monthly: f.keep_monthly,
                yearly: f.keep_yearly,
            },
            f.prune.then_some(f.min_age),
            f.dry_run,
        ),
        Command::Prune { dry_run, min_age } => prune_cmd(&ctx, dry_run, min_age),
        Command::Unlock { all } => unlock_cmd(&ctx, all),
        Command::Backup(BackupArgs {
            cmd: None,
            plan: Some(plan),
            app,
            without_coordination,
        }) => dr_cmd::backup(&ctx, &plan, app.as_deref(), without_coordination),
        Command::Backup(BackupArgs {
            cmd: None, plan: None, ..
        }) => {
            bail!("say what to back up: a subcommand (files, docker, kube, etcd) or --plan PLAN")
        }
        Command::Plan(PlanCmd::Check { plan }) => dr_cmd::check(&ctx, &plan),
        Command::Runbook { plan, output } => dr_cmd::runbook(&ctx, &plan, output.as_deref()),
        Command::Failover(a) => dr_cmd::switch(&ctx, &a, lifeboat_orchestrator::journal::Kind::Failover),
        Command::Failback(a) => dr_cmd::switch(&ctx, &a, lifeboat_orchestrator::journal::Kind::Failback),
        Command::Watch { plan, app, witness } => dr_cmd::watch(&ctx, &plan, app.as_deref(), witness),
        Command::Serve {
            plan,
            app,
            no_watch,
            sync_every,
            instance,
            site,
            api,
        } => dr_cmd::serve(
            &ctx,
            &plan,
            &dr_cmd::ServeArgs {
                only: app,
                no_watch,
                sync_every,
                instance,
                site,
                api,
            },
        ),
        Command::Sync {
            plan,
            app,
            once,
            every,
            dry_run,
            without_coordination,
        } => dr_cmd::sync(
            &ctx,
            &plan,
            app.as_deref(),
            &dr_cmd::SyncArgs {
                once,
                every,
                dry_run,
                without_coordination,
            },
        ),
        Command::Drill {
            plan,
            app,
            site,
            report,
            health_timeout,
            without_coordination,
        } => dr_cmd::drill(
            &ctx,
            &plan,
            app.as_deref(),
            site,
            report.as_deref(),
            health_timeout,
            without_coordination,
        ),
        Command::Drills { plan, app } => dr_cmd::drills(&ctx, &plan, app.as_deref()),
        Command::Status {
            plan,
            app,
            watch,
            every,
        } => dr_cmd::status(&ctx, &plan, app.as_deref(), watch, every),
        Command::Alerts {
            plan,
            out,
            rpo_for,
            repository_check_every,
        } => dr_cmd::alerts(&plan, out.as_deref(), rpo_for, repository_check_every),
        Command::Token(TokenCmd::New { name, role, file }) => dr_cmd::new_token(&name, role, &file),
    }
}

fn kdf() -> KdfParams {
    KdfParams::default()
}

fn init(ctx: &Ctx) -> Result<bool> {
    let pw = ctx.password()?;
    let backend = open_location(&ctx.location)?;
    let repo = Repository::init(backend, &pw, kdf())?;
    ctx.print(json!({"location": repo.location(), "id": repo.config().id}), || {
        println!("created repository {} at {}", repo.config().id.short(), repo.location())
    });
    Ok(true)
}

fn key(ctx: &Ctx, cmd: KeyCmd) -> Result<bool> {
    let repo = ctx.open()?;
    match cmd {
        KeyCmd::Add { new_password_file } => {
            let pw = read_password(new_password_file.as_ref(), "LIFEBOAT_NEW_PASSWORD", "new password")?;
            let id = repo.add_key(&pw, kdf())?;
            ctx.print(json!({"added": id}), || println!("added key slot {id}"));
        }
        KeyCmd::List => {
            let keys = repo.list_keys()?;
            ctx.print(serde_json::to_value(&keys)?, || {
                println!("   {:<16} {:<25} {:<20} ARGON2ID", "ID", "CREATED", "HOST");
                for k in &keys {
                    println!(
                        "{:<2} {:<16} {:<25} {:<20} m={} KiB t={}",
                        if k.current { "*" } else { "" },
                        &k.id[..16],
                        k.created,
                        format!("{}@{}", k.username, k.hostname),
                        k.memory_kib,
                        k.iterations
                    );
                }
            });
        }
        KeyCmd::Remove { id } => {
            let removed = repo.remove_key(&id)?;
            ctx.print(json!({"removed": removed}), || println!("removed key slot {removed}"));
        }
    }
    Ok(true)
}

fn backup_files(
    ctx: &Ctx,
    paths: Vec<PathBuf>,
    tags: Vec<String>,
    no_parent: bool,
    parent: Option<String>,
) -> Result<bool> {
    let repo = ctx.open()?;
    let _lock = repo.lock(false, "backup files", ctx.lock_wait)?;
    let parent = match (no_parent, parent) {
        (true, _) => Parent::None,
        (false, Some(q)) => Parent::Snapshot(repo.find_snapshot(&q)?.0),
        (false, None) => Parent::Auto,
    };
    let progress = Arc::new(backup::Progress::default());
    let p = progress.clone();
    let ticker = Ticker::start(ctx.json, move || {
        format!(
            "{} files, {} dirs, {} read",
            p.files.load(Relaxed),
            p.dirs.load(Relaxed),
            bytes(p.bytes_read.load(Relaxed))
        )
    });
    let out = backup::backup(&repo, &BackupOptions { paths, tags, parent }, &progress)?;
    drop(ticker);
    let s = &out.snapshot.summary;
    ctx.print(
        json!({
            "snapshot_id": out.snapshot_id,
            "parent": out.snapshot.parent,
            "files": s.files,
            "dirs": s.dirs,
            "other": s.other_nodes,
            "files_read": s.files_read,
            "files_unchanged": s.files_unchanged,
            "bytes_total": s.bytes_total,
            "bytes_read": s.bytes_read,
            "blobs_added": s.blobs_added,
            "bytes_added": s.bytes_added,
            "seconds": s.seconds,
            "errors": out.errors,
        }),
        || {
            for e in &out.errors {
                eprintln!("error: {}: {}", e.path, e.error);
            }
            println!(
                "snapshot {} saved: {} files ({} read, {} unchanged), {} dirs, {} read, {} added to the repository, {:.2} s",
                out.snapshot_id.short(),
                s.files,
                s.files_read,
                s.files_unchanged,
                s.dirs,
                bytes(s.bytes_read),
                bytes(s.bytes_added),
                s.seconds
            );
            if !out.errors.is_empty() {
                println!("{} items could not be backed up (listed above); the snapshot holds the rest", out.errors.len());
            }
        },
    );
    Ok(out.errors.is_empty())
}

fn snapshots(ctx: &Ctx) -> Result<bool> {
    let repo = ctx.open()?;
    let snaps = repo.snapshots()?;
    let list: Vec<_> = snaps
        .iter()
        .map(|(id, s)| {
            let mut v = serde_json::to_value(s).expect("serialisable");
            v["id"] = json!(id);
            v
        })
        .collect();
    ctx.print(json!(list), || {
        println!(
            "{:<10} {:<21} {:<6} {:<16} {:>10}  PATHS",
            "ID", "TIME", "KIND", "HOST", "SIZE"
        );
        for (id, s) in &snaps {
            println!(
                "{:<10} {:<21} {:<6} {:<16} {:>10}  {}",
                id.short(),
                s.time
                    .format(time::macros::format_description!(
                        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
                    ))
                    .unwrap_or_default(),
                s.kind,
                s.hostname,
                bytes(s.summary.bytes_total),
                s.paths.join(" ")
            );
        }
        println!("{} snapshots", snaps.len());
    });
    Ok(true)
}

fn show(ctx: &Ctx, query: &str, recursive: bool) -> Result<bool> {
    let repo = ctx.open()?;
    let (id, snap) = repo.find_snapshot(query)?;
    let mut entries = Vec::new();
    let mut stack = vec![(String::new(), snap.tree, 0usize)];
    while let Some((prefix, tree_id, depth)) = stack.pop() {
        let tree = repo.load_tree(&tree_id)?;
        for n in tree.nodes.iter().rev() {
            let path = format!("{prefix}/{}", n.name.lossy());
            let descend =
                n.kind == NodeKind::Dir && (recursive || snap.paths.iter().any(|p| p.starts_with(&path) && p != &path));
            if let (true, Some(sub)) = (descend, n.subtree) {
                stack.push((path.clone(), sub, depth + 1));
            }
            entries.push((path, n.clone()));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let listing: Vec<_> = entries
        .iter()
        .map(|(p, n)| json!({"path": p, "type": n.kind, "size": n.size, "mode": format!("{:o}", n.mode), "uid": n.uid, "gid": n.gid}))
        .collect();
    ctx.print(json!({"id": id, "snapshot": snap, "entries": listing}), || {
        println!("snapshot {id}");
        println!("  time     {}", snap.time);
        println!("  kind     {}", snap.kind);
        println!("  host     {} (user {})", snap.hostname, snap.username);
        println!("  paths    {}", snap.paths.join(" "));
        if let Some(p) = snap.parent {
            println!("  parent   {}", p.short());
        }
        let s = &snap.summary;
        println!(
            "  content  {} files, {} dirs, {} others, {}; {} added in {:.2} s",
            s.files,
            s.dirs,
            s.other_nodes,
            bytes(s.bytes_total),
            bytes(s.bytes_added),
            s.seconds
        );
        for (p, n) in &entries {
            println!(
                "  {:<8} {:>6o} {:>10}  {p}",
                format!("{:?}", n.kind).to_lowercase(),
                n.mode,
                n.size
            );
        }
    });
    Ok(true)
}

fn restore_cmd(ctx: &Ctx, query: &str, to: &str, allow_special: bool) -> Result<bool> {
    let Some(dir) = to.strip_prefix("files:") else {
        bail!("unsupported restore target {to:?}: use files:DIR, docker[:HOST] or kube[:CONTEXT]");
    };
    if dir.is_empty() {
        bail!("restore target files: needs a directory (files:DIR)");
    }
    let repo = ctx.open()?;
    let _lock = repo.lock(false, "restore", ctx.lock_wait)?;
    let (id, snap) = repo.find_snapshot(query)?;
    let started = Instant::now();
    let progress = Arc::new(restore::Progress::default());
    let p = progress.clone();
    let ticker = Ticker::start(ctx.json, move || {
        format!(
            "{} files, {} written",
            p.files.load(Relaxed),
            bytes(p.bytes.load(Relaxed))
        )
    });
    // A container's data on the host: its device nodes and set-id files are no longer confined by
    // the container's device cgroup and namespaces. A `files` snapshot came from a host and goes
    // back as it was.
    let specials = if snap.kind == "files" || allow_special {
        restore::Specials::Keep
    } else {
        restore::Specials::Drop
    };
    let out = restore::restore_with(&repo, &snap.tree, std::path::Path::new(dir), &progress, specials)?;
    drop(ticker);
    let secs = started.elapsed().as_secs_f64();
    ctx.print(
        json!({"snapshot_id": id, "target": dir, "files": out.files, "dirs": out.dirs, "other": out.other,
               "bytes": out.bytes, "seconds": secs, "errors": out.errors,
               "skipped_devices": out.skipped_devices, "setid_removed": out.setid_removed}),
        || {
            for e in &out.errors {
                eprintln!("error: {}: {}", e.path, e.error);
            }
            for p in &out.skipped_devices {
                eprintln!(
                    "skipped device node {p} (a {} snapshot; --allow-special keeps it)",
                    snap.kind
                );
            }
            for p in &out.setid_removed {
                eprintln!(
                    "removed the set-uid/set-gid bits of {p} (a {} snapshot; --allow-special keeps them)",
                    snap.kind
                );
            }
            println!(
                "restored snapshot {} into {dir}: {} files, {} dirs, {} others, {} in {secs:.2} s",
                id.short(),
                out.files,
                out.dirs,
                out.other,
                bytes(out.bytes)
            );
            if !out.errors.is_empty() {
                println!("{} items could not be restored (listed above)", out.errors.len());
            }
        },
    );
    Ok(out.errors.is_empty())
}

fn check(ctx: &Ctx, read_data: bool) -> Result<bool> {
    let repo = ctx.open()?;
    let _lock = repo.lock(false, "check", ctx.lock_wait)?;
    let progress = Arc::new(CheckProgress::default());
    let p = progress.clone();
    let ticker = Ticker::start(ctx.json, move || {
        format!(
            "packs read: {}/{}, {}",
            p.packs_done.load(Relaxed),
            p.packs_total.load(Relaxed),
            bytes(p.bytes_done.load(Relaxed))
        )
    });
    let report = check::check(&repo, read_data, &progress)?;
    drop(ticker);
    let errors = report.errors();
    ctx.print(serde_json::to_value(&report)?, || {
        for p in &report.problems {
            let sev = if p.severity == Severity::Error {
                "error"
            } else {
                "warning"
            };
            println!("{sev}: {}: {}", p.file, p.message);
        }
        println!(
            "checked {} snapshots, {} index files, {} packs, {} blobs, {} trees{}: {}",
            report.snapshots,
            report.index_files,
            report.packs,
            report.blobs,
            report.trees_checked,
            if read_data {
                format!(", read {} packs ({})", report.packs_read, bytes(report.bytes_read))
            } else {
                String::new()
            },
            if errors == 0 {
                "no errors".to_string()
            } else {
                format!("{errors} errors")
            }
        );
    });
    if errors > 0 && !ctx.json {
        eprintln!("lifeboat: error: the repository has {errors} errors (listed above)");
    }
    if errors == 0 {
        // `lifeboat status` and the metrics show how old the last passing check is.
        lifeboat_orchestrator::status::record_repo_check(&repo, time::OffsetDateTime::now_utc())?;
    }
    Ok(errors == 0)
}

fn forget(ctx: &Ctx, policy: Policy, then_prune: Option<std::time::Duration>, dry_run: bool) -> Result<bool> {
    let repo = ctx.open()?;
    let _lock = repo.lock(true, "forget", ctx.lock_wait)?;
    let snaps = repo.snapshots()?;
    // What DR state references (staged on a hot standby, recovery point of an unfinished
    // operation) is kept whatever the policy says.
    let protected = lifeboat_orchestrator::journal::referenced_snapshots(&repo)?;
    let decisions = policy.apply_protecting(&snaps, &protected)?;
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            repo.remove_snapshot(&d.id)?;
        }
    }
    let removed = decisions.iter().filter(|d| !d.keep).count();
    let pruned = match then_prune {
        Some(min_age) => Some(prune::prune(&repo, &prune::PruneOptions { dry_run, min_age })?),
        None => None,
    };
    ctx.print(
        json!({"dry_run": dry_run, "decisions": decisions, "prune": pruned}),
        || {
            for d in &decisions {
                println!(
                    "{} {}{}",
                    if d.keep { "keep  " } else { "remove" },
                    d.id.short(),
                    if d.keep {
                        format!(" ({})", d.reasons.join(", "))
                    } else {
                        String::new()
                    }
                );
            }
            println!(
                "{} {} of {} snapshots",
                if dry_run { "would remove" } else { "removed" },
                removed,
                decisions.len()
            );
            if let Some(r) = &pruned {
                print_prune(r);
            }
        },
    );
    Ok(true)
}

fn print_prune(r: &prune::PruneReport) {
    println!(
        "{}{} packs deleted, {} repacked into {}, {} unindexed removed, {} kept as younger than the margin; {} unused blobs and {} duplicates dropped; {} -> {}",
        if r.dry_run { "(dry run) " } else { "" },
        r.packs_deleted,
        r.packs_repacked,
        r.packs_written,
        r.packs_unindexed_deleted,
        r.packs_too_young,
        r.blobs_removed,
        r.duplicates_removed,
        bytes(r.bytes_before),
        bytes(r.bytes_after)
    );
}

fn unlock_cmd(ctx: &Ctx, all: bool) -> Result<bool> {
    let repo = ctx.open()?;
    let removed = repo.unlock(all)?;
    ctx.print(serde_json::to_value(&removed)?, || {
        for u in &removed {
            println!("removed {} ({}): {}", u.path, u.reason, u.holder);
        }
        println!("{} lock files removed", removed.len());
    });
    Ok(true)
}

fn prune_cmd(ctx: &Ctx, dry_run: bool, min_age: std::time::Duration) -> Result<bool> {
    let repo = ctx.open()?;
    let _lock = repo.lock(true, "prune", ctx.lock_wait)?;
    let r = match prune::prune(&repo, &prune::PruneOptions { dry_run, min_age }) {
        Ok(r) => r,
        Err(e @ RepoError::Damaged { .. }) => bail!("prune refused: {e}"),
        Err(e) => return Err(e.into()),
    };
    ctx.print(serde_json::to_value(&r)?, || print_prune(&r));
    Ok(true)
}
