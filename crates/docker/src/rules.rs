//! How a restore rewrites what a Docker snapshot captured into Engine API requests: names under
//! the restore's prefix, images through the image map, volume and network references to their
//! restored names, an isolated copy's single network and the ports its gateway forwards, replicas
//! held at zero. Pure functions on the captured JSON documents, so they are tested without an
//! engine (as the Kubernetes adapter's `rules.rs`).
use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::capture::Capture;
use crate::control::PREFIX_LABEL;
use crate::{str_at, DockerError};

/// The network every part of an isolated copy joins (under the copy's prefix).
pub const ISOLATED_NETWORK: &str = "isolated";

/// A port the copy published, forwarded by the gateway: the host port (and address), the copy's
/// name for the workload on the isolated network, the port there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Forward {
    pub(crate) host_ip: String,
    pub(crate) host_port: u16,
    pub(crate) alias: String,
    pub(crate) port: u16,
}

/// What a restore changes in every document it writes.
pub(crate) struct Rules<'a> {
    /// Put before every restored name (`drill-ID-` for a drill's copy; empty in place).
    pub(crate) prefix: &'a str,
    /// The copy is cut off from the network: one internal network, ports through the gateway.
    pub(crate) isolate: bool,
    /// Replicas every workload gets (`Some(0)`: created stopped); `None`: as captured.
    pub(crate) replicas: Option<u64>,
    /// What the snapshot captured: which volume, network, config and secret names are its own.
    pub(crate) capture: &'a Capture,
    /// Image names as the snapshot has them to the names to use (`--load-images` retags).
    pub(crate) images: &'a HashMap<String, String>,
}

/// A container to create: the create request's body, the networks it is connected to (the first
/// at create, the others after it), the ports an isolated copy's gateway forwards and those it
/// cannot (UDP), and whether it starts.
#[derive(Debug)]
pub(crate) struct Container {
    pub(crate) body: Value,
    pub(crate) endpoints: Vec<(String, Value)>,
    pub(crate) forwards: Vec<Forward>,
    pub(crate) udp: Vec<String>,
    pub(crate) start: bool,
}

/// A service to create or update: its spec, the ports an isolated copy's gateway forwards, and a
/// remark for the result.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) spec: Value,
    pub(crate) forwards: Vec<Forward>,
    pub(crate) note: Option<String>,
}

