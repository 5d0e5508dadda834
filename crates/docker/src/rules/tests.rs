use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;

/// A capture holding volume `data`, network `back` (id `n1`), config `conf` and secret `pw`.
fn capture() -> Capture {
    let mut c = Capture::default();
    c.volumes.insert("data".into(), json!({}));
    c.networks.insert("back".into(), json!({"Id": "n1"}));
    c.configs.insert("conf".into(), json!({}));
    c.secrets.insert("pw".into(), json!({}));
    c
}

fn rules<'a>(capture: &'a Capture, images: &'a HashMap<String, String>, prefix: &'a str, isolate: bool) -> Rules<'a> {
    Rules {
        prefix,
        isolate,
        replicas: None,
        capture,
        images,
    }
}

/// An inspect document of container `web` (id `abc123...`): volume `data` bound, a host path
/// bound, on network `back` with alias `api`, TCP 8080 and UDP 53 published, running.
fn web() -> Value {
    json!({
        "Id": "abc123def456",
        "Config": {"Hostname": "abc123def456", "Image": "shop:1", "Labels": {"app": "web"}},
        "HostConfig": {
            "Binds": ["data:/var/lib/data", "/etc/hosts:/etc/hosts:ro"],
            "Mounts": [{"Type": "volume", "Source": "data", "Target": "/d"}, {"Type": "bind", "Source": "/x"}],
            "NetworkMode": "back",
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}], "53/udp": [{"HostPort": "53"}]},
            "Links": ["/db:/web/db"]
        },
        "NetworkSettings": {"Networks": {
            "back": {"Aliases": ["api", "abc123def456"], "IPAMConfig": null},
            "bridge": {"Aliases": null}
        }},
        "State": {"Running": true}
    })
}

#[test]
fn a_container_restored_under_a_prefix_refers_to_its_own_volumes_and_networks() {
    let (cap, images) = (
        capture(),
        HashMap::from([("shop:1".to_string(), "registry.b/shop:1".to_string())]),
    );
    let c = rules(&cap, &images, "drill-1-", false).container("web", &web());
    let b = &c.body;
    assert_eq!(b["Image"], "registry.b/shop:1", "the image map applies");
    assert!(
        b.get("Hostname").is_none(),
        "a hostname that was the container id is dropped"
    );
    assert_eq!(b["Labels"]["app"], "web");
    assert_eq!(b["Labels"][PREFIX_LABEL], "drill-1-");
    assert_eq!(
        b["HostConfig"]["Binds"],
        json!(["drill-1-data:/var/lib/data", "/etc/hosts:/etc/hosts:ro"]),
        "the snapshot's volume is renamed, a host path is not"
    );
    assert_eq!(b["HostConfig"]["Mounts"][0]["Source"], "drill-1-data");
    assert_eq!(b["HostConfig"]["Mounts"][1]["Source"], "/x");
    assert_eq!(b["HostConfig"]["NetworkMode"], "drill-1-back");
    let nets: Vec<&str> = c.endpoints.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nets, ["drill-1-back", "bridge"], "the primary network first");
    assert_eq!(
        c.endpoints[0].1,
        json!({"Aliases": ["api"]}),
        "the id alias is Docker's own"
    );
    assert_eq!(
        b["NetworkingConfig"]["EndpointsConfig"]["drill-1-back"],
        c.endpoints[0].1
    );
    assert!(c.forwards.is_empty() && c.udp.is_empty());
    assert!(c.start, "it ran");
}

#[test]
fn an_isolated_container_joins_only_the_copy_s_network_and_its_ports_go_through_the_gateway() {
    let (cap, images) = (capture(), HashMap::new());
    let c = rules(&cap, &images, "drill-1-", true).container("web", &web());
    let host = &c.body["HostConfig"];
    assert!(host.get("PortBindings").is_none() && host.get("Links").is_none());
    assert_eq!(host["PublishAllPorts"], false);
    assert_eq!(host["NetworkMode"], "drill-1-isolated");
    assert_eq!(
        c.endpoints,
        [("drill-1-isolated".to_string(), json!({"Aliases": ["web", "api"]}))]
    );
    assert_eq!(
        c.forwards,
        [Forward {
            host_ip: "127.0.0.1".into(),
            host_port: 18080,
            alias: "web".into(),
            port: 8080,
        }]
    );
    assert_eq!(c.udp, ["53/udp"], "UDP is not forwarded, and the result says so");
    assert_eq!(
        with_udp("started", &c.udp),
        "started; ports 53/udp not forwarded by the drill's gateway (TCP only)"
    );
}

