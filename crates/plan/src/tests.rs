use super::*;

const GOOD: &str = r#"
apiVersion: lifeboat.dev/v1
kind: DRPlan
metadata: {name: shop}
repository: /var/lib/lifeboat/repo
sites:
  east: {docker: {host: "unix:///run/east.sock", address: 10.77.1.2}}
  west: {docker: {host: "tcp://10.77.2.2:2376", tls: {ca: /etc/lifeboat/west/ca.pem, cert: /etc/lifeboat/west/cert.pem, key: /etc/lifeboat/west/key.pem}}}
apps:
  - name: shop
    profile: dr
    primary: east
    standby: west
    standby_mode: hot
    select: {labels: {app: shop}}
    objectives: {rto: 60s, rpo: 5m}
    backup: {every: 1m, keep: {hourly: 24, daily: 7}}
    health:
      - http: {url: "http://{site}:8080/healthz"}
        interval: 1s
        failure_threshold: 3
        success_threshold: 2
    traffic:
      dns: {server: "10.77.0.53:53", zone: example.test., name: shop, tsig_key: /etc/lifeboat/tsig.key,
            primary: 10.77.1.2, standby: 10.77.2.2}
    verify: [{http: {url: "http://{site}:8080/items", expect_body_contains: widget}}]
"#;

#[test]
fn the_design_example_parses_with_every_field() {
    let p = Plan::parse("shop.yaml", GOOD).unwrap();
    assert_eq!(p.metadata.name, "shop");
    assert_eq!(
        p.sites["east"],
        Site::Docker {
            host: Some("unix:///run/east.sock".into()),
            address: Some("10.77.1.2".into()),
            tls: None,
            insecure: false,
        }
    );
    assert!(
        matches!(&p.sites["west"], Site::Docker { tls: Some(t), insecure: false, .. } if t.key.ends_with("key.pem"))
    );
    assert!(p.witness.is_none());
    let a = p.app("shop").unwrap();
    assert_eq!((a.profile, a.standby_mode), (Profile::Dr, StandbyMode::Hot));
    assert_eq!(
        a.objectives.as_ref().unwrap().rpo.as_ref().unwrap().value.0.as_secs(),
        300
    );
    assert_eq!(a.backup.as_ref().unwrap().keep.daily, Some(7));
    let h = &a.health[0];
    assert_eq!((h.failure_threshold.value, h.success_threshold.value), (3, 2));
    assert!(matches!(a.traffic, Some(Traffic::Dns { ttl: 5, .. })));
}

#[test]
fn a_typo_is_named_with_its_line() {
    let bad = GOOD.replace("standby_mode: hot", "standby_mod: hot");
    let e = Plan::parse("shop.yaml", &bad).unwrap_err();
    let PlanError::Syntax { line, message, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*line, 14, "{e}");
    assert!(message.contains("standby_mod"), "{e}");
    assert!(e.to_string().starts_with("shop.yaml:14:5: unknown field"), "{e}");
}

#[test]
fn a_bad_duration_is_named() {
    let e = Plan::parse("p.yaml", &GOOD.replace("rpo: 5m", "rpo: 5 minutes")).unwrap_err();
    assert!(
        e.to_string().contains("5 minutes") && e.to_string().contains("p.yaml:16:"),
        "{e}"
    );
}

#[test]
fn every_inconsistency_is_reported_at_once_with_line_and_field() {
    let bad = GOOD
        .replace("standby: west", "standby: north")
        .replace("failure_threshold: 3", "failure_threshold: 0")
        .replace("kind: DRPlan", "kind: Plan");
    let e = Plan::parse("p.yaml", &bad).unwrap_err();
    let PlanError::Invalid { problems, .. } = &e else {
        panic!("{e}")
    };
    let got: Vec<(u64, &str)> = problems.iter().map(|p| (p.line, p.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (3, "kind"),
            (13, "apps[0].standby"),
            (21, "apps[0].health[0].failure_threshold")
        ],
        "{e}"
    );
    assert!(e.to_string().contains("no site \"north\" (sites: east, west)"), "{e}");
}

#[test]
fn a_dr_app_needs_another_site_as_standby() {
    let e = Plan::parse("p.yaml", &GOOD.replace("standby: west", "standby: east")).unwrap_err();
    assert!(e.to_string().contains("another site"), "{e}");
    let e = Plan::parse("p.yaml", &GOOD.replace("    standby: west\n", "")).unwrap_err();
    assert!(e.to_string().contains("needs a standby"), "{e}");
}

