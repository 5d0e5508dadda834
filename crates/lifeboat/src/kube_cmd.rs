//! `backup kube`, `restore --to kube`, `backup etcd`: argument handling and printing.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use lifeboat_kube::restore::{load, Existing};
use lifeboat_kube::{Cluster, RestoreOptions};
use serde_json::json;

use crate::cli::RestoreArgs;
use crate::commands::Ctx;
use crate::progress::bytes;

pub fn backup(
    ctx: &Ctx,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    opts: lifeboat_kube::BackupOptions,
) -> Result<bool> {
    let repo = ctx.open()?;
    let cluster = Cluster::connect(kubeconfig.as_deref(), context.as_deref())?;
    let _lock = repo.lock(false, "backup kube", ctx.lock_wait)?;
    if opts.volumes {
        warn_missing_helper(&cluster, &opts.helper_image);
    }
    let out = lifeboat_kube::backup(&repo, &cluster, &opts)?;
    let s = &out.snapshot.summary;
    let m = &out.manifest;
    ctx.print(
        json!({
            "snapshot_id": out.snapshot_id,
            "context": m.context,
            "server": m.server,
            "server_version": m.server_version,
            "objects": out.objects,
            "resources": m.resources,
            "skipped": m.skipped,
            "namespaces": m.namespaces,
            "errors": m.errors,
            "hooks": m.hooks,
            "blobs_added": s.blobs_added,
            "bytes_added": s.bytes_added,
            "seconds": s.seconds,
        }),
        || {
            for e in &m.errors {
                eprintln!("error: {e}");
            }
            // Groups left out because their discovery failed (an aggregated API that is down).
            for g in m.skipped.iter().filter(|s| s.contains("discovery failed")) {
                eprintln!("skipped: {g}");
            }
            println!("namespaces: {}", m.namespaces.join(", "));
            println!(
                "snapshot {} saved from {} ({} {}): {} objects of {} resource types, {} added to the repository, {:.2} s",
                out.snapshot_id.short(),
                m.context,
                m.server,
                m.server_version,
                out.objects,
                m.resources.len(),
                bytes(s.bytes_added),
                s.seconds
            );
        },
    );
    Ok(m.errors.is_empty())
}

/// Says so before the work starts when no node has the helper image (the nodes would have to
/// pull it; an air-gapped cluster cannot, and each helper then fails naming the image).
fn warn_missing_helper(cluster: &Cluster, image: &str) {
    match cluster.has_image(image) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "warning: helper image {image} is on no node of {}: volume data can only be read or written if the nodes can pull it (--helper-image names another)",
            cluster.context()
        ),
        Err(e) => eprintln!("warning: cannot check for the helper image {image}: {e}"),
    }
}

fn pairs(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for v in values {
        match v.split_once('=') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                out.insert(a.to_string(), b.to_string());
            }
            _ => bail!("{flag} {v:?}: expected A=B"),
        }
    }
    Ok(out)
}

pub fn restore(ctx: &Ctx, args: &RestoreArgs, context: Option<&str>) -> Result<bool> {
    if !args.name_prefix.is_empty() || !args.secrets.is_empty() || args.load_images.is_some() {
        bail!("--name-prefix, --secret and --load-images apply to --to docker only");
    }
    let opts = RestoreOptions {
        namespace_map: pairs("--namespace-map", &args.namespace_map)?,
        storage_class_map: pairs("--storage-class-map", &args.storage_class_map)?,
        replicas: args.replicas,
        existing: match args.existing.as_deref() {
            Some("update") => Existing::Update,
            _ => Existing::Skip,
        },
        dry_run: args.dry_run,
        no_volume_data: args.no_volume_data,
        helper_image: args.helper_image.clone(),
        volume_base: Default::default(),
        hold: false,
        isolated: None,
    };
    let repo = ctx.open()?;
    let _lock = repo.lock(false, "restore", ctx.lock_wait)?;
    let (id, snap) = repo.find_snapshot(&args.snapshot)?;
    if snap.kind != "kube" {
        bail!("snapshot {} is a {} snapshot, not a kube one", id.short(), snap.kind);
    }
    let stored = load(&repo, &id.to_string(), &snap.tree)?;
    let cluster = Cluster::connect(args.kubeconfig.as_deref(), context)?;
    if !stored.volume_data.is_empty() && !opts.no_volume_data && !opts.dry_run {
        warn_missing_helper(&cluster, &opts.helper_image);
    }
    let started = Instant::now();
    let report = lifeboat_kube::restore(&repo, &cluster, &stored, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    #[derive(serde::Serialize)]
    struct Out<'a> {
        snapshot_id: String,
        context: &'a str,
        dry_run: bool,
        items: &'a [lifeboat_kube::ItemResult],
        failed: usize,
        seconds: f64,
    }
    ctx.print(
        Out {
            snapshot_id: id.to_string(),
            context: cluster.context(),
            dry_run: opts.dry_run,
            items: &report.items,
            failed: report.failed,
            seconds: secs,
        },
        || {
            for i in &report.items {
                println!(
                    "{:<8} {:<6} {}/{}{}",
                    i.status,
                    i.action,
                    i.kind,
                    match &i.namespace {
                        Some(ns) => format!("{ns}/{}", i.name),
                        None => i.name.clone(),
                    },
                    i.message.as_ref().map(|m| format!("  ({m})")).unwrap_or_default()
                );
            }
            let what = if opts.dry_run {
                "dry run, nothing changed"
            } else {
                "restored"
            };
            println!(
                "{what}: snapshot {} into {}: {} objects, {} failed, {secs:.2} s",
                id.short(),
                cluster.context(),
                report.items.len(),
                report.failed
            );
        },
    );
    Ok(report.failed == 0)
}

pub fn backup_etcd(ctx: &Ctx, endpoint: lifeboat_etcd::Endpoint, tags: Vec<String>) -> Result<bool> {
    let repo = ctx.open()?;
    let _lock = repo.lock(false, "backup etcd", ctx.lock_wait)?;
    let out = lifeboat_etcd::backup(&repo, &endpoint, &tags)?;
    let m = &out.manifest;
    let s = &out.snapshot.summary;
    ctx.print(
        json!({"snapshot_id": out.snapshot_id, "manifest": m, "bytes_added": s.bytes_added, "seconds": s.seconds}),
        || {
            println!(
                "snapshot {} saved from etcd {} ({}, revision {}): {} checked against its SHA-256, {} added to the repository, {:.2} s",
                out.snapshot_id.short(),
                m.endpoint,
                m.version,
                m.revision,
                bytes(m.size),
                bytes(s.bytes_added),
                s.seconds
            );
        },
    );
    Ok(true)
}
