//! End-to-end tests of `backup docker` and `restore --to docker` on two real lab sites (each its own
//! dockerd with Swarm in its own network namespace; `scripts/test.sh` starts them). Every test owns
//! the objects whose names start with its prefix and removes them before and after.
mod common;

use std::time::Duration;

use common::lab::{docker_sites, http_get, wait_for, Site};
use common::{json, ok, run};

fn new_repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    ok(&repo, &["repo", "init"]);
    (dir, repo)
}

/// Removes the test's objects on every site now and when dropped (also when the test fails).
struct Cleanup<'a>(&'a [Site], Vec<&'static str>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for s in self.0 {
            for p in &self.1 {
                s.cleanup(p);
            }
        }
    }
}

fn cleanup<'a>(sites: &'a [Site], prefixes: &[&'static str]) -> Cleanup<'a> {
    let c = Cleanup(sites, prefixes.to_vec());
    for s in sites {
        for p in prefixes {
            s.cleanup(p);
        }
    }
    c
}

fn psql(site: &Site, container: &str, sql: &str) -> String {
    site.docker(&["exec", container, "psql", "-U", "postgres", "-At", "-c", sql])
}

fn wait_postgres(site: &Site, container: &str) {
    wait_for(
        &format!("postgres in {container} on site {}", site.name),
        Duration::from_secs(120),
        || {
            site.docker_try(&["exec", container, "pg_isready", "-U", "postgres"])
                .0
                .then_some(())
        },
    );
}

const CHECKSUM: &str = "select count(*) || ':' || md5(string_agg(id || '=' || v, ',' order by id)) from items";

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn stack_with_config_secret_and_database_moves_to_another_site() {
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let _c = cleanup(&sites[..2], &["t1_"]);
    let pw = format!("pw-{}", std::process::id());

    a.docker(&["network", "create", "-d", "overlay", "--attachable", "t1_net"]);
    a.docker_stdin(&["config", "create", "t1_conf", "-"], b"config for t1\n");
    a.docker_stdin(&["secret", "create", "t1_pw", "-"], pw.as_bytes());
    a.docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "t1_web",
        "--label",
        "com.docker.stack.namespace=t1",
        "--network",
        "t1_net",
        "--config",
        "src=t1_conf,target=/www/config.txt",
        "--secret",
        "t1_pw",
        "--publish",
        "mode=host,target=8080,published=18081",
        "lifeboat-lab/web:1",
        "/bin/sh",
        "-c",
        "cp /run/secrets/t1_pw /www/secret.txt; exec httpd -f -p 8080 -h /www",
    ]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "t1_db",
        "--label",
        "com.docker.stack.namespace=t1",
        "--label",
        "io.lifeboat.hook.pre=psql -U postgres -c CHECKPOINT",
        "--network",
        "t1_net",
        "-v",
        "t1_dbdata:/var/lib/postgresql/data",
        "lifeboat-lab/postgres:15",
    ]);
    wait_postgres(a, "t1_db");
    psql(a, "t1_db", "create table items (id int primary key, v text)");
    psql(
        a,
        "t1_db",
        "insert into items select g, md5(g::text) from generate_series(1, 5000) g",
    );
    let sum_a = psql(a, "t1_db", CHECKSUM);
    assert!(sum_a.starts_with("5000:"), "{sum_a}");
    wait_for("the web service on site a", Duration::from_secs(120), || {
        http_get(&a.addr, 18081, "/secret.txt")
    });

    let (_d, repo) = new_repo();
    let first = json(&repo, &["backup", "docker", "--host", &a.docker_host, "--stack", "t1"]);
    for (kind, n) in [
        ("services", 1),
        ("containers", 1),
        ("networks", 1),
        ("volumes", 1),
        ("configs", 1),
        ("secrets", 1),
    ] {
        assert_eq!(first["objects"][kind], n, "{kind}: {first}");
    }
    assert_eq!(first["errors"], serde_json::json!([]), "{first}");
    assert_eq!(first["secrets_uncaptured"], serde_json::json!([]), "{first}");
    let snap = first["snapshot_id"].as_str().unwrap().to_string();
    // The secret is in the repository, encrypted: its bytes appear in no repository file.
    let leaks = common::files_containing(std::path::Path::new(&repo), pw.as_bytes());
    assert!(leaks.is_empty(), "secret in plaintext in {leaks:?}");

    let report = json(&repo, &["restore", &snap, "--to", &format!("docker:{}", b.docker_host)]);
    assert_eq!(report["failed"], 0, "{report}");
    let body = wait_for("the web service on site b", Duration::from_secs(120), || {
        http_get(&b.addr, 18081, "/secret.txt")
    });
    assert_eq!(body, pw);
    assert_eq!(
        http_get(&b.addr, 18081, "/config.txt").as_deref(),
        Some("config for t1\n")
    );
    wait_postgres(b, "t1_db");
    assert_eq!(
        psql(b, "t1_db", CHECKSUM),
        sum_a,
        "the database on b holds other rows than on a"
    );

    // A small change: the next backup adds only the changed chunks.
    psql(a, "t1_db", "update items set v = 'changed' where id = 42");
    let second = json(&repo, &["backup", "docker", "--host", &a.docker_host, "--stack", "t1"]);
    let (added1, added2) = (
        first["bytes_added"].as_u64().unwrap(),
        second["bytes_added"].as_u64().unwrap(),
    );
    let read2 = second["bytes_read"].as_u64().unwrap();
    eprintln!("first backup added {added1} bytes; after a one-row change: read {read2}, added {added2}");
    assert!(read2 > 10 << 20, "the database volume was read again ({read2} bytes)");
    // Each changed 8 KiB page costs its whole chunk (about 1 MiB before compression); a handful of
    // pages (row, WAL, control file, statistics) change.
    assert!(
        added2 * 20 < read2 && added2 * 2 < added1,
        "a one-row change added {added2} bytes of {read2} read (first backup added {added1})"
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn replicas_zero_defines_everything_and_runs_nothing_then_scales_up() {
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let _c = cleanup(&sites[..2], &["t2_", "standby-t2_"]);
    a.docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "t2_web",
        "--replicas",
        "2",
        "--label",
        "com.docker.stack.namespace=t2",
        "--mount",
        "type=volume,source=t2_data,target=/data",
        "lifeboat-lab/web:1",
    ]);
    a.docker(&[
        "volume",
        "create",
        "--label",
        "com.docker.stack.namespace=t2",
        "t2_data",
    ]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "t2_box",
        "--label",
        "com.docker.stack.namespace=t2",
        "lifeboat-lab/web:1",
    ]);
    let (_d, repo) = new_repo();
    let snap = json(&repo, &["backup", "docker", "--host", &a.docker_host, "--stack", "t2"]);
    let snap = snap["snapshot_id"].as_str().unwrap();

    let report = json(
        &repo,
        &[
            "restore",
            snap,
            "--to",
            &format!("docker:{}", b.docker_host),
            "--replicas",
            "0",
            "--name-prefix",
            "standby-",
        ],
    );
    assert_eq!(report["failed"], 0, "{report}");
    let objs = b.objects("standby-t2_");
    assert_eq!(
        objs["service standby-t2_web"].split_whitespace().nth(2),
        Some("0/0"),
        "{objs:?}"
    );
    assert!(objs["container standby-t2_box"].ends_with("created"), "{objs:?}");
    assert!(objs.contains_key("volume standby-t2_data"), "{objs:?}");
    // The service's mount follows the prefix.
    let mounts = b.docker(&[
        "service",
        "inspect",
        "standby-t2_web",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Mounts}}",
    ]);
    assert!(mounts.contains("standby-t2_data"), "{mounts}");

    b.docker(&["service", "scale", "--detach", "standby-t2_web=1"]);
    b.docker(&["start", "standby-t2_box"]);
    wait_for("the scaled-up service on b", Duration::from_secs(120), || {
        let o = b.objects("standby-t2_web");
        (o.get("service standby-t2_web")?.split_whitespace().nth(2)? == "1/1").then_some(())
    });
    assert!(b.objects("standby-t2_box")["container standby-t2_box"].ends_with("running"));
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn preflight_refuses_before_any_change_and_skip_is_a_no_op() {
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let _c = cleanup(&sites[..2], &["t3_"]);
    let image = "lifeboat-test/t3-only-a:1";
    a.docker(&["tag", "lifeboat-lab/web:1", image]);
    let _ = b.docker_try(&["rmi", image]);
    a.docker(&[
        "network",
        "create",
        "--label",
        "com.docker.stack.namespace=t3",
        "t3_net",
    ]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "t3_app",
        "--label",
        "com.docker.stack.namespace=t3",
        "--network",
        "t3_net",
        "--network-alias",
        "app",
        "-e",
        "MODE=test",
        "--restart",
        "unless-stopped",
        "-v",
        "t3_vol:/data",
        image,
        "/bin/sh",
        "-c",
        "echo restored-data > /data/file; exec httpd -f -p 8080 -h /www",
    ]);
    wait_for("t3_app's data", Duration::from_secs(30), || {
        a.docker_try(&["exec", "t3_app", "cat", "/data/file"]).0.then_some(())
    });
    let (dir, repo) = new_repo();
    let snap = json(&repo, &["backup", "docker", "--host", &a.docker_host, "--stack", "t3"]);
    let snap = snap["snapshot_id"].as_str().unwrap();
    let to = format!("docker:{}", b.docker_host);
    let before = b.objects("t3_");

    // The image is missing on b: refused before any change (a dry run checks the same).
    let o = run(&repo, &["restore", snap, "--to", &to, "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&format!("image {image} is not on")), "{err}");
    assert_eq!(b.objects("t3_"), before, "a refused restore changed site b");

    let archive = dir.path().join("images.tar");
    let saved = std::process::Command::new("docker")
        .args(["-H", &a.docker_host, "save", "-o", archive.to_str().unwrap(), image])
        .status()
        .unwrap();
    assert!(saved.success());
    let load = ["--load-images", archive.to_str().unwrap()];
    let mut args = vec!["restore", snap, "--to", &to, "--dry-run"];
    args.extend(load);
    // Dry run: every change is listed, none is made.
    let plan = json(&repo, &args);
    let planned: Vec<String> = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {} {} {}", i["status"], i["action"], i["kind"], i["name"]).replace('"', ""))
        .collect();
    assert_eq!(
        planned,
        [
            format!("planned load image {image}"),
            "planned create network t3_net".into(),
            "planned create volume t3_vol".into(),
            "planned create container t3_app".into(),
        ]
    );
    assert_eq!(b.objects("t3_"), before, "a dry run changed site b");
    assert!(
        !b.docker_try(&["image", "inspect", image]).0,
        "a dry run loaded an image"
    );

    let mut args = vec!["restore", snap, "--to", &to];
    args.extend(load);
    let report = json(&repo, &args);
    assert_eq!(report["failed"], 0, "{report}");
    let data = wait_for("t3_app on b", Duration::from_secs(30), || {
        let (ok, out, _) = b.docker_try(&["exec", "t3_app", "cat", "/data/file"]);
        ok.then_some(out)
    });
    assert_eq!(data, "restored-data\n");
    let inspect = b.docker(&[
        "inspect",
        "t3_app",
        "--format",
        "{{.Config.Env}} {{.HostConfig.RestartPolicy.Name}} {{json .NetworkSettings.Networks.t3_net.Aliases}}",
    ]);
    assert!(
        inspect.contains("MODE=test") && inspect.contains("unless-stopped") && inspect.contains("\"app\""),
        "{inspect}"
    );

    // A second restore: refused without --existing, a no-op with --existing skip.
    let after = b.objects("t3_");
    let o = run(&repo, &["restore", snap, "--to", &to]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report = json(&repo, &["restore", snap, "--to", &to, "--existing", "skip"]);
    for item in report["items"].as_array().unwrap() {
        assert_eq!(item["action"], "skip", "{report}");
    }
    assert_eq!(b.objects("t3_"), after, "--existing skip changed site b");
    let id_before = b.docker(&["inspect", "t3_app", "--format", "{{.Id}}"]);
    json(&repo, &["restore", snap, "--to", &to, "--existing", "skip"]);
    assert_eq!(b.docker(&["inspect", "t3_app", "--format", "{{.Id}}"]), id_before);
    let _ = b.docker_try(&["rm", "-f", "t3_app"]);
    let _ = b.docker_try(&["rmi", image]);
    let _ = a.docker_try(&["rm", "-f", "t3_app"]);
    let _ = a.docker_try(&["rmi", image]);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn diff_shows_drift_between_a_snapshot_and_the_live_engine() {
    let sites = docker_sites(1);
    let a = &sites[0];
    let _c = cleanup(&sites[..1], &["t4_"]);
    a.docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "t4_web",
        "--label",
        "com.docker.stack.namespace=t4",
        "-e",
        "A=1",
        "lifeboat-lab/web:1",
    ]);
    let (_d, repo) = new_repo();
    json(
        &repo,
        &[
            "backup",
            "docker",
            "--host",
            &a.docker_host,
            "--stack",
            "t4",
            "--no-volumes",
        ],
    );
    let d = json(&repo, &["diff", "latest", "live", "--host", &a.docker_host]);
    assert_eq!(d["differences"], serde_json::json!([]), "{d}");

    a.docker(&[
        "service",
        "update",
        "--detach",
        "--no-resolve-image",
        "--env-add",
        "B=2",
        "t4_web",
    ]);
    a.docker(&[
        "network",
        "create",
        "--label",
        "com.docker.stack.namespace=t4",
        "t4_extra",
    ]);
    let d = json(&repo, &["diff", "latest", "live", "--host", &a.docker_host]);
    let diffs = d["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 2, "{d}");
    assert_eq!(
        (diffs[0]["kind"].as_str(), diffs[0]["change"].as_str()),
        (Some("network"), Some("added"))
    );
    assert_eq!(
        (diffs[1]["kind"].as_str(), diffs[1]["change"].as_str()),
        (Some("service"), Some("changed"))
    );
    let fields: Vec<&str> = diffs[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"/TaskTemplate/ContainerSpec/Env"), "{fields:?}");
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn failing_hooks_follow_their_policy_and_existing_update_recreates() {
    let sites = docker_sites(2);
    let (a, b) = (&sites[0], &sites[1]);
    let _c = cleanup(&sites[..2], &["t5_"]);
    for (name, policy) in [("t5_fail", "fail"), ("t5_cont", "continue")] {
        a.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &format!("t5={policy}"),
            "--label",
            "io.lifeboat.hook.pre=echo broken >&2; exit 3",
            "--label",
            &format!("io.lifeboat.hook.on-error={policy}"),
            "--label",
            "io.lifeboat.hook.post=touch /data/post-ran",
            "-v",
            &format!("{name}_vol:/data"),
            "lifeboat-lab/web:1",
        ]);
    }
    let (_d, repo) = new_repo();

    // Policy fail: no snapshot, the message names the container and the hook's error.
    let o = run(
        &repo,
        &["backup", "docker", "--host", &a.docker_host, "--label", "t5=fail"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("hook pre in container t5_fail failed") && err.contains("exit code 3"),
        "{err}"
    );
    assert!(err.contains("broken"), "{err}");
    assert_eq!(json(&repo, &["snapshots"]), serde_json::json!([]));

    // Policy continue: the snapshot is written, the failure recorded, the post hook ran.
    let o = run(
        &repo,
        &[
            "--json",
            "backup",
            "docker",
            "--host",
            &a.docker_host,
            "--label",
            "t5=continue",
        ],
    );
    assert!(
        !o.status.success(),
        "a recorded hook failure must show in the exit code"
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let errors = out["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e.as_str().unwrap().contains("t5_cont")), "{out}");
    assert_eq!(out["objects"]["volumes"], 1);
    assert!(
        a.docker_try(&["exec", "t5_cont", "ls", "/data/post-ran"]).0,
        "the post hook did not run"
    );
    let snap = out["snapshot_id"].as_str().unwrap();

    // --existing update recreates the container from the snapshot.
    let to = format!("docker:{}", b.docker_host);
    json(&repo, &["restore", snap, "--to", &to]);
    let first = b.docker(&["inspect", "t5_cont", "--format", "{{.Id}}"]);
    let report = json(&repo, &["restore", snap, "--to", &to, "--existing", "update"]);
    assert_eq!(report["failed"], 0, "{report}");
    let actions: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["update", "update"], "{report}");
    let second = b.docker(&["inspect", "t5_cont", "--format", "{{.Id}} {{.State.Running}}"]);
    assert!(
        !second.starts_with(&first) && second.ends_with("true"),
        "{first} -> {second}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn regression_a_helper_left_by_a_killed_backup_is_removed_by_the_next_backup() {
    // Found when a test killed `serve` in the middle of a backup: the helper container that
    // mounts the volume stayed, and held the volume in use.
    let sites = docker_sites(1);
    let a = &sites[0];
    let _c = cleanup(&sites[..1], &["t7_"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    a.docker(&["volume", "create", "t7_data"]);
    for (name, pid) in [("t7_stale", dead_pid), ("t7_live", std::process::id())] {
        a.docker(&[
            "create",
            "--name",
            name,
            "--label",
            "io.lifeboat.helper=1",
            "--label",
            &format!("io.lifeboat.helper.owner={host}:{pid}"),
            "-v",
            "t7_data:/x",
            "lifeboat-lab/web:1",
        ]);
    }
    a.docker(&[
        "run",
        "-d",
        "--name",
        "t7_app",
        "--label",
        "app=t7",
        "-v",
        "t7_data:/data",
        "lifeboat-lab/web:1",
    ]);
    let (_d, repo) = new_repo();
    json(
        &repo,
        &["backup", "docker", "--host", &a.docker_host, "--label", "app=t7"],
    );
    let objs = a.objects("t7_");
    assert!(!objs.contains_key("container t7_stale"), "{objs:?}");
    assert!(
        objs.contains_key("container t7_live"),
        "a live process's helper stays: {objs:?}"
    );
}

/// Every entry under `dir` (not following symlinks): relative path -> metadata.
fn walk(dir: &std::path::Path) -> std::collections::BTreeMap<String, std::fs::Metadata> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                todo.push(e.path());
            }
            out.insert(e.path().strip_prefix(dir).unwrap().display().to_string(), md);
        }
    }
    out
}

/// Finding 15: a container may make device nodes (Docker grants MKNOD) and set-uid files as its
/// root; restored to a host directory they are no longer confined. By default they are left out
/// (devices) or lose the bits (set-id), and the directory is the owner's only; `--allow-special`
/// restores them as they were.
#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_container_snapshot_restored_to_a_directory_has_no_devices_or_setid_files() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let sites = docker_sites(1);
    let a = &sites[0];
    let _c = cleanup(&sites[..1], &["t15_"]);
    let (dir, repo) = new_repo();
    a.docker(&["volume", "create", "t15_vol"]);
    a.docker(&[
        "run",
        "--rm",
        "-v",
        "t15_vol:/v",
        "lifeboat-lab/web:1",
        "sh",
        "-c",
        "mknod /v/disk b 8 0 && chmod 666 /v/disk && mknod /v/tty c 5 0 && cp /bin/sh /v/rootsh && chmod 4755 /v/rootsh \
         && mkdir /v/shared && chmod 2775 /v/shared && echo hi > /v/shared/plain && mkfifo /v/fifo",
    ]);
    a.docker(&[
        "create",
        "--name",
        "t15_app",
        "--label",
        "t15=1",
        "-v",
        "t15_vol:/v",
        "lifeboat-lab/web:1",
    ]);
    ok(
        &repo,
        &["backup", "docker", "--host", &a.docker_host, "--label", "t15=1"],
    );

    let safe = dir.path().join("inspect");
    let out = run(
        &repo,
        &["restore", "latest", "--to", &format!("files:{}", safe.display())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::metadata(&safe).unwrap().permissions().mode() & 0o777, 0o700);
    let entries = walk(&safe);
    let find = |name: &str| {
        entries
            .iter()
            .find(|(p, _)| p.ends_with(&format!("/{name}")))
            .map(|(p, md)| (p.clone(), md.clone()))
    };
    for (p, md) in &entries {
        let ft = md.file_type();
        assert!(
            !ft.is_block_device() && !ft.is_char_device(),
            "device node {p} restored"
        );
        assert_eq!(md.mode() & 0o6000, 0, "{p} has set-id bits: {:o}", md.mode());
    }
    assert!(find("disk").is_none() && find("tty").is_none());
    let (_, sh) = find("rootsh").expect("the set-uid file is restored, without its bit");
    assert_eq!(sh.mode() & 0o7777, 0o755);
    assert_eq!(find("shared").unwrap().1.mode() & 0o7777, 0o775);
    assert!(find("fifo").unwrap().1.file_type().is_fifo());
    let (plain, _) = find("plain").unwrap();
    assert_eq!(std::fs::read_to_string(safe.join(plain)).unwrap(), "hi\n");
    assert!(
        stderr.contains("skipped device node") && stderr.contains("--allow-special"),
        "{stderr}"
    );
    assert!(stderr.contains("removed the set-uid/set-gid bits"), "{stderr}");

    // Asked for: as it was.
    let full = dir.path().join("full");
    ok(
        &repo,
        &[
            "restore",
            "latest",
            "--to",
            &format!("files:{}", full.display()),
            "--allow-special",
        ],
    );
    let entries = walk(&full);
    let (_, disk) = entries
        .iter()
        .find(|(p, _)| p.ends_with("/disk"))
        .expect("the device node");
    assert!(disk.file_type().is_block_device());
    assert_eq!(disk.rdev(), rustix::fs::makedev(8, 0));
    let (_, sh) = entries.iter().find(|(p, _)| p.ends_with("/rootsh")).unwrap();
    assert_eq!(sh.mode() & 0o7777, 0o4755);
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "lab test: needs root and the lab (run scripts/test.sh, which starts it and passes --features lab)"
)]
fn a_remote_engine_is_reached_over_tls_with_client_certificates() {
    let sites = docker_sites(1);
    let a = &sites[0];
    let (Some(tls_host), Some(tls)) = (a.docker_tls_host.clone(), common::lab::docker_tls_dir()) else {
        panic!("the lab has no Docker TLS listener: restart it with `lab/lab up --docker 2` (as root)")
    };
    let _c = cleanup(&sites[..1], &["t9_"]);
    a.docker(&[
        "run",
        "-d",
        "--name",
        "t9_app",
        "--label",
        "app=t9",
        "lifeboat-lab/web:1",
    ]);
    let (d, repo) = new_repo();
    let backup = |cert_path: Option<&std::path::Path>| {
        let mut c = common::cmd(
            &repo,
            &["--json", "backup", "docker", "--host", &tls_host, "--label", "app=t9"],
        );
        c.env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("LIFEBOAT_DOCKER_INSECURE");
        if let Some(p) = cert_path {
            c.env("DOCKER_TLS_VERIFY", "1").env("DOCKER_CERT_PATH", p);
        }
        c.output().unwrap()
    };
    // The lab's client certificate, as the docker CLI would take it: backed up over TLS.
    let o = backup(Some(&tls));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(out["snapshot_id"].is_string(), "{out}");

    // A client certificate from a CA the engine does not trust: one clear error, nothing stored.
    let rogue = d.path().join("rogue");
    std::fs::create_dir(&rogue).unwrap();
    std::fs::copy(tls.join("ca.pem"), rogue.join("ca.pem")).unwrap();
    std::fs::copy(tls.join("rogue-cert.pem"), rogue.join("cert.pem")).unwrap();
    std::fs::copy(tls.join("rogue-key.pem"), rogue.join("key.pem")).unwrap();
    let o = backup(Some(&rogue));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a certificate no one trusts was accepted");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("10.77.1.2:2376") || err.contains(&tls_host),
        "names the engine: {err}"
    );
    // Plain TCP is not tried without being allowed.
    let o = backup(None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("TLS"), "{err}");
    assert_eq!(json(&repo, &["snapshots"]).as_array().unwrap().len(), 1);

    // A plan names the same files: `plan check` reaches the site over TLS.
    let plan = d.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: t9}}\nrepository: {repo}\nsites:\n  \
             a: {{docker: {{host: \"{tls_host}\", tls: {{ca: {t}/ca.pem, cert: {t}/cert.pem, key: {t}/key.pem}}}}}}\n  \
             b: {{docker: {{host: \"{b}\"}}}}\napps:\n  - name: t9\n    primary: a\n    standby: b\n    \
             select: {{labels: {{app: t9}}}}\n",
            t = tls.display(),
            b = a.docker_host,
        ),
    )
    .unwrap();
    let o = common::cmd(&repo, &["--json", "plan", "check", plan.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let site_a = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["check"] == "site a")
        .cloned()
        .unwrap_or_else(|| panic!("no site a line: {v}"));
    assert_eq!(site_a["status"], "ok", "{site_a}");
}