/// A field the plan accepts but nothing carries out is refused, not silently ignored.
#[test]
fn profile_multi_site_is_refused_until_it_is_carried_out() {
    let e = Plan::parse("p.yaml", &GOOD.replace("profile: dr", "profile: multi-site")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("profile multi-site") && msg.contains("not carried out"),
        "{msg}"
    );
    assert!(
        msg.contains("line 10: apps[0].profile"),
        "names the app and its line: {msg}"
    );
    let single = GOOD
        .replace("profile: dr", "profile: single-site")
        .replace("    standby: west\n", "");
    assert!(Plan::parse("p.yaml", &single).is_ok());
}

#[test]
fn not_yaml_is_a_syntax_error() {
    let e = Plan::parse("p.yaml", "apps: [\n").unwrap_err();
    assert!(matches!(e, PlanError::Syntax { .. }), "{e}");
}

#[test]
fn a_site_address_comes_from_a_tcp_host_or_must_be_given_when_probes_use_it() {
    let tcp = Site::Docker {
        host: Some("tcp://10.77.1.2:2375".into()),
        address: None,
        tls: None,
        insecure: true,
    };
    assert_eq!(tcp.address().as_deref(), Some("10.77.1.2"));
    let ssh = Site::Docker {
        host: Some("ssh://ops@10.77.1.3:22".into()),
        address: None,
        tls: None,
        insecure: false,
    };
    assert_eq!(ssh.address().as_deref(), Some("10.77.1.3"));
    let bad = GOOD.replace(", address: 10.77.1.2", "");
    let e = Plan::parse("shop.yaml", &bad).unwrap_err();
    let PlanError::Invalid { problems, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(problems[0].field, "sites.east.address");
    assert_eq!(problems[0].line, 12, "the line of the app's primary: {e}");
}

#[test]
fn a_witness_has_a_default_max_age() {
    let p = Plan::parse("shop.yaml", &format!("{GOOD}witness: {{}}\n")).unwrap();
    assert_eq!(p.witness.unwrap().max_age.0.as_secs(), 10);
}

#[test]
fn coordination_has_defaults_from_its_endpoints_and_ttl() {
    let p = Plan::parse(
        "shop.yaml",
        &format!("{GOOD}coordination: {{etcd: {{endpoints: [\"http://10.77.1.2:2381\", \"http://10.77.2.2:2381\", \"http://10.77.3.2:2381\"]}}}}\n"),
    )
    .unwrap();
    let c = p.coordination.unwrap();
    assert_eq!((c.voters(), c.majority()), (3, 2));
    assert_eq!(c.ttl().as_secs(), 10);
    assert_eq!(c.self_fence_after().as_secs(), 4, "40% of the TTL");
}

#[test]
fn coordination_that_cannot_be_carried_out_is_refused_field_by_field() {
    let fields = |section: &str| -> Vec<String> {
        let e = Plan::parse("p.yaml", &format!("{GOOD}{section}")).unwrap_err();
        let PlanError::Invalid { problems, .. } = &e else {
            panic!("{e}")
        };
        problems.iter().map(|p| p.field.clone()).collect()
    };
    assert_eq!(
        fields("coordination: {etcd: {endpoints: []}}\n"),
        ["coordination.etcd.endpoints"]
    );
    assert_eq!(
        fields("coordination: {etcd: {endpoints: [\"10.77.1.2:2381\", \"http://h:2381/v3\"]}}\n"),
        ["coordination.etcd.endpoints[0]", "coordination.etcd.endpoints[1]"]
    );
    assert_eq!(
        fields("coordination: {etcd: {endpoints: [\"http://h:2381\"], ttl: 1s}}\n"),
        ["coordination.etcd.ttl"]
    );
    assert_eq!(
        fields("coordination: {etcd: {endpoints: [\"http://h:2381\"]}, self_fence_after: 9s}\n"),
        ["coordination.self_fence_after"],
        "a self-fence that may end after the lease"
    );
    assert_eq!(
        fields("coordination: {etcd: {endpoints: [\"http://h:2381\"], cert: c.pem}}\n"),
        ["coordination.etcd.cert", "coordination.etcd.ca"]
    );
    assert_eq!(
        fields("witness: {}\ncoordination: {etcd: {endpoints: [\"http://h:2381\"]}, instances: 0}\n"),
        ["coordination", "coordination.instances"]
    );
}

#[test]
fn hooks_parse_with_defaults_and_an_empty_command_is_named_with_its_line() {
    let with = |hooks: &str| GOOD.replace("    verify: [", &format!("{hooks}    verify: ["));
    let p = Plan::parse(
        "p.yaml",
        &with(
            "    hooks:\n      pre_backup: [{exec: {container: db, command: [pg_dump, -f, /backup/d.sql]}}]\n      \
             post_restore: [{exec: {container: web, command: [sh, -c, 'true']}, timeout: 5s, on_error: continue}]\n",
        ),
    )
    .unwrap();
    let h = &p.apps[0].hooks;
    assert_eq!(h.pre_backup[0].exec.value.container, "db");
    assert_eq!(h.pre_backup[0].timeout, Dur(std::time::Duration::from_secs(60)));
    assert_eq!(h.pre_backup[0].on_error, HookOnError::Fail);
    assert_eq!(h.post_restore[0].on_error, HookOnError::Continue);
    assert!(h.post_backup.is_empty());

    let e = Plan::parse(
        "p.yaml",
        &with("    hooks:\n      post_backup:\n        - exec: {container: db, command: []}\n"),
    )
    .unwrap_err();
    let PlanError::Invalid { problems, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(
        (problems[0].line, problems[0].field.as_str()),
        (28, "apps[0].hooks.post_backup[0].exec.command"),
        "{e}"
    );
    let e = Plan::parse(
        "p.yaml",
        &with("    hooks: {pre_backup: [{exec: {container: db, cmd: [x]}}]}\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cmd"), "unknown field named: {e}");
}

#[test]
fn stop_grace_is_read_and_defaults_to_the_engines() {
    assert_eq!(Plan::parse("p.yaml", GOOD).unwrap().apps[0].stop_grace, None);
    let p = Plan::parse(
        "p.yaml",
        &GOOD.replace("    verify: [", "    stop_grace: 3s\n    verify: ["),
    )
    .unwrap();
    assert_eq!(p.apps[0].stop_grace, Some(Dur(std::time::Duration::from_secs(3))));
}

#[test]
fn apps_on_kubernetes_select_namespaces_and_keep_to_one_kind_of_site() {
    let with_kube = GOOD.replace(
        "  west: {docker:",
        "  south: {kubernetes: {kubeconfig: /etc/lifeboat/south.kubeconfig, context: south, address: 10.77.3.2}}\n  west: {docker:",
    );
    let mixed = with_kube.replace("standby: west", "standby: south");
    let e = Plan::parse("shop.yaml", &mixed).unwrap_err().to_string();
    assert!(e.contains("apps[0].standby") && e.contains("same kind"), "{e}");
    let kube = mixed.replace("primary: east", "primary: south2").replace(
        "  south: {kubernetes:",
        "  south2: {kubernetes: {context: s2, address: 10.77.4.2}}\n  south: {kubernetes:",
    );
    let e = Plan::parse("shop.yaml", &kube).unwrap_err().to_string();
    assert!(
        e.contains("apps[0].select.namespaces") && !e.contains("same kind"),
        "{e}"
    );
    let ok = kube.replace(
        "select: {labels: {app: shop}}",
        "select: {namespaces: [shop], labels: {app: shop}}",
    );
    let p = Plan::parse("shop.yaml", &ok).unwrap();
    assert!(matches!(&p.sites["south"], Site::Kubernetes { helper_image: None, .. }));
    let docker_ns = GOOD.replace("select: {labels: {app: shop}}", "select: {namespaces: [shop]}");
    let e = Plan::parse("shop.yaml", &docker_ns).unwrap_err().to_string();
    assert!(e.contains("namespaces are Kubernetes'"), "{e}");
}

#[test]
fn a_drill_allow_list_is_networks_and_only_for_kubernetes_sites() {
    let kube = GOOD
        .replace(
            "  east: {docker: {host: \"unix:///run/east.sock\", address: 10.77.1.2}}\n  west: {docker: {host: \"tcp://10.77.2.2:2376\", tls: {ca: /etc/lifeboat/west/ca.pem, cert: /etc/lifeboat/west/cert.pem, key: /etc/lifeboat/west/key.pem}}}",
            "  east: {kubernetes: {context: e, address: 10.77.1.2}}\n  west: {kubernetes: {context: w, address: 10.77.2.2}}",
        )
        .replace("select: {labels: {app: shop}}", "select: {namespaces: [shop]}");
    assert!(!kube.contains("docker:"), "the fixture's sites changed: {kube}");
    assert!(Plan::parse("p.yaml", &kube).unwrap().apps[0].drill.allow.is_empty());
    let allow = |list: &str| {
        kube.replace(
            "    verify: [",
            &format!("    drill: {{allow: [{list}]}}\n    verify: ["),
        )
    };
    let p = Plan::parse("p.yaml", &allow("10.77.0.0/16, \"fd00::/8\"")).unwrap();
    let nets: Vec<&str> = p.apps[0].drill.allow.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(nets, ["10.77.0.0/16", "fd00::/8"]);
    for bad in ["10.77.0.0", "10.77.0.0/33", "shop/8", "fd00::/129"] {
        let e = Plan::parse("p.yaml", &allow(&format!("\"{bad}\"")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apps[0].drill.allow") && e.contains("is not a network"),
            "{bad}: {e}"
        );
    }
    // A Docker drill copy has no network isolation to open: the field would do nothing.
    let docker = GOOD.replace("    verify: [", "    drill: {allow: [10.77.0.0/16]}\n    verify: [");
    let e = Plan::parse("p.yaml", &docker).unwrap_err().to_string();
    assert!(e.contains("drill.allow") && e.contains("Docker"), "{e}");
}

#[test]
fn a_drill_schedule_reads_its_fields_and_refuses_what_it_cannot_carry_out() {
    let with = |drill: &str| GOOD.replace("    verify: [", &format!("    drill: {drill}\n    verify: ["));
    let p = Plan::parse("p.yaml", &with("{every: 7d, keep: 20, site: west}")).unwrap();
    let d = &p.apps[0].drill;
    assert_eq!(
        d.every.as_ref().unwrap().value.0,
        std::time::Duration::from_secs(7 * 86_400)
    );
    assert_eq!(
        (d.keep.as_ref().unwrap().value, d.site.as_ref().unwrap().value.as_str()),
        (20, "west")
    );
    assert_eq!(d.interval(), std::time::Duration::from_secs(7 * 86_400));
    let none = Plan::parse("p.yaml", GOOD).unwrap();
    assert_eq!(
        none.apps[0].drill.interval(),
        DEFAULT_DRILL_INTERVAL,
        "no schedule: 30 days"
    );
    for (bad, field, says) in [
        ("{every: 30s}", "apps[0].drill.every", "1m or more"),
        ("{keep: 0}", "apps[0].drill.keep", "1 or more"),
        ("{site: north}", "apps[0].drill.site", "no site \"north\""),
        ("{site: east}", "apps[0].drill.site", "primary"),
        ("{every: 1d, sometimes: yes}", "sometimes", "unknown field"),
    ] {
        let e = Plan::parse("p.yaml", &with(bad)).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(says), "{bad}: {e}");
    }
    let single = with("{every: 1d, site: west}").replace("profile: dr", "profile: single-site");
    let e = Plan::parse("p.yaml", &single).unwrap_err().to_string();
    assert!(e.contains("apps[0].drill.every") && e.contains("profile dr"), "{e}");
}

#[test]
fn a_plain_tcp_engine_is_refused_without_insecure() {
    let plain = GOOD.replace(
        "tls: {ca: /etc/lifeboat/west/ca.pem, cert: /etc/lifeboat/west/cert.pem, key: /etc/lifeboat/west/key.pem}",
        "address: 10.77.2.2",
    );
    let e = Plan::parse("shop.yaml", &plain).unwrap_err();
    let PlanError::Invalid { problems, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(problems[0].field, "sites.west.docker");
    assert!(problems[0].message.contains("plain, unauthenticated TCP"), "{e}");
    assert!(problems[0].message.contains("insecure: true"), "{e}");
    // Said on purpose: accepted.
    let insecure = plain.replace("address: 10.77.2.2", "address: 10.77.2.2, insecure: true");
    Plan::parse("shop.yaml", &insecure).unwrap();
    // TLS on a unix socket, or TLS and insecure together: refused.
    let both = GOOD.replace(
        "key: /etc/lifeboat/west/key.pem}",
        "key: /etc/lifeboat/west/key.pem}, insecure: true",
    );
    assert!(Plan::parse("shop.yaml", &both)
        .unwrap_err()
        .to_string()
        .contains("together"));
    let unix_tls = GOOD.replace(
        "{host: \"unix:///run/east.sock\", address: 10.77.1.2}",
        "{host: \"unix:///run/east.sock\", address: 10.77.1.2, tls: {ca: /c, cert: /c, key: /k}}",
    );
    assert!(Plan::parse("shop.yaml", &unix_tls)
        .unwrap_err()
        .to_string()
        .contains("tcp:// engines only"));
}

#[test]
fn a_plan_name_that_is_not_a_plain_name_is_refused() {
    // Found by review: the name is a path segment of `dr/PLAN/APP/...` in the repository, and
    // `../x` wrote state files outside it on a local repository.
    for bad in ["../x", "a/b", "Shop", ""] {
        let text = GOOD.replacen("metadata: {name: shop}", &format!("metadata: {{name: \"{bad}\"}}"), 1);
        assert_ne!(text, GOOD);
        let e = Plan::parse("p.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("metadata.name") && e.contains("lower-case"), "{bad}: {e}");
    }
    assert!(Plan::parse("p.yaml", GOOD).is_ok());
}
