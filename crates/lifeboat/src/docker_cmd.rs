//! `backup docker`, `restore --to docker`, `diff`: argument handling and printing.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lifeboat_docker::restore::{load, Stored};
use lifeboat_docker::{diff, Existing, RestoreOptions, Selection, Site};
use serde_json::json;

use crate::cli::{HelperCmd, RestoreArgs};
use crate::commands::Ctx;
use crate::progress::{bytes, Ticker};

fn connect(host: Option<&str>) -> Result<Site> {
    let host = host.map(str::to_string).unwrap_or_else(lifeboat_docker::default_host);
    Ok(Site::connect(&host, &lifeboat_docker::Transport::from_env())?)
}

pub fn backup(
    ctx: &Ctx,
    host: Option<String>,
    labels: Vec<String>,
    stack: Option<String>,
    no_volumes: bool,
    tags: Vec<String>,
) -> Result<bool> {
    let repo = ctx.open()?;
    let site = connect(host.as_deref())?;
    let _lock = repo.lock(false, "backup docker", ctx.lock_wait)?;
    let progress = Arc::new(lifeboat_fs::backup::Progress::default());
    let p = progress.clone();
    let ticker = Ticker::start(ctx.json, move || {
        format!(
            "{} files, {} read",
            p.files.load(Relaxed),
            bytes(p.bytes_read.load(Relaxed))
        )
    });
    let opts = lifeboat_docker::BackupOptions {
        selection: Selection { labels, stack },
        volumes: !no_volumes,
        tags,
    };
    let out = lifeboat_docker::backup(&repo, &site, &opts, &progress)?;
    drop(ticker);
    let s = &out.snapshot.summary;
    let cap = &out.capture;
    let m = &cap.manifest;
    let counts = json!({
        "containers": cap.containers.len(), "services": cap.services.len(), "networks": cap.networks.len(),
        "volumes": cap.volumes.len(), "configs": cap.configs.len(), "secrets": cap.secrets.len(), "nodes": cap.nodes.len(),
    });
    ctx.print(
        json!({
            "snapshot_id": out.snapshot_id,
            "host": site.host(),
            "objects": counts,
            "files": s.files,
            "bytes_read": s.bytes_read,
            "blobs_added": s.blobs_added,
            "bytes_added": s.bytes_added,
            "seconds": s.seconds,
            "secrets_uncaptured": m.secrets_uncaptured,
            "errors": m.errors,
        }),
        || {
            for e in &m.errors {
                eprintln!("error: {e}");
            }
            for n in &m.secrets_uncaptured {
                eprintln!("warning: the value of secret {n} was not captured; restore will ask for it with --secret {n}=@FILE");
            }
            println!(
                "snapshot {} saved from {}: {} containers, {} services, {} networks, {} volumes ({} read), {} configs, {} secrets; {} added to the repository, {:.2} s",
                out.snapshot_id.short(),
                site.host(),
                cap.containers.len(),
                cap.services.len(),
                cap.networks.len(),
                cap.volumes.len(),
                bytes(s.bytes_read),
                cap.configs.len(),
                cap.secrets.len(),
                bytes(s.bytes_added),
                s.seconds
            );
        },
    );
    Ok(m.errors.is_empty() && m.secrets_uncaptured.is_empty())
}

fn load_docker(ctx: &Ctx, repo: &lifeboat_repo::Repository, query: &str) -> Result<(String, Stored)> {
    let (id, snap) = repo.find_snapshot(query)?;
    if snap.kind != "docker" {
        bail!("snapshot {} is a {} snapshot, not a docker one", id.short(), snap.kind);
    }
    let _ = ctx;
    let stored = load(repo, &id.to_string(), &snap.tree)?;
    Ok((id.to_string(), stored))
}

