//! `diff SNAPSHOT live`: what differs between a snapshot and what an engine runs now (drift).
//!
//! Objects are compared on what a user chose (image, command, environment, mounts, ports, labels,
//! resources, networks and aliases, service specs, config data, network and volume settings, node
//! labels), not on what the engine assigns (ids, times, versions, state). Volume data and secret
//! values are not compared (a secret's value cannot be read back from the API).
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::capture::{Capture, KINDS};
use crate::str_at;

/// One object that differs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    pub kind: String,
    pub name: String,
    /// `missing` (in the snapshot, not live), `added` (live, not in the snapshot) or `changed`.
    pub change: String,
    /// For `changed`: the JSON pointers of the fields that differ, with both values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub snapshot: Value,
    pub live: Value,
}

/// The part of an object's document that a user chose.
pub fn essence(kind: &str, doc: &Value) -> Value {
    let pick = |keys: &[&str], from: &Value| -> Value {
        let mut m = Map::new();
        for k in keys {
            if let Some(v) = from.get(*k).filter(|v| !v.is_null()) {
                m.insert(k.to_string(), v.clone());
            }
        }
        Value::Object(m)
    };
    match kind {
        "containers" => {
            let id = str_at(doc, "/Id").unwrap_or_default();
            let mut config = doc.get("Config").cloned().unwrap_or(json!({}));
            if let Some(c) = config.as_object_mut() {
                if c.get("Hostname")
                    .and_then(Value::as_str)
                    .is_some_and(|h| id.starts_with(h))
                {
                    c.remove("Hostname");
                }
            }
            let mut nets = Map::new();
            if let Some(n) = doc.pointer("/NetworkSettings/Networks").and_then(Value::as_object) {
                for (name, ep) in n {
                    let mut aliases = crate::capture::user_aliases(ep, id);
                    aliases.sort_by_key(|a| a.to_string());
                    nets.insert(name.clone(), json!({ "Aliases": aliases }));
                }
            }
            json!({
                "Config": config,
                "HostConfig": doc.get("HostConfig"),
                "Networks": nets,
                "Running": doc.pointer("/State/Running"),
            })
        }
        // A global service held back on a hot standby (see `control::hold_global`) is compared
        // as its owner defined it: the hold is Lifeboat's, not drift.
        "services" => {
            let mut spec = doc.get("Spec").cloned().unwrap_or(Value::Null);
            if crate::control::held_back(&spec) {
                crate::control::hold_global(&mut spec, false);
            }
            spec
        }
        "configs" => doc.get("Spec").cloned().unwrap_or(Value::Null),
        "secrets" => {
            let mut spec = doc.get("Spec").cloned().unwrap_or(json!({}));
            if let Some(s) = spec.as_object_mut() {
                s.remove("Data");
            }
            spec
        }
        "networks" => {
            let mut v = pick(
                &["Driver", "Internal", "Attachable", "EnableIPv6", "Options", "Labels"],
                doc,
            );
            if let Some(o) = v.get_mut("Options").and_then(Value::as_object_mut) {
                o.remove("com.docker.network.driver.overlay.vxlanid_list");
            }
            v["IPAM"] = doc.pointer("/IPAM/Config").cloned().unwrap_or(Value::Null);
            v
        }
        "volumes" => pick(&["Driver", "Options", "Labels"], doc),
        "nodes" => doc.pointer("/Spec/Labels").cloned().unwrap_or(json!({})),
        _ => doc.clone(),
    }
}

/// Compares two values and lists the pointers where they differ (a missing key equals null, an
/// empty object or an empty list).
pub fn compare(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if a == b || (empty(a) && empty(b)) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                compare(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ => out.push(FieldChange {
            path: if path.is_empty() { "/".into() } else { path.into() },
            snapshot: a.clone(),
            live: b.clone(),
        }),
    }
}

/// Every object that differs between `snapshot` and `live`, by kind in restore order, then name.
pub fn diff(snapshot: &Capture, live: &Capture) -> Vec<Difference> {
    let mut out = Vec::new();
    for kind in KINDS {
        let (a, b) = (snapshot.kind(kind), live.kind(kind));
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let (change, fields) = match (a.get(name), b.get(name)) {
                (Some(_), None) => ("missing", Vec::new()),
                (None, Some(_)) => ("added", Vec::new()),
                (Some(x), Some(y)) => {
                    let mut f = Vec::new();
                    compare("", &essence(kind, x), &essence(kind, y), &mut f);
                    if f.is_empty() {
                        continue;
                    }
                    ("changed", f)
                }
                (None, None) => continue,
            };
            out.push(Difference {
                kind: kind.trim_end_matches('s').to_string(),
                name: name.clone(),
                change: change.into(),
                fields,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (lab: `a_global_swarm_service_is_not_started_on_a_hot_standby`): `plan check`
    /// reported a held-back global service on the standby as drift.
    #[test]
    fn a_held_back_global_service_is_not_drift() {
        let own = json!({"Name": "agent", "Labels": {"app": "rv"}, "Mode": {"Global": {}},
                         "TaskTemplate": {"ContainerSpec": {"Image": "web:1"}}});
        let mut held = own.clone();
        crate::control::hold_global(&mut held, true);
        assert_ne!(held, own);
        assert_eq!(
            essence("services", &json!({"Spec": held})),
            essence("services", &json!({"Spec": own}))
        );
    }

    #[test]
    fn engine_assigned_fields_are_not_drift() {
        let mut a = Capture::default();
        let mut b = Capture::default();
        a.containers.insert(
            "web".into(),
            json!({"Id": "abc123456789ff", "Created": "t1", "State": {"Running": true, "Pid": 10},
                   "Config": {"Hostname": "abc123456789", "Image": "web:1", "Env": ["A=1"]}}),
        );
        b.containers.insert(
            "web".into(),
            json!({"Id": "def", "Created": "t2", "State": {"Running": true, "Pid": 99},
                   "Config": {"Image": "web:1", "Env": ["A=1"]}}),
        );
        assert!(diff(&a, &b).is_empty());
    }

    #[test]
    fn changes_missing_and_added_are_reported() {
        let mut a = Capture::default();
        let mut b = Capture::default();
        a.services.insert(
            "web".into(),
            json!({"Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 2}}}}),
        );
        b.services.insert(
            "web".into(),
            json!({"Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": 3}}}}),
        );
        a.volumes.insert("gone".into(), json!({"Driver": "local"}));
        b.configs.insert("new".into(), json!({"Spec": {"Name": "new"}}));
        let d = diff(&a, &b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0].change, "missing");
        assert_eq!(d[1].change, "added");
        assert_eq!(d[2].kind, "service");
        assert_eq!(d[2].fields[0].path, "/Mode/Replicated/Replicas");
        assert_eq!(d[2].fields[0].snapshot, json!(2));
    }
}
