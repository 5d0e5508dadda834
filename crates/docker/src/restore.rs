//! `restore SNAPSHOT --to docker[:HOST]`: a Docker snapshot back into applications on an engine.
//!
//! Order: images (from `--load-images`), networks, volumes with their data, configs, secrets, node
//! labels, containers, services. Before anything changes, a preflight checks every image, every name
//! and every secret value; any problem refuses the whole restore with one error listing them all.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bollard::models::{
    ConfigSpec, ContainerCreateBody, EndpointSettings, NetworkConnectRequest, NetworkCreateRequest, NodeSpec,
    SecretSpec, ServiceSpec, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ImportImageOptions, RemoveContainerOptions, StopContainerOptions, UpdateNodeOptions,
    UpdateServiceOptions,
};
use futures_util::StreamExt;
use lifeboat_model::{Id, Node, NodeKind, Tree};
use lifeboat_repo::Repository;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::capture::{Capture, Manifest, KINDS};
use crate::control::PREFIX_LABEL;
use crate::rules::{with_udp, Forward, Rules};
use crate::{is_not_found, str_at, to_json, DockerError, Site};

/// What to do with objects that already exist on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse the restore (the default): nothing is silently replaced.
    #[default]
    Fail,
    /// Leave the existing object as it is.
    Skip,
    /// Bring the existing object to the snapshot's state (services are updated, containers
    /// recreated, volume files written over; configs and secrets, which Swarm cannot change, must
    /// be equal).
    Update,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Replicas for every replicated service, and whether containers start (0: nothing runs).
    pub replicas: Option<u64>,
    /// Prepended to the name of every restored object (references are rewritten to match).
    pub name_prefix: String,
    pub existing: Existing,
    /// Print what would change, change nothing.
    pub dry_run: bool,
    /// Secret values given by the user, by secret name (override captured ones).
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// A `docker save` archive that provides missing images.
    pub load_images: Option<PathBuf>,
    /// Skip volume data (volumes are still created).
    pub no_volume_data: bool,
    /// With a name prefix (a drill's copy): cut the copy off from every network but its own.
    /// One internal network, `{prefix}isolated` (overlay and attachable when the copy has Swarm
    /// services), replaces all of the snapshot's networks: every container and service joins it
    /// under its name and its aliases, so the copy's parts find each other and nothing else
    /// (an internal network has no route out). Published ports are published instead by a
    /// gateway container `{prefix}gateway` (the helper image, `lifeboat helper forward`) on the
    /// engine's default bridge, which forwards each published TCP port to the copy and carries
    /// nothing the other way. Refused (preflight) without a prefix, and for a container on the
    /// host's network or another container's. UDP ports are not forwarded.
    pub isolate: bool,
}

pub use crate::rules::ISOLATED_NETWORK;
/// The gateway container of an isolated copy, after its prefix.
pub const GATEWAY: &str = "gateway";

/// The outcome for one object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemResult {
    pub kind: String,
    pub name: String,
    /// `create`, `update`, `skip` or `load`.
    pub action: String,
    /// `planned` (dry run), `done` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Every object's outcome, in the order they were handled.
#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub items: Vec<ItemResult>,
    pub failed: usize,
}

/// A Docker snapshot read back from the repository.
pub struct Stored {
    pub capture: Capture,
    /// Secret values by name.
    pub secret_values: BTreeMap<String, Vec<u8>>,
    /// Volume data trees by volume name.
    pub volume_data: BTreeMap<String, Node>,
}

fn read_file(repo: &Repository, n: &Node) -> Result<Vec<u8>, DockerError> {
    Ok(lifeboat_fs::archive::read_file(repo, n)?)
}