pub fn restore(ctx: &Ctx, args: &RestoreArgs, host: Option<&str>) -> Result<bool> {
    if args.kubeconfig.is_some() || !args.namespace_map.is_empty() || !args.storage_class_map.is_empty() {
        bail!("--kubeconfig, --namespace-map and --storage-class-map apply to --to kube only");
    }
    let mut secrets = BTreeMap::new();
    for s in &args.secrets {
        let Some((name, file)) = s.split_once("=@") else {
            bail!("--secret {s:?}: expected NAME=@FILE");
        };
        let value = std::fs::read(file).with_context(|| format!("--secret {name}: cannot read {file}"))?;
        secrets.insert(name.to_string(), value);
    }
    let opts = RestoreOptions {
        replicas: args.replicas,
        name_prefix: args.name_prefix.clone(),
        existing: match args.existing.as_deref() {
            Some("skip") => Existing::Skip,
            Some("update") => Existing::Update,
            _ => Existing::Fail,
        },
        dry_run: args.dry_run,
        secrets,
        load_images: args.load_images.clone(),
        no_volume_data: args.no_volume_data,
        isolate: args.isolated,
    };
    let repo = ctx.open()?;
    let _lock = repo.lock(false, "restore", ctx.lock_wait)?;
    let (id, stored) = load_docker(ctx, &repo, &args.snapshot)?;
    let site = connect(host)?;
    let started = Instant::now();
    let report = lifeboat_docker::restore(&repo, &site, &stored, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    ctx.print(
        json!({"snapshot_id": id, "target": site.host(), "dry_run": opts.dry_run, "items": report.items,
               "failed": report.failed, "seconds": secs}),
        || {
            for i in &report.items {
                let status = match i.status.as_str() {
                    "planned" => "would",
                    "failed" => "FAILED",
                    _ => "",
                };
                println!(
                    "{status:<6} {:<6} {:<9} {}{}",
                    i.action,
                    i.kind,
                    i.name,
                    i.detail.as_ref().map(|d| format!("  ({d})")).unwrap_or_default()
                );
            }
            let what = if opts.dry_run {
                "dry run, nothing changed"
            } else {
                "restored"
            };
            println!(
                "{what}: snapshot {} onto {}: {} items, {} failed, {secs:.2} s",
                &id[..8],
                site.host(),
                report.items.len(),
                report.failed
            );
        },
    );
    Ok(report.failed == 0)
}

pub fn diff_cmd(ctx: &Ctx, a: &str, b: &str, host: Option<&str>) -> Result<bool> {
    let repo = ctx.open()?;
    let (id, stored) = load_docker(ctx, &repo, a)?;
    let (other, live) = if b == "live" {
        let site = connect(host)?;
        let cap = site.capture(&stored.capture.manifest.selection)?;
        (format!("live {}", site.host()), cap)
    } else {
        let (bid, s) = load_docker(ctx, &repo, b)?;
        (bid, s.capture)
    };
    let d = diff::diff(&stored.capture, &live);
    ctx.print(json!({"snapshot_id": id, "other": other, "differences": d}), || {
        for x in &d {
            println!("{:<8} {:<9} {}", x.change, x.kind, x.name);
            for f in &x.fields {
                println!("           {}: {} -> {}", f.path, f.snapshot, f.live);
            }
        }
        println!("{} differences between snapshot {} and {other}", d.len(), &id[..8]);
    });
    Ok(true)
}

pub fn helper(cmd: HelperCmd) -> Result<bool> {
    match cmd {
        HelperCmd::Sleep => lifeboat_docker::helper::inside::sleep(),
        HelperCmd::ReadFiles { dir } => {
            println!("{}", lifeboat_docker::helper::inside::read_files(&dir)?);
            Ok(true)
        }
        HelperCmd::VolumePrepare { dir } => {
            lifeboat_docker::helper::inside::volume_prepare(&dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            Ok(true)
        }
        HelperCmd::Forward { maps } => {
            lifeboat_docker::helper::inside::forward(&maps)?;
            Ok(true)
        }
        HelperCmd::VolumeCommit { dir } => {
            lifeboat_docker::helper::inside::volume_commit(&dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            Ok(true)
        }
    }
}
