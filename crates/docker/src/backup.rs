//! `backup docker`: one engine's applications, with their volumes and secrets, into one snapshot.
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use lifeboat_fs::archive::TreeAssembler;
use lifeboat_fs::backup::Progress;
use lifeboat_fs::chunk::Chunker;
use lifeboat_model::{Id, Snapshot, SnapshotSummary};
use lifeboat_repo::Repository;
use serde_json::Value;

use crate::capture::{Capture, Selection, KINDS};
use crate::hooks::{self, Hook};
use crate::{str_at, DockerError, Site};

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub selection: Selection,
    /// Read the data of named volumes (`--no-volumes` turns it off).
    pub volumes: bool,
    pub tags: Vec<String>,
}

/// The result of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// What was captured, with the manifest (its `errors` and `secrets_uncaptured` say what is missing).
    pub capture: Capture,
}

/// The path of an object's document in a snapshot.
pub fn object_path(kind: &str, name: &str) -> String {
    format!("{kind}/{name}.json")
}

/// Backs up the applications `opts.selection` covers on `site` into a new snapshot.
///
/// Order: objects are read; pre hooks run; volumes are read; post hooks run; secrets are read by a
/// helper service; everything is stored and the snapshot written last. A hook failing with policy
/// `fail` aborts with [`DockerError::Hook`] before any snapshot is written (post hooks of containers
/// whose pre hook ran still run). A volume that cannot be read is recorded in the manifest's
/// `errors` and the backup goes on; so is a secret whose value cannot be read (listed in
/// `secrets_uncaptured`).
pub fn backup(
    repo: &Repository,
    site: &Site,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupOutcome, DockerError> {
    let started = Instant::now();
    let mut cap = site.capture(&opts.selection)?;
    cap.manifest.volumes_data = opts.volumes;
    let chunker = Chunker::new(repo);
    let mut asm = TreeAssembler::new();
    let now_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;

    if opts.volumes && !cap.volumes.is_empty() {
        let hooks = collect_hooks(site, &cap)?;
        let mut pre_done: Vec<&Hook> = Vec::new();
        let mut failure = None;
        for h in &hooks {
            match site.run_hook(h, "pre") {
                Ok(note) => {
                    cap.manifest.errors.extend(note);
                    pre_done.push(h);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            for name in cap.volumes.keys() {
                match site.read_volume(repo, name, progress) {
                    Ok(out) => {
                        for e in out.errors {
                            cap.manifest
                                .errors
                                .push(format!("volume {name}: {}: {}", e.path, e.error));
                        }
                        asm.add(format!("volumes/{name}/data").as_bytes(), out.root);
                    }
                    Err(e @ DockerError::Repo(_)) => {
                        failure = Some(e);
                        break;
                    }
                    Err(e) => cap.manifest.errors.push(format!("volume {name} not backed up: {e}")),
                }
            }
        }
        for h in pre_done {
            match site.run_hook(h, "post") {
                Ok(note) => cap.manifest.errors.extend(note),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }

    if !cap.secrets.is_empty() {
        let wanted: Vec<(String, String)> = cap
            .secrets
            .iter()
            .map(|(n, d)| (n.clone(), str_at(d, "/ID").unwrap_or_default().to_string()))
            .collect();
        let values = match site.read_secrets(&wanted) {
            Ok(v) => v,
            Err(e) => {
                cap.manifest.errors.push(format!("secret values not read: {e}"));
                Default::default()
            }
        };
        for (name, _) in &wanted {
            match values.get(name) {
                Some(v) => asm.add_bytes(&chunker, format!("secrets/{name}.value").as_bytes(), v, now_ns)?,
                None => cap.manifest.secrets_uncaptured.push(name.clone()),
            }
        }
    }

    let mut documents = 0u64;
    for kind in KINDS {
        for (name, doc) in cap.kind(kind) {
            let json = serde_json::to_vec_pretty(doc).expect("JSON values serialise");
            asm.add_bytes(&chunker, object_path(kind, name).as_bytes(), &json, now_ns)?;
            documents += 1;
        }
    }
    let manifest = serde_json::to_vec_pretty(&cap.manifest).expect("the manifest serialises");
    asm.add_bytes(&chunker, b"docker.json", &manifest, now_ns)?;
    let root = asm.finish(repo)?;

    let mut snapshot = Snapshot {
        time: time::OffsetDateTime::now_utc(),
        kind: "docker".into(),
        hostname: cap.manifest.engine_name.clone(),
        username: lifeboat_repo::username(),
        paths: vec![site.host().to_string()],
        tags: with_incomplete_tag(opts.tags.clone(), !cap.manifest.errors.is_empty()),
        tree: root.subtree.expect("finish stores the root"),
        parent: None,
        program_version: concat!("lifeboat ", env!("CARGO_PKG_VERSION")).into(),
        summary: SnapshotSummary {
            files: progress.files.load(Relaxed) + documents + 1,
            dirs: progress.dirs.load(Relaxed),
            other_nodes: progress.other.load(Relaxed),
            files_read: progress.files_read.load(Relaxed),
            files_unchanged: 0,
            bytes_total: progress.bytes_total.load(Relaxed),
            bytes_read: progress.bytes_read.load(Relaxed),
            blobs_added: 0,
            bytes_added: 0,
            seconds: 0.0,
            errors: cap.manifest.errors.len() as u64,
        },
    };
    let snapshot_id = repo.commit_snapshot(&mut snapshot, started)?;
    Ok(BackupOutcome {
        snapshot_id,
        snapshot,
        capture: cap,
    })
}

/// `tags`, with [`lifeboat_model::INCOMPLETE_TAG`] added when something could not be backed up.
pub fn with_incomplete_tag(mut tags: Vec<String>, incomplete: bool) -> Vec<String> {
    if incomplete && !tags.iter().any(|t| t == lifeboat_model::INCOMPLETE_TAG) {
        tags.push(lifeboat_model::INCOMPLETE_TAG.to_string());
    }
    tags
}

/// The hooks of the running selected containers, and of the running tasks (on this engine) of the
/// selected services.
fn collect_hooks(site: &Site, cap: &Capture) -> Result<Vec<Hook>, DockerError> {
    let mut out = Vec::new();
    for (name, doc) in &cap.containers {
        if let Some(id) = hooks::running_id(doc) {
            let labels = doc.pointer("/Config/Labels").and_then(Value::as_object);
            out.extend(hooks::from_labels(id, name, labels)?);
        }
    }
    for (name, doc) in &cap.services {
        let labels = doc
            .pointer("/Spec/Labels")
            .and_then(Value::as_object)
            .filter(|l| l.contains_key(hooks::PRE) || l.contains_key(hooks::POST));
        let Some(labels) = labels else { continue };
        for id in site.service_task_containers(name)? {
            out.extend(hooks::from_labels(&id, name, Some(labels))?);
        }
    }
    Ok(out)
}

impl Site {
    /// The running containers on this engine that are tasks of `service`.
    pub fn service_task_containers(&self, service: &str) -> Result<Vec<String>, DockerError> {
        let list = self
            .block_on(
                self.docker
                    .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                        filters: Some(
                            [(
                                "label".to_string(),
                                vec![format!("com.docker.swarm.service.name={service}")],
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    })),
            )
            .map_err(self.api_err(format!("list the tasks of {service}")))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }
}
