//! Lifeboat's own short-lived helpers on an engine: the helper image, volume access through the
//! archive endpoint, reading Swarm secrets, and running commands in containers.
//!
//! The helper image is made from the running `lifeboat` binary itself and the shared libraries it
//! has loaded (so no registry is needed and nothing else must be installed on the host). It is
//! imported once per binary build (`lifeboat-helper:<hash>`). Assumes the engine runs Linux on the
//! same CPU architecture as this binary.
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecPlacement,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions, ListContainersOptions, ListImagesOptions,
    ListTasksOptions, RemoveContainerOptions, RemoveImageOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;
use lifeboat_fs::archive::{tar_to_tree, tree_to_tar, TarOutcome};
use lifeboat_fs::backup::Progress;
use lifeboat_model::{Node, Retry};
use lifeboat_repo::Repository;

use crate::{bridge, is_not_found, DockerError, Site, HELPER_LABEL};

/// Where a helper container mounts the volume it reads or writes.
const MOUNT: &str = "/lifeboat-volume";
/// Directory of the secret files inside the secret helper's task.
const SECRETS_DIR: &str = "/run/secrets";

/// Files of an image: (path in the image, path on this machine).
type ImageFiles = Vec<(PathBuf, PathBuf)>;

/// The files of the helper image (the binary, its loader and its loaded libraries) and the
/// library directories.
fn helper_files() -> io::Result<(ImageFiles, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let mut files = vec![(PathBuf::from("/lifeboat"), exe.clone())];
    let mut dirs = Vec::new();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut libs: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .collect();
    libs.sort();
    libs.dedup();
    for lib in libs {
        let p = PathBuf::from(lib);
        if let Some(parent) = p.parent() {
            let d = parent.to_string_lossy().into_owned();
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        files.push((p.clone(), p));
    }
    if let Some(interp) = elf_interpreter(&exe)? {
        let real = std::fs::canonicalize(&interp)?;
        files.push((interp, real));
    }
    Ok((files, dirs))
}

/// The program interpreter (dynamic loader) named in an ELF64 little-endian executable, if any.
fn elf_interpreter(exe: &Path) -> io::Result<Option<PathBuf>> {
    let mut f = std::fs::File::open(exe)?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head)?;
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return Ok(None);
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes")) as usize;
    let phoff = u64_at(&head, 32);
    let phentsize = u16_at(&head, 54);
    let phnum = u16_at(&head, 56);
    use std::io::{Seek, SeekFrom};
    let mut ph = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    f.read_exact(&mut ph)?;
    for i in 0..phnum {
        let e = &ph[i * phentsize..(i + 1) * phentsize];
        if u32::from_le_bytes(e[..4].try_into().expect("4 bytes")) == 3 {
            let (off, size) = (u64_at(e, 8), u64_at(e, 32) as usize);
            let mut name = vec![0u8; size];
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(&mut name)?;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(PathBuf::from(String::from_utf8_lossy(name).into_owned())));
        }
    }
    Ok(None)
}

/// Label of a helper container naming the process that made it: `HOSTNAME:PID`.
const HELPER_OWNER_LABEL: &str = "io.lifeboat.helper.owner";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn owner() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

/// Whether a helper owned by `owner` (`HOSTNAME:PID`) was left behind: made on this machine
/// (`host`) by a process that is gone.
fn is_stale(owner: &str, host: &str, alive: impl Fn(u32) -> bool) -> bool {
    match owner.rsplit_once(':') {
        Some((h, pid)) if !host.is_empty() && h == host => pid.parse().is_ok_and(|p| !alive(p)),
        _ => false,
    }
}

/// The outcome of a command run in a container.
#[derive(Debug)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Age after which another build's helper image is removed.
const OLD_HELPER_IMAGE: Duration = Duration::from_secs(3600);