#[test]
fn a_container_restored_with_zero_replicas_is_created_stopped() {
    let (cap, images) = (capture(), HashMap::new());
    let mut r = rules(&cap, &images, "", false);
    r.replicas = Some(0);
    let c = r.container("web", &web());
    assert!(!c.start);
    assert!(
        c.body["Labels"].get(PREFIX_LABEL).is_none(),
        "no prefix, no prefix label"
    );
    assert_eq!(
        c.body["HostConfig"]["Binds"][0], "data:/var/lib/data",
        "in place, names are kept"
    );
}

/// A service spec of `api`: volume `data`, config `conf`, an external secret `ext`, network by id
/// `n1`, TCP 80 and UDP 53 published, 3 replicas.
fn api() -> Value {
    json!({"Spec": {
        "Name": "api",
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "shop:1",
                "Mounts": [{"Source": "data", "Target": "/d"}],
                "Configs": [{"ConfigName": "conf", "ConfigID": "old"}],
                "Secrets": [{"SecretName": "ext", "SecretID": "old"}]
            },
            "Networks": [{"Target": "n1", "Aliases": ["api-alias"]}]
        },
        "EndpointSpec": {"Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 18081},
            {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 53}
        ]},
        "Mode": {"Replicated": {"Replicas": 3}}
    }})
}

#[test]
fn a_service_refers_to_its_restored_objects_by_their_ids_on_the_target() {
    let (cap, images) = (capture(), HashMap::new());
    let mut asked = Vec::new();
    let mut r = rules(&cap, &images, "p-", false);
    r.replicas = Some(0);
    let s = r
        .service("api", &api(), |kind, name| {
            asked.push(format!("{kind} {name}"));
            Ok(format!("id-of-{name}"))
        })
        .unwrap();
    assert_eq!(
        asked,
        ["configs p-conf", "secrets ext"],
        "a secret the snapshot does not hold keeps its name"
    );
    let cs = &s.spec["TaskTemplate"]["ContainerSpec"];
    assert_eq!(
        cs["Configs"][0],
        json!({"ConfigName": "p-conf", "ConfigID": "id-of-p-conf"})
    );
    assert_eq!(cs["Secrets"][0]["SecretID"], "id-of-ext");
    assert_eq!(cs["Mounts"][0]["Source"], "p-data");
    assert_eq!(s.spec["Name"], "p-api");
    assert_eq!(
        s.spec["TaskTemplate"]["Networks"][0]["Target"], "p-back",
        "a network id becomes its restored name"
    );
    assert_eq!(s.spec["Mode"]["Replicated"]["Replicas"], 0);
    assert_eq!(
        s.spec["Labels"][crate::control::REPLICAS_LABEL],
        "3",
        "what it had is kept for the start"
    );
    assert_eq!(s.spec["Labels"][PREFIX_LABEL], "p-");
    assert!(s.forwards.is_empty());
}

#[test]
fn an_isolated_service_publishes_nothing_itself() {
    let (cap, images) = (capture(), HashMap::new());
    let s = rules(&cap, &images, "d-", true)
        .service("api", &api(), |_, n| Ok(n.to_string()))
        .unwrap();
    assert_eq!(s.spec["EndpointSpec"]["Ports"], json!([]));
    assert_eq!(
        s.spec["TaskTemplate"]["Networks"],
        json!([{"Target": "d-isolated", "Aliases": ["api", "api-alias"]}])
    );
    assert_eq!(s.forwards.len(), 1);
    assert_eq!((s.forwards[0].host_port, s.forwards[0].port), (18081, 80));
    assert!(s.note.unwrap().contains("53/udp not forwarded"));
}

#[test]
fn a_global_service_restored_stopped_is_held_off_every_node() {
    let (cap, images) = (capture(), HashMap::new());
    let mut doc = api();
    doc["Spec"]["Mode"] = json!({"Global": {}});
    let mut r = rules(&cap, &images, "", false);
    r.replicas = Some(0);
    let s = r.service("api", &doc, |_, n| Ok(n.to_string())).unwrap();
    assert!(s.note.unwrap().starts_with("global service: held off every node"));
}