/// Reads a Docker snapshot's documents (not the volume data itself) from its root tree.
pub fn load(repo: &Repository, snapshot: &str, root: &Id) -> Result<Stored, DockerError> {
    let bad = |reason: String| DockerError::BadSnapshot {
        snapshot: snapshot.to_string(),
        reason,
    };
    let tree = repo.load_tree(root)?;
    let manifest = tree
        .find(b"docker.json")
        .ok_or_else(|| bad("it has no docker.json: not a Docker snapshot".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(&read_file(repo, manifest)?).map_err(|e| bad(format!("docker.json: {e}")))?;
    let mut stored = Stored {
        capture: Capture {
            manifest,
            ..Default::default()
        },
        secret_values: BTreeMap::new(),
        volume_data: BTreeMap::new(),
    };
    for kind in KINDS {
        let Some(dir) = tree.find(kind.as_bytes()).and_then(|n| n.subtree) else {
            continue;
        };
        let sub: Tree = repo.load_tree(&dir)?;
        for n in &sub.nodes {
            let name = n.name.lossy().into_owned();
            match n.kind {
                NodeKind::File if name.ends_with(".json") => {
                    let doc: Value =
                        serde_json::from_slice(&read_file(repo, n)?).map_err(|e| bad(format!("{kind}/{name}: {e}")))?;
                    stored
                        .capture
                        .kind_mut(kind)
                        .insert(name.trim_end_matches(".json").to_string(), doc);
                }
                NodeKind::File if kind == "secrets" && name.ends_with(".value") => {
                    stored
                        .secret_values
                        .insert(name.trim_end_matches(".value").to_string(), read_file(repo, n)?);
                }
                NodeKind::Dir if kind == "volumes" => {
                    if let Some(vt) = n.subtree {
                        let data = repo.load_tree(&vt)?.find(b"data").cloned();
                        if let Some(d) = data {
                            stored.volume_data.insert(name, d);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(stored)
}

/// One planned change.
struct Step {
    kind: &'static str,
    /// The name in the snapshot.
    name: String,
    action: &'static str,
    detail: Option<String>,
}

/// Restores `stored` onto `site`. See the module documentation for the order and the preflight.
///
/// Fails with [`DockerError::Preflight`] (nothing changed) when an image is missing, a name is
/// taken (with [`Existing::Fail`]), a secret has no value, or Swarm objects meet a non-Swarm engine.
/// Once changes start, an object that fails is reported in the [`RestoreReport`] and the rest go on.
pub fn restore(
    repo: &Repository,
    site: &Site,
    stored: &Stored,
    opts: &RestoreOptions,
) -> Result<RestoreReport, DockerError> {
    let cap = &stored.capture;
    let p = |n: &str| format!("{}{n}", opts.name_prefix);
    let mut problems = Vec::new();
    let info = site.block_on(site.docker.info()).map_err(site.api_err("system info"))?;
    let swarm = crate::swarm_manager(&info);
    let swarm_objects = cap.services.len() + cap.configs.len() + cap.secrets.len();
    if swarm_objects > 0 && !swarm {
        problems.push(format!(
            "the snapshot has {swarm_objects} Swarm services, configs or secrets, and {} is not a Swarm manager",
            site.host()
        ));
    }
    for (name, doc) in &cap.networks {
        if str_at(doc, "/Driver") == Some("overlay") && !swarm {
            problems.push(format!(
                "network {name} is an overlay network and {} is not a Swarm manager",
                site.host()
            ));
        }
    }

    if opts.isolate {
        if opts.name_prefix.is_empty() {
            problems.push("an isolated restore (a drill's copy) needs a name prefix".into());
        }
        for (name, doc) in &cap.containers {
            let mode = str_at(doc, "/HostConfig/NetworkMode").unwrap_or("default");
            if mode == "host" || mode.starts_with("container:") {
                problems.push(format!(
                    "container {name} uses the network of {}: a drill's copy of it cannot be cut off from the network",
                    if mode == "host" {
                        "the host"
                    } else {
                        "another container"
                    }
                ));
            }
        }
    }

    // Images: every one must be on the target or in the --load-images archive.
    let loadable = match &opts.load_images {
        Some(f) => archive_tags(f)?,
        None => BTreeSet::new(),
    };
    let mut image_map: HashMap<String, String> = HashMap::new();
    let mut to_load = BTreeSet::new();
    let mut images: BTreeSet<String> = BTreeSet::new();
    for doc in cap.containers.values() {
        images.extend(str_at(doc, "/Config/Image").map(str::to_string));
    }
    for doc in cap.services.values() {
        images.extend(str_at(doc, "/Spec/TaskTemplate/ContainerSpec/Image").map(str::to_string));
    }
    for image in &images {
        let plain = image.split('@').next().unwrap_or(image).to_string();
        if site.image_exists(image)? {
            continue;
        }
        if plain != *image && site.image_exists(&plain)? {
            image_map.insert(image.clone(), plain);
            continue;
        }
        if loadable.contains(&plain) || loadable.contains(&format!("{plain}:latest")) {
            to_load.insert(plain.clone());
            image_map.insert(image.clone(), plain);
            continue;
        }
        problems.push(format!(
            "image {image} is not on {} (load it there, or give a `docker save` archive with --load-images)",
            site.host()
        ));
    }

    // Secret values.
    let mut secret_values = stored.secret_values.clone();
    secret_values.extend(opts.secrets.clone());
    for name in cap.secrets.keys() {
        if !secret_values.contains_key(name) {
            problems.push(format!(
                "secret {name}: its value was not captured at backup; give it with --secret {name}=@FILE"
            ));
        }
    }
    for name in opts.secrets.keys() {
        if !cap.secrets.contains_key(name) {
            problems.push(format!("--secret {name}: the snapshot has no secret of that name"));
        }
    }

    // Names.
    let mut steps: Vec<Step> = Vec::new();
    for image in &to_load {
        steps.push(Step {
            kind: "images",
            name: image.clone(),
            action: "load",
            detail: opts.load_images.as_ref().map(|f| format!("from {}", f.display())),
        });
    }
    for kind in KINDS {
        for name in cap.kind(kind).keys() {
            if kind == "nodes" {
                let labelled = cap.nodes[name]
                    .pointer("/Spec/Labels")
                    .and_then(Value::as_object)
                    .is_some_and(|l| !l.is_empty());
                if swarm && labelled {
                    steps.push(Step {
                        kind,
                        name: name.clone(),
                        action: "update",
                        detail: Some("labels".into()),
                    });
                }
                continue;
            }
            if opts.isolate && kind == "networks" {
                steps.push(Step {
                    kind,
                    name: name.clone(),
                    action: "skip",
                    detail: Some(format!("not made: the drill's copy joins only {}", p(ISOLATED_NETWORK))),
                });
                continue;
            }
            let target = p(name);
            let exists = site.exists(kind, &target)?;
            let action = match (exists, opts.existing) {
                (false, _) => "create",
                (true, Existing::Skip) => "skip",
                (true, Existing::Update) if kind == "networks" => "skip",
                (true, Existing::Update) => "update",
                (true, Existing::Fail) => {
                    problems.push(format!(
                        "{} {target} already exists on {} (choose --existing skip|update, or --name-prefix)",
                        singular(kind),
                        site.host()
                    ));
                    continue;
                }
            };
            let detail = match (kind, action) {
                ("networks", "skip") if opts.existing == Existing::Update => {
                    Some("networks cannot be changed in place; the existing one is used".into())
                }
                ("skip", _) | (_, "skip") => Some("exists".into()),
                _ => None,
            };
            steps.push(Step {
                kind,
                name: name.clone(),
                action,
                detail,
            });
        }
    }
    if !problems.is_empty() {
        return Err(DockerError::Preflight { problems });
    }

    let mut report = RestoreReport::default();
    let mut ctx = Ctx {
        repo,
        site,
        stored,
        opts,
        image_map,
        secret_values,
        forwards: Vec::new(),
    };
    if opts.isolate && !opts.dry_run {
        let overlay = swarm && !cap.services.is_empty();
        let r = ctx.isolated_network(overlay);
        report.failed += usize::from(r.is_err());
        report.items.push(ItemResult {
            kind: "network".into(),
            name: p(ISOLATED_NETWORK),
            action: "create".into(),
            status: if r.is_ok() { "done" } else { "failed" }.into(),
            detail: Some(match r {
                Ok(()) => "internal: the drill's copy has no route out".into(),
                Err(e) => e.to_string(),
            }),
        });
    }
    for step in steps {
        let status;
        let mut detail = step.detail.clone();
        if opts.dry_run {
            status = "planned";
        } else if step.action == "skip" {
            status = "done";
        } else {
            match ctx.apply(&step) {
                Ok(note) => {
                    status = "done";
                    if note.is_some() {
                        detail = note;
                    }
                }
                Err(e) => {
                    status = "failed";
                    detail = Some(e.to_string());
                    report.failed += 1;
                }
            }
        }
        report.items.push(ItemResult {
            kind: singular(step.kind).to_string(),
            name: if step.kind == "images" || step.kind == "nodes" {
                step.name.clone()
            } else {
                p(&step.name)
            },
            action: step.action.to_string(),
            status: status.to_string(),
            detail,
        });
    }
    if opts.isolate && !opts.dry_run && !ctx.forwards.is_empty() {
        let r = ctx.gateway();
        report.failed += usize::from(r.is_err());
        report.items.push(ItemResult {
            kind: "container".into(),
            name: p(GATEWAY),
            action: "create".into(),
            status: if r.is_ok() { "done" } else { "failed" }.into(),
            detail: Some(match r {
                Ok(line) => line,
                Err(e) => e.to_string(),
            }),
        });
    }
    Ok(report)
}

fn singular(kind: &str) -> &str {
    match kind {
        "networks" => "network",
        "volumes" => "volume",
        "configs" => "config",
        "secrets" => "secret",
        "nodes" => "node",
        "containers" => "container",
        "services" => "service",
        "images" => "image",
        other => other,
    }
}

/// The image names (`repo:tag`) in a `docker save` archive.
fn archive_tags(path: &PathBuf) -> Result<BTreeSet<String>, DockerError> {
    let bad = |e: String| DockerError::Unsupported(format!("--load-images {}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut e = e.map_err(|e| bad(e.to_string()))?;
        if e.path_bytes().as_ref() == b"manifest.json" {
            let mut s = String::new();
            e.read_to_string(&mut s).map_err(|e| bad(e.to_string()))?;
            let m: Value = serde_json::from_str(&s).map_err(|e| bad(format!("manifest.json: {e}")))?;
            let mut tags = BTreeSet::new();
            for img in m.as_array().into_iter().flatten() {
                for t in img.get("RepoTags").and_then(Value::as_array).into_iter().flatten() {
                    tags.extend(t.as_str().map(str::to_string));
                }
            }
            return Ok(tags);
        }
    }
    Err(bad("not a `docker save` archive (no manifest.json)".into()))
}

struct Ctx<'a> {
    repo: &'a Repository,
    site: &'a Site,
    stored: &'a Stored,
    opts: &'a RestoreOptions,
    image_map: HashMap<String, String>,
    secret_values: BTreeMap<String, Vec<u8>>,
    /// Ports an isolated copy's gateway publishes.
    forwards: Vec<Forward>,
}

impl Ctx<'_> {
    /// The internal network of an isolated copy (see [`RestoreOptions::isolate`]).
    fn isolated_network(&self, overlay: bool) -> Result<(), DockerError> {
        let name = self.p(ISOLATED_NETWORK);
        let req = json!({
            "Name": name,
            "Driver": if overlay { "overlay" } else { "bridge" },
            "Internal": true,
            "Attachable": overlay,
            "Labels": {PREFIX_LABEL: self.opts.name_prefix},
        });
        let req: NetworkCreateRequest = from_doc(req, "network", &name)?;
        self.site
            .block_on(self.site.docker.create_network(req))
            .map_err(self.site.api_err(format!("create network {name}")))?;
        Ok(())
    }

    /// The gateway of an isolated copy: publishes the copy's ports on the default bridge and
    /// forwards each to the copy on its isolated network.
    fn gateway(&self) -> Result<String, DockerError> {
        let site = self.site;
        let name = self.p(GATEWAY);
        let image = site.helper_image()?;
        let mut cmd = vec!["/lifeboat".to_string(), "helper".into(), "forward".into()];
        let mut exposed = Map::new();
        let mut bindings = Map::new();
        let mut lines = Vec::new();
        for f in &self.forwards {
            cmd.push(format!("{}={}:{}", f.host_port, f.alias, f.port));
            let key = format!("{}/tcp", f.host_port);
            exposed.insert(key.clone(), json!({}));
            bindings.insert(key, json!([{"HostIp": f.host_ip, "HostPort": f.host_port.to_string()}]));
            lines.push(format!("{} -> {}:{}", f.host_port, f.alias, f.port));
        }
        let body = json!({
            "Image": image,
            "Cmd": cmd,
            "ExposedPorts": exposed,
            "Labels": {PREFIX_LABEL: self.opts.name_prefix},
            "HostConfig": {"PortBindings": bindings, "NetworkMode": "bridge"},
        });
        let body: ContainerCreateBody = from_doc(body, "container", &name)?;
        site.block_on(site.docker.create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        ))
        .map_err(site.api_err(format!("create container {name}")))?;
        site.block_on(site.docker.connect_network(
            &self.p(ISOLATED_NETWORK),
            NetworkConnectRequest {
                container: name.clone(),
                endpoint_config: None,
            },
        ))
        .map_err(site.api_err(format!("connect container {name} to the isolated network")))?;
        site.block_on(
            site.docker
                .start_container(&name, None::<bollard::query_parameters::StartContainerOptions>),
        )
        .map_err(site.api_err(format!("start container {name}")))?;
        Ok(format!("forwards {} (TCP), nothing the other way", lines.join(", ")))
    }

    /// The rewriting rules of this restore.
    fn rules(&self) -> Rules<'_> {
        Rules {
            prefix: &self.opts.name_prefix,
            isolate: self.opts.isolate,
            replicas: self.opts.replicas,
            capture: &self.stored.capture,
            images: &self.image_map,
        }
    }

    fn p(&self, n: &str) -> String {
        self.rules().p(n)
    }

    /// Applies one step; `Ok(Some(note))` adds a remark to the result.
    fn apply(&mut self, step: &Step) -> Result<Option<String>, DockerError> {
        let cap = &self.stored.capture;
        let name = step.name.as_str();
        let update = step.action == "update";
        match step.kind {
            "images" => self.load_images().map(|_| None),
            "networks" => self.network(name, &cap.networks[name]).map(|_| None),
            "volumes" => self.volume(name, &cap.volumes[name], update),
            "configs" => self.config(name, &cap.configs[name], update),
            "secrets" => self.secret(name, &cap.secrets[name], update),
            "nodes" => self.node(name, &cap.nodes[name]),
            "containers" => self.container(name, &cap.containers[name], update),
            "services" => self.service(name, &cap.services[name], update),
            other => unreachable!("unknown kind {other}"),
        }
    }

    fn load_images(&self) -> Result<(), DockerError> {
        let Some(path) = &self.opts.load_images else {
            return Ok(());
        };
        let data = std::fs::read(path)
            .map_err(|e| DockerError::Unsupported(format!("--load-images {}: {e}", path.display())))?;
        let site = self.site;
        site.block_on(async {
            let mut s = site.docker.import_image(
                ImportImageOptions {
                    quiet: true,
                    ..Default::default()
                },
                bollard::body_full(data.into()),
                None,
            );
            while let Some(r) = s.next().await {
                r.map_err(site.api_err(format!("load images from {}", path.display())))?;
            }
            Ok(())
        })
    }

    fn network(&self, name: &str, doc: &Value) -> Result<(), DockerError> {
        let mut options = doc.get("Options").cloned().unwrap_or(json!({}));
        if let Some(o) = options.as_object_mut() {
            // Assigned by the engine, not chosen by the user.
            o.remove("com.docker.network.driver.overlay.vxlanid_list");
        }
        let req = json!({
            "Name": self.p(name),
            "Driver": doc.get("Driver"),
            "Internal": doc.get("Internal"),
            "Attachable": doc.get("Attachable"),
            "EnableIPv6": doc.get("EnableIPv6"),
            "IPAM": doc.get("IPAM"),
            "Options": options,
            "Labels": doc.get("Labels"),
        });
        let req: NetworkCreateRequest = from_doc(req, "network", name)?;
        self.site
            .block_on(self.site.docker.create_network(req))
            .map_err(self.site.api_err(format!("create network {}", self.p(name))))?;
        Ok(())
    }

    fn volume(&self, name: &str, doc: &Value, update: bool) -> Result<Option<String>, DockerError> {
        let target = self.p(name);
        if !update {
            let req = VolumeCreateRequest {
                name: Some(target.clone()),
                driver: str_at(doc, "/Driver").map(str::to_string),
                driver_opts: from_doc(doc.get("Options").cloned().unwrap_or(Value::Null), "volume", name)?,
                labels: from_doc(doc.get("Labels").cloned().unwrap_or(Value::Null), "volume", name)?,
                ..Default::default()
            };
            self.site
                .block_on(self.site.docker.create_volume(req))
                .map_err(self.site.api_err(format!("create volume {target}")))?;
        }
        if self.opts.no_volume_data {
            return Ok(Some("data not restored (--no-volume-data)".into()));
        }
        match self.stored.volume_data.get(name) {
            Some(root) => {
                let bytes = self.site.write_volume(self.repo, &target, root)?;
                Ok(Some(format!("{bytes} bytes of data")))
            }
            None => Ok(Some("the snapshot holds no data for it".into())),
        }
    }

    fn config(&self, name: &str, doc: &Value, update: bool) -> Result<Option<String>, DockerError> {
        let mut spec = doc.get("Spec").cloned().unwrap_or(json!({}));
        spec["Name"] = json!(self.p(name));
        if update {
            let live = self
                .site
                .block_on(self.site.docker.inspect_config(&self.p(name)))
                .map_err(self.site.api_err(format!("inspect config {}", self.p(name))))?;
            let same = to_json(&live).pointer("/Spec/Data") == spec.get("Data");
            return if same {
                Ok(Some("unchanged".into()))
            } else {
                Err(DockerError::Unsupported(format!(
                    "config {} differs and Swarm configs cannot change in place; remove it or use --name-prefix",
                    self.p(name)
                )))
            };
        }
        let spec: ConfigSpec = from_doc(spec, "config", name)?;
        self.site
            .block_on(self.site.docker.create_config(spec))
            .map_err(self.site.api_err(format!("create config {}", self.p(name))))?;
        Ok(None)
    }

    fn secret(&self, name: &str, doc: &Value, update: bool) -> Result<Option<String>, DockerError> {
        if update {
            return Ok(Some(
                "exists; Swarm never reveals a secret's value, so it is left as it is".into(),
            ));
        }
        let value = &self.secret_values[name];
        let mut spec = doc.get("Spec").cloned().unwrap_or(json!({}));
        spec["Name"] = json!(self.p(name));
        spec["Data"] = json!(B64.encode(value));
        let spec: SecretSpec = from_doc(spec, "secret", name)?;
        self.site
            .block_on(self.site.docker.create_secret(spec))
            .map_err(self.site.api_err(format!("create secret {}", self.p(name))))?;
        Ok(None)
    }

    fn node(&self, hostname: &str, doc: &Value) -> Result<Option<String>, DockerError> {
        let labels = doc
            .pointer("/Spec/Labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if labels.is_empty() {
            return Ok(Some("no labels".into()));
        }
        let site = self.site;
        let nodes = site
            .block_on(
                site.docker
                    .list_nodes(None::<bollard::query_parameters::ListNodesOptions>),
            )
            .map_err(site.api_err("list nodes"))?;
        let docs: Vec<Value> = nodes.iter().map(to_json).collect();
        let single = docs.len() == 1 && self.stored.capture.nodes.len() == 1;
        let Some(target) = docs
            .iter()
            .find(|n| str_at(n, "/Description/Hostname") == Some(hostname))
            .or(if single { docs.first() } else { None })
        else {
            return Ok(Some(format!(
                "no node named {hostname} on the target; labels not applied"
            )));
        };
        let mut spec = target.get("Spec").cloned().unwrap_or(json!({}));
        let mut merged = spec
            .get("Labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        merged.extend(labels);
        spec["Labels"] = Value::Object(merged);
        let spec: NodeSpec = from_doc(spec, "node", hostname)?;
        let version = target.pointer("/Version/Index").and_then(Value::as_i64).unwrap_or(0);
        let id = str_at(target, "/ID").unwrap_or_default().to_string();
        site.block_on(site.docker.update_node(&id, spec, UpdateNodeOptions { version }))
            .map_err(site.api_err(format!("update labels of node {hostname}")))?;
        Ok(Some(format!(
            "labels applied to node {}",
            str_at(target, "/Description/Hostname").unwrap_or(&id)
        )))
    }

    fn container(&mut self, name: &str, doc: &Value, update: bool) -> Result<Option<String>, DockerError> {
        let site = self.site;
        let target = self.p(name);
        let c = self.rules().container(name, doc);
        self.forwards.extend(c.forwards);
        let (endpoints, udp) = (c.endpoints, c.udp);
        let body: ContainerCreateBody = from_doc(c.body, "container", name)?;

        if update {
            let _ = site.block_on(site.docker.stop_container(&target, None::<StopContainerOptions>));
            site.block_on(site.docker.remove_container(
                &target,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            ))
            .map_err(site.api_err(format!("remove container {target} to recreate it")))?;
        }
        site.block_on(site.docker.create_container(
            Some(CreateContainerOptions {
                name: Some(target.clone()),
                ..Default::default()
            }),
            body,
        ))
        .map_err(site.api_err(format!("create container {target}")))?;
        for (net, ep) in endpoints.iter().skip(1) {
            let ep: EndpointSettings = from_doc(ep.clone(), "container", name)?;
            site.block_on(site.docker.connect_network(
                net,
                NetworkConnectRequest {
                    container: target.clone(),
                    endpoint_config: Some(ep),
                },
            ))
            .map_err(site.api_err(format!("connect container {target} to network {net}")))?;
        }
        if c.start {
            site.block_on(
                site.docker
                    .start_container(&target, None::<bollard::query_parameters::StartContainerOptions>),
            )
            .map_err(site.api_err(format!("start container {target}")))?;
            Ok(Some(with_udp("started", &udp)))
        } else {
            Ok(Some(with_udp("created, not started", &udp)))
        }
    }

    fn service(&mut self, name: &str, doc: &Value, update: bool) -> Result<Option<String>, DockerError> {
        let site = self.site;
        let target = self.p(name);
        let svc = self
            .rules()
            .service(name, doc, |kind, name| site.object_id(kind, name))?;
        self.forwards.extend(svc.forwards);
        let note = svc.note;
        let spec: ServiceSpec = from_doc(svc.spec, "service", name)?;
        if update {
            let live = site
                .block_on(site.docker.inspect_service(&target, None))
                .map_err(site.api_err(format!("inspect service {target}")))?;
            let version = live.version.and_then(|v| v.index).unwrap_or(0) as i32;
            site.block_on(site.docker.update_service(
                &target,
                spec,
                UpdateServiceOptions {
                    version,
                    ..Default::default()
                },
                None,
            ))
            .map_err(site.api_err(format!("update service {target}")))?;
        } else {
            site.block_on(site.docker.create_service(spec, None))
                .map_err(site.api_err(format!("create service {target}")))?;
        }
        Ok(note)
    }
}

/// Converts a JSON document into an Engine API request body.
fn from_doc<T: serde::de::DeserializeOwned>(v: Value, kind: &str, name: &str) -> Result<T, DockerError> {
    serde_json::from_value(v).map_err(|e| DockerError::BadSnapshot {
        snapshot: format!("{kind} {name}"),
        reason: format!("its document does not fit the Engine API: {e}"),
    })
}

impl Site {
    /// Whether an image is present on the engine.
    pub fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self.block_on(self.docker.inspect_image(image)) {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.api_err(format!("inspect image {image}"))(e)),
        }
    }

    /// Whether an object of this kind and name exists.
    pub fn exists(&self, kind: &str, name: &str) -> Result<bool, DockerError> {
        let d = &self.docker;
        let r = self.block_on(async {
            match kind {
                "networks" => d.inspect_network(name, None).await.map(|_| ()),
                "volumes" => d.inspect_volume(name).await.map(|_| ()),
                "configs" => d.inspect_config(name).await.map(|_| ()),
                "secrets" => d.inspect_secret(name).await.map(|_| ()),
                "containers" => d.inspect_container(name, None).await.map(|_| ()),
                "services" => d.inspect_service(name, None).await.map(|_| ()),
                other => unreachable!("unknown kind {other}"),
            }
        });
        match r {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.api_err(format!("look up {} {name}", singular(kind)))(e)),
        }
    }

    /// The id of a config or secret by name.
    fn object_id(&self, kind: &str, name: &str) -> Result<String, DockerError> {
        let d = &self.docker;
        let doc = self.block_on(async {
            match kind {
                "configs" => d.inspect_config(name).await.map(|c| to_json(&c)),
                _ => d.inspect_secret(name).await.map(|s| to_json(&s)),
            }
        });
        let doc = doc.map_err(self.api_err(format!("look up {} {name}", singular(kind))))?;
        Ok(str_at(&doc, "/ID").unwrap_or_default().to_string())
    }
}