impl Site {
    /// Makes sure the helper image is on the engine and returns its id (`sha256:...`). The id, not
    /// the name, lets Swarm use the local image instead of trying a registry first. Worked out once
    /// per [`Site`].
    pub fn helper_image(&self) -> Result<String, DockerError> {
        let mut cached = self.helper.lock().expect("poisoned");
        if let Some(id) = &*cached {
            return Ok(id.clone());
        }
        let name = self.import_helper_image()?;
        self.remove_stale_helpers();
        let id = self
            .block_on(self.docker.inspect_image(&name))
            .map_err(self.api_err("inspect the helper image"))?
            .id
            .unwrap_or(name);
        *cached = Some(id.clone());
        Ok(id)
    }

    /// Imports the helper image unless the engine has it; returns its name.
    fn import_helper_image(&self) -> Result<String, DockerError> {
        let fail = |e: io::Error| DockerError::Unsupported(format!("cannot build the helper image: {e}"));
        let (files, dirs) = helper_files().map_err(fail)?;
        let mut h = blake3::Hasher::new();
        for (at, from) in &files {
            let md = std::fs::metadata(from).map_err(fail)?;
            h.update(
                format!(
                    "{}:{}:{}:{:?};",
                    at.display(),
                    from.display(),
                    md.len(),
                    md.modified().ok()
                )
                .as_bytes(),
            );
        }
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        let tag = h.finalize().to_hex()[..16].to_string();
        let name = format!("lifeboat-helper:{tag}");
        let present = self.block_on(self.docker.inspect_image(&name));
        match present {
            Ok(_) => return Ok(name),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.api_err("inspect the helper image")(e)),
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut made = std::collections::BTreeSet::new();
        for (at, from) in &files {
            let rel = at.strip_prefix("/").unwrap_or(at);
            let mut dir = PathBuf::new();
            for c in rel.parent().into_iter().flat_map(|p| p.components()) {
                dir.push(c);
                if made.insert(dir.clone()) {
                    let mut hd = tar::Header::new_gnu();
                    hd.set_entry_type(tar::EntryType::Directory);
                    hd.set_mode(0o755);
                    hd.set_size(0);
                    b.append_data(&mut hd, &dir, io::empty()).map_err(fail)?;
                }
            }
            let data = std::fs::read(from).map_err(fail)?;
            let mut hd = tar::Header::new_gnu();
            hd.set_entry_type(tar::EntryType::Regular);
            hd.set_mode(0o755);
            hd.set_size(data.len() as u64);
            b.append_data(&mut hd, rel, data.as_slice()).map_err(fail)?;
        }
        let mut hd = tar::Header::new_gnu();
        hd.set_entry_type(tar::EntryType::Directory);
        hd.set_mode(0o1777);
        hd.set_size(0);
        b.append_data(&mut hd, "tmp", io::empty()).map_err(fail)?;
        let rootfs = b.into_inner().map_err(fail)?;
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some("lifeboat-helper".into()),
            tag: Some(tag),
            changes: vec![
                format!("ENV LD_LIBRARY_PATH={}", dirs.join(":")),
                format!("LABEL {HELPER_LABEL}=1"),
                "CMD [\"/lifeboat\", \"helper\", \"sleep\"]".into(),
            ],
            ..Default::default()
        };
        self.block_on(async {
            let mut s = self
                .docker
                .create_image(Some(opts), Some(bollard::body_full(rootfs.into())), None);
            while let Some(r) = s.next().await {
                r.map_err(self.api_err("import the helper image"))?;
            }
            Ok::<_, DockerError>(())
        })?;
        self.remove_old_helper_images(&name);
        Ok(name)
    }

    /// Removes the helper images of other Lifeboat builds (each build imports its own, with the
    /// binary in it) that are older than [`OLD_HELPER_IMAGE`]: an image another build may be
    /// about to use is younger. The engine refuses to remove one a container uses. Best effort.
    fn remove_old_helper_images(&self, keep: &str) {
        let opts = ListImagesOptions {
            filters: Some([("reference".to_string(), vec!["lifeboat-helper".to_string()])].into()),
            ..Default::default()
        };
        let Ok(list) = self.block_on(self.docker.list_images(Some(opts))) else {
            return;
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for i in list {
            if i.repo_tags.iter().any(|t| t == keep) || now - i.created < OLD_HELPER_IMAGE.as_secs() as i64 {
                continue;
            }
            let _ = self.block_on(self.docker.remove_image(&i.id, None::<RemoveImageOptions>, None));
        }
    }

    /// Creates (does not start) a helper container with `volume` mounted at [`MOUNT`].
    fn volume_container(&self, image: &str, volume: &str, read_only: bool) -> Result<String, DockerError> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["/lifeboat".into(), "helper".into(), "sleep".into()]),
            labels: Some(
                [
                    (HELPER_LABEL.to_string(), "1".to_string()),
                    (HELPER_OWNER_LABEL.to_string(), owner()),
                ]
                .into(),
            ),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some(MOUNT.into()),
                    source: Some(volume.into()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(read_only),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .block_on(self.docker.create_container(None::<CreateContainerOptions>, body))
            .map_err(self.api_err(format!("create a helper container for volume {volume}")))?;
        Ok(created.id)
    }

    /// Removes helper containers left by a Lifeboat process of this machine that is gone (killed
    /// in the middle of reading or writing a volume: its helper would keep the volume in use).
    /// Helpers of live processes, and of other machines, are left alone. Best effort: a failure
    /// here only leaves what was there.
    fn remove_stale_helpers(&self) {
        let opts = ListContainersOptions {
            all: true,
            filters: Some([("label".to_string(), vec![HELPER_OWNER_LABEL.to_string()])].into()),
            ..Default::default()
        };
        let Ok(list) = self.block_on(self.docker.list_containers(Some(opts))) else {
            return;
        };
        let host = hostname();
        for c in list {
            let stale = c
                .labels
                .as_ref()
                .and_then(|l| l.get(HELPER_OWNER_LABEL))
                .is_some_and(|o| is_stale(o, &host, |pid| std::path::Path::new(&format!("/proc/{pid}")).exists()));
            if let (true, Some(id)) = (stale, c.id) {
                self.remove_container_quietly(&id);
            }
        }
    }

    /// Best effort, and bounded: an engine that does not answer within 15 s (hung, the reason a
    /// stream stalled) keeps the helper, which the next backup removes.
    fn remove_container_quietly(&self, id: &str) {
        // The timer is made inside the runtime (a tokio timer needs one).
        let _ = self.block_on(async {
            let remove = self.docker.remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            );
            tokio::time::timeout(Duration::from_secs(15), remove).await
        });
    }

    /// Reads a named volume's files into the repository (through the archive endpoint of a helper
    /// container that mounts the volume read-only and never runs).
    pub fn read_volume(&self, repo: &Repository, volume: &str, progress: &Progress) -> Result<TarOutcome, DockerError> {
        let image = self.helper_image()?;
        let id = self.volume_container(&image, volume, true)?;
        let result = self.read_archive(repo, &id, volume, progress);
        self.remove_container_quietly(&id);
        result
    }

    fn read_archive(
        &self,
        repo: &Repository,
        id: &str,
        volume: &str,
        progress: &Progress,
    ) -> Result<TarOutcome, DockerError> {
        let (tx, reader) = bridge::reader();
        let stream = self.docker.download_from_container(
            id,
            Some(DownloadFromContainerOptions {
                path: MOUNT.to_string(),
            }),
        );
        let what = format!("{}: read volume {volume}", self.host);
        let pump = self
            .rt
            .spawn(bridge::pump(stream, tx, bridge::stream_stall(), what, |e| {
                crate::short_error(e)
            }));
        let out = tar_to_tree(repo, reader, 1, &format!("volume {volume}"), progress);
        let _ = self.block_on(pump);
        Ok(out?)
    }

    /// Makes the named volume (which must exist) hold exactly a stored volume tree: files the tree
    /// lacks are removed. The volume's old contents stay whole until the new copy is complete:
    ///
    /// 1. a helper container (network disabled, this binary as its program) mounts the volume and
    ///    settles what an interrupted earlier write left (`lifeboat helper volume-prepare`);
    /// 2. the tree is written through the archive endpoint into `.lifeboat-new` at the volume's
    ///    top; a stream that breaks (a damaged blob, a full disk) fails here, and the copy is
    ///    removed again: the volume is as it was;
    /// 3. `lifeboat helper volume-commit` switches: it syncs the file system, records the switch,
    ///    moves the old entries into `.lifeboat-old`, the new ones into place (renames within one
    ///    file system), and removes the old copy. A crash during the switch is finished by the
    ///    next write's step 1, since the new copy was complete.
    ///
    /// Needs room for both copies while it runs. The names `.lifeboat-new`, `.lifeboat-old`,
    /// `.lifeboat-swap` at the top of a volume are Lifeboat's.
    pub fn write_volume(&self, repo: &Repository, volume: &str, root: &Node) -> Result<u64, DockerError> {
        let image = self.helper_image()?;
        let id = self.volume_container(&image, volume, false)?;
        let result = self.write_volume_in(repo, &id, volume, root);
        self.remove_container_quietly(&id);
        result
    }

    fn write_volume_in(&self, repo: &Repository, id: &str, volume: &str, root: &Node) -> Result<u64, DockerError> {
        self.block_on(
            self.docker
                .start_container(id, None::<bollard::query_parameters::StartContainerOptions>),
        )
        .map_err(self.api_err(format!("start the helper container for volume {volume}")))?;
        self.helper_step(id, volume, "volume-prepare")?;
        let (writer, rx) = bridge::writer();
        let body = bollard::body_stream(tokio_stream_from(rx));
        let docker = self.docker.clone();
        let cid = id.to_string();
        let upload = self.rt.spawn(async move {
            docker
                .upload_to_container(
                    &cid,
                    Some(UploadToContainerOptions {
                        path: "/".into(),
                        ..Default::default()
                    }),
                    body,
                )
                .await
        });
        let prefix = format!("{}/{}", MOUNT.trim_start_matches('/'), inside::NEW);
        let written = tree_to_tar(repo, root, &prefix, writer);
        let uploaded = self.block_on(upload);
        let copied = match (written, uploaded) {
            (Ok(bytes), Ok(Ok(()))) => Ok(bytes),
            (Err(e), _) => Err(DockerError::from(e)),
            (_, Ok(Err(e))) => Err(self.api_err(format!("write volume {volume}"))(e)),
            (_, Err(e)) => Err(DockerError::Unsupported(format!("write volume {volume}: {e}"))),
        };
        match copied {
            Ok(bytes) => {
                self.helper_step(id, volume, "volume-commit")?;
                Ok(bytes)
            }
            Err(e) => {
                // The partial copy goes; the volume keeps what it had.
                let _ = self.helper_step(id, volume, "volume-prepare");
                Err(e)
            }
        }
    }

    /// Runs `lifeboat helper STEP /lifeboat-volume` in a started volume helper.
    fn helper_step(&self, id: &str, volume: &str, step: &str) -> Result<(), DockerError> {
        let out = self.exec(
            id,
            vec!["/lifeboat".into(), "helper".into(), step.into(), MOUNT.into()],
            Duration::from_secs(3600),
        )?;
        if out.exit_code != 0 {
            return Err(DockerError::Api {
                host: self.host.clone(),
                retry: Retry::AfterFix,
                what: format!("write volume {volume} ({step})"),
                reason: format!(
                    "the helper exited with {}: {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// Runs `cmd` in a running container and collects its output, giving up after `timeout`
    /// (the command may then still be running in the container).
    pub fn exec(&self, container: &str, cmd: Vec<String>, timeout: Duration) -> Result<ExecOutput, DockerError> {
        let d = &self.docker;
        let what = format!("run {:?} in container {container}", cmd.join(" "));
        self.block_on(async {
            let exec = d
                .create_exec(
                    container,
                    CreateExecOptions {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        cmd: Some(cmd),
                        ..Default::default()
                    },
                )
                .await
                .map_err(self.api_err(what.clone()))?;
            let collect = async {
                let mut out = ExecOutput {
                    exit_code: -1,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                };
                if let StartExecResults::Attached { mut output, .. } =
                    d.start_exec(&exec.id, None).await.map_err(self.api_err(what.clone()))?
                {
                    while let Some(msg) = output.next().await {
                        match msg.map_err(self.api_err(what.clone()))? {
                            bollard::container::LogOutput::StdErr { message } => out.stderr.extend_from_slice(&message),
                            other => out.stdout.extend_from_slice(&other.into_bytes()),
                        }
                    }
                }
                let info = d.inspect_exec(&exec.id).await.map_err(self.api_err(what.clone()))?;
                out.exit_code = info.exit_code.unwrap_or(-1);
                Ok::<_, DockerError>(out)
            };
            tokio::time::timeout(timeout, collect)
                .await
                .map_err(|_| DockerError::Api {
                    host: self.host.clone(),
                    retry: Retry::Later,
                    what: what.clone(),
                    reason: format!("no result within {} s", timeout.as_secs()),
                })?
        })
    }

    /// Reads the values of Swarm secrets `(name, id)` with a short-lived helper service that mounts
    /// them, running on this node. Returns the values by name; a secret that could not be read is
    /// missing from the map. The service is removed whatever happens.
    pub fn read_secrets(&self, secrets: &[(String, String)]) -> Result<BTreeMap<String, Vec<u8>>, DockerError> {
        if secrets.is_empty() {
            return Ok(BTreeMap::new());
        }
        let image = self.helper_image()?;
        let info = self.block_on(self.docker.info()).map_err(self.api_err("system info"))?;
        let node_id = info.swarm.and_then(|s| s.node_id).unwrap_or_default();
        let mut suffix = [0u8; 6];
        lifeboat_repo::crypto::fill_random(&mut suffix);
        let name = format!("lifeboat-secrets-{}", hex_of(&suffix));
        let refs = secrets
            .iter()
            .enumerate()
            .map(|(i, (sname, id))| TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(format!("lifeboat-{i}")),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o400),
                }),
                secret_id: Some(id.clone()),
                secret_name: Some(sname.clone()),
            })
            .collect();
        let spec = ServiceSpec {
            name: Some(name.clone()),
            labels: Some([(HELPER_LABEL.to_string(), "1".to_string())].into()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image),
                    command: Some(vec!["/lifeboat".into(), "helper".into(), "sleep".into()]),
                    secrets: Some(refs),
                    stop_grace_period: Some(1_000_000_000),
                    labels: Some([(HELPER_LABEL.to_string(), "1".to_string())].into()),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(vec![format!("node.id=={node_id}")]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.block_on(self.docker.create_service(spec, None))
            .map_err(self.api_err("create the secret helper service"))?;
        let result = self.read_secret_files(&name, secrets);
        let _ = self.block_on(self.docker.delete_service(&name));
        result
    }

    fn read_secret_files(
        &self,
        service: &str,
        secrets: &[(String, String)],
    ) -> Result<BTreeMap<String, Vec<u8>>, DockerError> {
        let container = self.wait_task_container(service, Duration::from_secs(60))?;
        let out = self.exec(
            &container,
            vec![
                "/lifeboat".into(),
                "helper".into(),
                "read-files".into(),
                SECRETS_DIR.into(),
            ],
            Duration::from_secs(30),
        )?;
        if out.exit_code != 0 {
            return Err(DockerError::Unsupported(format!(
                "the secret helper failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let files: BTreeMap<String, String> = serde_json::from_slice(&out.stdout)
            .map_err(|e| DockerError::Unsupported(format!("the secret helper answered badly: {e}")))?;
        let mut values = BTreeMap::new();
        for (i, (name, _)) in secrets.iter().enumerate() {
            if let Some(v) = files.get(&format!("lifeboat-{i}")).and_then(|b| B64.decode(b).ok()) {
                values.insert(name.clone(), v);
            }
        }
        Ok(values)
    }

    /// Waits until the service's task runs on this engine and returns its container id.
    fn wait_task_container(&self, service: &str, limit: Duration) -> Result<String, DockerError> {
        let started = std::time::Instant::now();
        loop {
            let tasks = self
                .block_on(self.docker.list_tasks(Some(ListTasksOptions {
                    filters: Some([("service".to_string(), vec![service.to_string()])].into()),
                })))
                .map_err(self.api_err(format!("list the tasks of {service}")))?;
            for t in &tasks {
                let doc = crate::to_json(t);
                let state = crate::str_at(&doc, "/Status/State").unwrap_or_default();
                if state == "running" {
                    if let Some(c) = crate::str_at(&doc, "/Status/ContainerStatus/ContainerID") {
                        return Ok(c.to_string());
                    }
                }
                if matches!(state, "failed" | "rejected") {
                    return Err(DockerError::Unsupported(format!(
                        "helper service {service} failed: {}",
                        crate::str_at(&doc, "/Status/Err").unwrap_or(state)
                    )));
                }
            }
            if started.elapsed() > limit {
                return Err(DockerError::Unsupported(format!(
                    "helper service {service} did not start within {} s",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A stream over a channel's items (what `tokio-stream`'s wrapper does, without the dependency).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> impl futures_util::Stream<Item = bytes::Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The helper program's side, run inside helper containers by `lifeboat helper ...`.
pub mod inside {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    /// A drill gateway's forwarding: `LISTEN=HOST:PORT` accepts TCP connections on port LISTEN
    /// and joins each to a new connection to HOST:PORT (resolved when it is made, so a copy that
    /// starts later is found). Nothing is forwarded the other way: the copy behind the gateway
    /// has no route out. Runs until the process is stopped.
    pub fn forward(maps: &[String]) -> io::Result<()> {
        let mut parsed = Vec::new();
        for m in maps {
            let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("{m:?}: expected LISTEN=HOST:PORT"));
            let (listen, target) = m.split_once('=').ok_or_else(bad)?;
            let listen: u16 = listen.parse().map_err(|_| bad())?;
            if target
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(bad());
            }
            parsed.push((listen, target.to_string()));
        }
        let mut threads = Vec::new();
        for (listen, target) in parsed {
            let l = std::net::TcpListener::bind(("0.0.0.0", listen))?;
            threads.push(std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    let target = target.clone();
                    std::thread::spawn(move || join(conn, &target));
                }
            }));
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }

    fn join(a: std::net::TcpStream, target: &str) {
        let Ok(b) = std::net::TcpStream::connect(target) else {
            return;
        };
        let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
            return;
        };
        let (mut a, mut b) = (a, b);
        let up = std::thread::spawn(move || {
            let _ = io::copy(&mut a2, &mut b2);
            let _ = b2.shutdown(std::net::Shutdown::Write);
        });
        let _ = io::copy(&mut b, &mut a);
        let _ = a.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
    }

    /// The new copy of a volume being written, at its top.
    pub const NEW: &str = ".lifeboat-new";
    /// The old entries while a switch runs.
    pub const OLD: &str = ".lifeboat-old";
    /// Present while a switch runs: `1` while the old entries move out, `2` while the new move in.
    pub const SWAP: &str = ".lifeboat-swap";
    const SWAP_TMP: &str = ".lifeboat-swap.tmp";

    fn reserved(name: &std::ffi::OsStr) -> bool {
        [NEW, OLD, SWAP, SWAP_TMP].iter().any(|r| name == *r)
    }

    fn sync(dir: &Path) -> io::Result<()> {
        rustix::fs::syncfs(fs::File::open(dir)?).map_err(io::Error::from)
    }

    fn mark(dir: &Path, phase: &str) -> io::Result<()> {
        fs::write(dir.join(SWAP_TMP), phase)?;
        fs::rename(dir.join(SWAP_TMP), dir.join(SWAP))?;
        sync(dir)
    }

    fn remove(p: &Path) -> io::Result<()> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p),
            Ok(_) => fs::remove_file(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Settles `dir` before a new copy is written into it: a switch that was interrupted is
    /// finished (its new copy was complete before it began); a new copy that was never switched
    /// to, and old entries of a finished switch, are removed.
    pub fn volume_prepare(dir: &Path) -> io::Result<()> {
        if dir.join(SWAP).exists() {
            switch(dir)?;
        }
        remove(&dir.join(NEW))?;
        remove(&dir.join(OLD))?;
        remove(&dir.join(SWAP_TMP))
    }

    /// Replaces what `dir` holds by the complete copy in `dir/.lifeboat-new` (see
    /// [`Site::write_volume`]).
    pub fn volume_commit(dir: &Path) -> io::Result<()> {
        if !dir.join(NEW).is_dir() {
            return Err(io::Error::other(format!(
                "{}: no new copy to switch to",
                dir.join(NEW).display()
            )));
        }
        // The new copy is on disk before anything of the old one moves.
        sync(dir)?;
        mark(dir, "1")?;
        switch(dir)
    }

    /// Carries a recorded switch to its end. Idempotent: every move is a rename, and each phase
    /// is recorded before the next begins.
    fn switch(dir: &Path) -> io::Result<()> {
        let phase = fs::read_to_string(dir.join(SWAP))?;
        if phase.trim() == "1" {
            fs::create_dir_all(dir.join(OLD))?;
            for e in fs::read_dir(dir)? {
                let name = e?.file_name();
                if !reserved(&name) {
                    fs::rename(dir.join(&name), dir.join(OLD).join(&name))?;
                }
            }
            mark(dir, "2")?;
        }
        let new = dir.join(NEW);
        for e in fs::read_dir(&new)? {
            let name = e?.file_name();
            fs::rename(new.join(&name), dir.join(&name))?;
        }
        // The volume's top directory takes the snapshot's owner and mode.
        let md = fs::metadata(&new)?;
        std::os::unix::fs::chown(dir, Some(md.uid()), Some(md.gid()))?;
        fs::set_permissions(dir, md.permissions())?;
        sync(dir)?;
        fs::remove_file(dir.join(SWAP))?;
        remove(&new)?;
        remove(&dir.join(OLD))
    }

    /// Waits until the container is stopped.
    pub fn sleep() -> ! {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// Prints the regular files of `dir` as a JSON object `{name: base64}`.
    pub fn read_files(dir: &Path) -> io::Result<String> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() || e.path().is_file() {
                out.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    B64.encode(std::fs::read(e.path())?),
                );
            }
        }
        Ok(serde_json::to_string(&out).expect("strings serialise"))
    }
}

#[cfg(test)]
mod forward_tests {
    use std::io::{Read, Write};

    #[test]
    fn the_gateway_joins_each_connection_to_its_target_and_refuses_bad_maps() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = target.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut c in target.incoming().flatten() {
                let mut buf = [0u8; 5];
                c.read_exact(&mut buf).unwrap();
                c.write_all(&[b"echo:".as_slice(), &buf].concat()).unwrap();
            }
        });
        // A free port to listen on.
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let map = format!("{listen}=127.0.0.1:{port}");
        std::thread::spawn(move || super::inside::forward(&[map]));
        let mut c = loop {
            match std::net::TcpStream::connect(("127.0.0.1", listen)) {
                Ok(c) => break c,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        c.write_all(b"hello").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "echo:hello");
        for bad in ["8080", "x=a:1", "80=host", "80=host:port"] {
            let e = super::inside::forward(&[bad.to_string()]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_is_stale_only_when_its_process_on_this_machine_is_gone() {
        let alive = |pid: u32| pid == 42;
        assert!(is_stale("box:7", "box", alive));
        assert!(!is_stale("box:42", "box", alive), "its process runs");
        assert!(!is_stale("other:7", "box", alive), "another machine's");
        assert!(!is_stale("box:x", "box", alive));
        assert!(!is_stale("7", "box", alive));
        assert!(!is_stale(":7", "", alive), "no hostname known: never");
    }

    #[test]
    fn helper_files_include_the_loader_and_libc() {
        let (files, dirs) = helper_files().unwrap();
        assert_eq!(files[0].0, PathBuf::from("/lifeboat"));
        assert!(
            files.iter().any(|(at, _)| at.to_string_lossy().contains("ld-linux")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|(at, _)| at.to_string_lossy().contains("libc.so")),
            "{files:?}"
        );
        assert!(!dirs.is_empty());
    }

    fn listing(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).unwrap().display().to_string();
            let content = if e.is_file() {
                std::fs::read_to_string(&e).unwrap()
            } else {
                "<dir>".into()
            };
            out.push((rel, content));
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }

    fn old_and_new(d: &Path) {
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::write(d.join("data/items"), "old").unwrap();
        std::fs::write(d.join("deleted-later"), "private").unwrap();
        std::fs::write(d.join(".hidden"), "old").unwrap();
        let n = d.join(inside::NEW);
        std::fs::create_dir_all(n.join("data")).unwrap();
        std::fs::write(n.join("data/items"), "new").unwrap();
        std::fs::write(n.join("added"), "new").unwrap();
    }

    fn expected() -> Vec<(String, String)> {
        vec![
            ("added".into(), "new".into()),
            ("data".into(), "<dir>".into()),
            ("data/items".into(), "new".into()),
        ]
    }

    #[test]
    fn a_committed_volume_holds_exactly_the_new_copy() {
        let d = tempfile::tempdir().unwrap();
        old_and_new(d.path());
        inside::volume_commit(d.path()).unwrap();
        assert_eq!(listing(d.path()), expected());
        // A prepare afterwards finds nothing to do.
        inside::volume_prepare(d.path()).unwrap();
        assert_eq!(listing(d.path()), expected());
    }

    #[test]
    fn an_uncommitted_copy_is_discarded_and_the_old_contents_stay() {
        let d = tempfile::tempdir().unwrap();
        old_and_new(d.path());
        let before: Vec<_> = listing(d.path())
            .into_iter()
            .filter(|(p, _)| !p.starts_with(inside::NEW))
            .collect();
        inside::volume_prepare(d.path()).unwrap();
        assert_eq!(listing(d.path()), before);
        assert!(
            inside::volume_commit(d.path()).is_err(),
            "no new copy: nothing switched"
        );
        assert_eq!(listing(d.path()), before);
    }

    #[test]
    fn a_switch_interrupted_in_either_phase_is_finished_by_the_next_prepare() {
        for phase in ["1", "2"] {
            let d = tempfile::tempdir().unwrap();
            old_and_new(d.path());
            // As a crash leaves it: the switch recorded, some entries moved.
            std::fs::create_dir_all(d.path().join(inside::OLD)).unwrap();
            std::fs::rename(d.path().join("data"), d.path().join(inside::OLD).join("data")).unwrap();
            if phase == "2" {
                std::fs::rename(
                    d.path().join("deleted-later"),
                    d.path().join(inside::OLD).join("deleted-later"),
                )
                .unwrap();
                std::fs::rename(d.path().join(".hidden"), d.path().join(inside::OLD).join(".hidden")).unwrap();
                std::fs::rename(d.path().join(inside::NEW).join("added"), d.path().join("added")).unwrap();
            }
            std::fs::write(d.path().join(inside::SWAP), phase).unwrap();
            inside::volume_prepare(d.path()).unwrap();
            assert_eq!(listing(d.path()), expected(), "phase {phase}");
        }
    }

    #[test]
    fn read_files_encodes_every_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"\x00secret\xff").unwrap();
        let json = inside::read_files(d.path()).unwrap();
        let m: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        assert_eq!(B64.decode(&m["a"]).unwrap(), b"\x00secret\xff");
    }
}