impl Rules<'_> {
    /// `n` under the restore's prefix.
    pub(crate) fn p(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    pub(crate) fn image(&self, image: &str) -> String {
        self.images.get(image).cloned().unwrap_or_else(|| image.to_string())
    }

    /// A volume name that the snapshot holds, to its restored name; any other as it is.
    pub(crate) fn volume_ref(&self, v: &str) -> String {
        if self.capture.volumes.contains_key(v) {
            self.p(v)
        } else {
            v.to_string()
        }
    }

    /// A network (by name, or by id as Swarm specs refer to them) that the snapshot holds, to its
    /// restored name; any other as it is.
    pub(crate) fn network_ref(&self, n: &str) -> String {
        let nets = &self.capture.networks;
        if nets.contains_key(n) {
            return self.p(n);
        }
        match nets.iter().find(|(_, d)| str_at(d, "/Id") == Some(n)) {
            Some((name, _)) => self.p(name),
            None => n.to_string(),
        }
    }

    /// The container `name` as captured (`doc`, an inspect document) rewritten for the restore.
    pub(crate) fn container(&self, name: &str, doc: &Value) -> Container {
        let mut forwards = Vec::new();
        let id = str_at(doc, "/Id").unwrap_or_default();
        let mut body = doc.get("Config").cloned().unwrap_or(json!({}));
        let cfg = body.as_object_mut().expect("Config is an object");
        if cfg
            .get("Hostname")
            .and_then(Value::as_str)
            .is_some_and(|h| id.starts_with(h))
        {
            cfg.remove("Hostname");
        }
        if let Some(image) = cfg.get("Image").and_then(Value::as_str) {
            let image = self.image(image);
            cfg.insert("Image".into(), json!(image));
        }
        if !self.prefix.is_empty() {
            let labels = cfg.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            labels[PREFIX_LABEL] = json!(self.prefix);
        }
        let mut host = doc.get("HostConfig").cloned().unwrap_or(json!({}));
        if let Some(binds) = host.get_mut("Binds").and_then(Value::as_array_mut) {
            for b in binds {
                if let Some(s) = b.as_str() {
                    let (src, rest) = s.split_once(':').unwrap_or((s, ""));
                    if !src.starts_with('/') {
                        *b = json!(format!("{}:{rest}", self.volume_ref(src)));
                    }
                }
            }
        }
        if let Some(mounts) = host.get_mut("Mounts").and_then(Value::as_array_mut) {
            for m in mounts {
                if str_at(m, "/Type") == Some("volume") {
                    if let Some(src) = str_at(m, "/Source").map(str::to_string) {
                        m["Source"] = json!(self.volume_ref(&src));
                    }
                }
            }
        }
        let mode = str_at(&host, "/NetworkMode").unwrap_or("default").to_string();
        let user_net =
            !matches!(mode.as_str(), "default" | "bridge" | "host" | "none") && !mode.starts_with("container:");
        if user_net {
            host["NetworkMode"] = json!(self.network_ref(&mode));
        }
        let mut udp = Vec::new();
        if self.isolate {
            // The gateway publishes the ports; the copy joins only its isolated network.
            for (key, binds) in host
                .get("PortBindings")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
                for b in binds.as_array().into_iter().flatten() {
                    let hp = str_at(b, "/HostPort").and_then(|p| p.parse::<u16>().ok());
                    match (hp, port.parse::<u16>(), proto) {
                        (Some(hp), Ok(port), "tcp") => forwards.push(Forward {
                            host_ip: str_at(b, "/HostIp").unwrap_or("").to_string(),
                            host_port: hp,
                            alias: name.to_string(),
                            port,
                        }),
                        _ => udp.push(key.clone()),
                    }
                }
            }
            if let Some(h) = host.as_object_mut() {
                h.remove("PortBindings");
                h.insert("PublishAllPorts".into(), json!(false));
                h.insert("NetworkMode".into(), json!(self.p(ISOLATED_NETWORK)));
                h.remove("Links");
            }
        }
        cfg.insert("HostConfig".into(), host);
        // Endpoints: the primary network at create, the others connected afterwards.
        let mut endpoints: Vec<(String, Value)> = Vec::new();
        if let Some(nets) = doc.pointer("/NetworkSettings/Networks").and_then(Value::as_object) {
            for (net, ep) in nets {
                let aliases = crate::capture::user_aliases(ep, id);
                let mut e = Map::new();
                if !aliases.is_empty() {
                    e.insert("Aliases".into(), Value::Array(aliases));
                }
                if let Some(ipam) = ep.get("IPAMConfig").filter(|v| !v.is_null()) {
                    e.insert("IPAMConfig".into(), ipam.clone());
                }
                let restored = if matches!(net.as_str(), "bridge" | "host" | "none") {
                    net.clone()
                } else {
                    self.network_ref(net)
                };
                if *net == mode || (mode == "default" && net == "bridge") {
                    endpoints.insert(0, (restored, Value::Object(e)));
                } else {
                    endpoints.push((restored, Value::Object(e)));
                }
            }
        }
        if self.isolate {
            // One endpoint, on the isolated network, with every alias the container had and its
            // own name: the copy's parts find each other as they did.
            let aliases = isolated_aliases(name, endpoints.iter().map(|(_, ep)| ep));
            endpoints = vec![(self.p(ISOLATED_NETWORK), json!({"Aliases": aliases}))];
        }
        if let Some((net, ep)) = endpoints.first() {
            cfg.insert("NetworkingConfig".into(), json!({"EndpointsConfig": {net.clone(): ep}}));
        }
        let was_running = doc.pointer("/State/Running") == Some(&Value::Bool(true));
        Container {
            body,
            endpoints,
            forwards,
            udp,
            start: self.replicas.map(|n| n > 0).unwrap_or(was_running),
        }
    }

    /// The service `name` as captured rewritten for the restore; `ids` gives the id of a config
    /// or secret on the target by kind (`configs`, `secrets`) and name.
    pub(crate) fn service(
        &self,
        name: &str,
        doc: &Value,
        mut ids: impl FnMut(&str, &str) -> Result<String, DockerError>,
    ) -> Result<Service, DockerError> {
        let mut forwards = Vec::new();
        let target = self.p(name);
        let mut spec = doc.get("Spec").cloned().unwrap_or(json!({}));
        spec["Name"] = json!(target);
        let mut note = None;
        if let Some(cs) = spec.pointer_mut("/TaskTemplate/ContainerSpec") {
            if let Some(image) = cs.get("Image").and_then(Value::as_str) {
                cs["Image"] = json!(self.image(image));
            }
            if let Some(mounts) = cs.get_mut("Mounts").and_then(Value::as_array_mut) {
                for m in mounts {
                    if str_at(m, "/Type").unwrap_or("volume") == "volume" {
                        if let Some(src) = str_at(m, "/Source").map(str::to_string) {
                            m["Source"] = json!(self.volume_ref(&src));
                        }
                    }
                }
            }
            for (key, name_key, id_key, kind) in [
                ("Configs", "ConfigName", "ConfigID", "configs"),
                ("Secrets", "SecretName", "SecretID", "secrets"),
            ] {
                if let Some(refs) = cs.get_mut(key).and_then(Value::as_array_mut) {
                    for r in refs {
                        let Some(orig) = str_at(r, &format!("/{name_key}")).map(str::to_string) else {
                            continue;
                        };
                        let restored = if self.capture.kind(kind).contains_key(&orig) {
                            self.p(&orig)
                        } else {
                            orig.clone()
                        };
                        let id = ids(kind, &restored)?;
                        r[name_key] = json!(restored);
                        r[id_key] = json!(id);
                    }
                }
            }
        }
        if let Some(nets) = spec.pointer_mut("/TaskTemplate/Networks").and_then(Value::as_array_mut) {
            for n in nets {
                if let Some(t) = str_at(n, "/Target").map(str::to_string) {
                    n["Target"] = json!(self.network_ref(&t));
                }
            }
        }
        if self.isolate {
            let nets = spec
                .pointer("/TaskTemplate/Networks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let aliases = isolated_aliases(name, nets.iter());
            spec["TaskTemplate"]["Networks"] = json!([{"Target": self.p(ISOLATED_NETWORK), "Aliases": aliases}]);
            let mut udp = Vec::new();
            if let Some(ports) = spec.pointer_mut("/EndpointSpec/Ports").and_then(Value::as_array_mut) {
                for port in ports.drain(..) {
                    let published = port.get("PublishedPort").and_then(Value::as_u64);
                    let target = port.get("TargetPort").and_then(Value::as_u64);
                    match (published, target, str_at(&port, "/Protocol").unwrap_or("tcp")) {
                        (Some(p), Some(t), "tcp") => forwards.push(Forward {
                            host_ip: String::new(),
                            host_port: p as u16,
                            alias: name.to_string(),
                            port: t as u16,
                        }),
                        (_, t, proto) => udp.push(format!("{}/{proto}", t.unwrap_or(0))),
                    }
                }
            }
            if !udp.is_empty() {
                note = Some(with_udp(note.as_deref().unwrap_or("created"), &udp));
            }
        }
        if (!self.prefix.is_empty() || self.replicas.is_some()) && !spec.get("Labels").is_some_and(Value::is_object) {
            spec["Labels"] = json!({});
        }
        if !self.prefix.is_empty() {
            spec["Labels"][PREFIX_LABEL] = json!(self.prefix);
        }
        if let Some(r) = self.replicas {
            if let Some(rep) = spec.pointer_mut("/Mode/Replicated") {
                let was = rep.get("Replicas").and_then(Value::as_u64).unwrap_or(1);
                rep["Replicas"] = json!(r);
                if r == 0 && was > 0 {
                    spec["Labels"][crate::control::REPLICAS_LABEL] = json!(was.to_string());
                }
            } else if r == 0 {
                // A global service cannot be scaled: it is held off every node until it is started.
                crate::control::hold_global(&mut spec, true);
                note =
                    Some("global service: held off every node (placement constraint) until it is started".to_string());
            } else {
                note = Some("global service: --replicas does not apply".to_string());
            }
        }
        Ok(Service { spec, forwards, note })
    }
}

/// The aliases a workload has on an isolated copy's one network: its own name, then every alias
/// of `endpoints` (its network attachments), each once.
fn isolated_aliases<'a>(name: &str, endpoints: impl Iterator<Item = &'a Value>) -> Vec<Value> {
    let mut aliases: Vec<Value> = vec![json!(name)];
    for ep in endpoints {
        for a in ep.get("Aliases").and_then(Value::as_array).into_iter().flatten() {
            if !aliases.contains(a) {
                aliases.push(a.clone());
            }
        }
    }
    aliases
}

/// `line`, plus the UDP ports an isolated copy's gateway does not forward.
pub(crate) fn with_udp(line: &str, udp: &[String]) -> String {
    match udp.is_empty() {
        true => line.to_string(),
        false => format!(
            "{line}; ports {} not forwarded by the drill's gateway (TCP only)",
            udp.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests;
