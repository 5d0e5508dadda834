//! The S3 backend against a real S3 server: Garage (installed by `scripts/test.sh` with
//! `cargo install garage`), one single-node cluster per test on loopback ports, with its own
//! metadata and data directories. Same format as the local backend, same commands.
mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BUCKET: &str = "lifeboat-test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A single-node Garage on loopback; killed when dropped.
struct Garage {
    _dir: tempfile::TempDir,
    config: PathBuf,
    s3_port: u16,
    server: Option<Child>,
    key_id: String,
    secret: String,
}

impl Garage {
    fn bin() -> String {
        std::env::var("LIFEBOAT_GARAGE").unwrap_or_else(|_| "garage".into())
    }

    fn cli(&self, args: &[&str]) -> String {
        let o = Command::new(Self::bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn start() -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let secret: String = bytes(s3 as u64, 32).iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut g = Garage {
            _dir: dir,
            config,
            s3_port: s3,
            server: None,
            key_id: String::new(),
            secret: String::new(),
        };
        g.run_server();
        let id = g.cli(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap().to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", BUCKET]);
        let key = g.cli(&["key", "create", "lifeboat-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in `garage key create`: {key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "lifeboat-test",
        ]);
        g
    }

    /// Starts the server on the same configuration and data (also after [`Garage::kill`]).
    fn run_server(&mut self) {
        let child = Command::new(Self::bin())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("garage not found: run scripts/test.sh, which installs it with `cargo install garage`");
        self.server = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "garage did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server stops at once, as a crashed or powered-off one.
    fn kill(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn repo(&self, prefix: &str) -> String {
        format!("s3:http://127.0.0.1:{}/{BUCKET}/{prefix}", self.s3_port)
    }

    fn cmd(&self, repo: &str, args: &[&str]) -> Command {
        let mut c = cmd(repo, args);
        c.env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "us-east-1");
        c
    }

    fn run(&self, repo: &str, args: &[&str]) -> Output {
        self.cmd(repo, args).output().unwrap()
    }

    fn ok(&self, repo: &str, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.run(repo, &a);
        assert!(
            o.status.success(),
            "lifeboat {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

fn restore_to(g: &Garage, repo: &str, snapshot: &str, out: &Path) {
    g.ok(
        repo,
        &["restore", snapshot, "--to", &format!("files:{}", out.display())],
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "needs Garage, built by scripts/test.sh (run it, which passes --features lab)"
)]
fn s3_repository_backup_restore_check_prune() {
    let g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_files(&src, 61, 20, 400_000);
    std::fs::write(src.join("big"), bytes(62, 20 << 20)).unwrap();
    let repo = g.repo("team/repo");
    g.ok(&repo, &["repo", "init"]);
    let first = g.ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(first["files_read"], 21);
    let second = g.ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(second["files_read"], 0);
    let out = t.path().join("out");
    restore_to(&g, &repo, "latest", &out);
    assert_same_tree(&src, &restored(&out, &src));
    let check = g.ok(&repo, &["repo", "check", "--read-data"]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    g.ok(&repo, &["forget", "--keep-last", "1", "--prune", "--min-age", "0s"]);
    assert_eq!(g.ok(&repo, &["snapshots"]).as_array().unwrap().len(), 1);
    // Wrong password and a missing repository fail cleanly over S3 too.
    let o = g
        .cmd(&repo, &["snapshots"])
        .env("LIFEBOAT_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong password"));
    let o = g.run(&g.repo("none"), &["snapshots"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no repository at"));
    // Credentials the server does not know: one clear line, not a retry loop.
    let o = g
        .cmd(&repo, &["snapshots"])
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.trim().lines().count() == 1, "{err}");
}

/// Why every PUT carries a signed `x-amz-checksum-sha256` of its body (as the S3 backend sends it):
/// Garage refuses a body that does not match it and stores nothing, while the matching body is
/// stored.
#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "needs Garage, built by scripts/test.sh (run it, which passes --features lab)"
)]
fn garage_refuses_a_put_whose_body_does_not_match_its_checksum() {
    use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
    let g = Garage::start();
    let endpoint = format!("http://127.0.0.1:{}", g.s3_port).parse().unwrap();
    let bucket = Bucket::new(endpoint, UrlStyle::Path, BUCKET, "us-east-1").unwrap();
    let creds = Credentials::new(&g.key_id, &g.secret);
    // base64 of SHA-256("original")
    let sum = "BoLF8gdvCZw0z90VqeBjhJ7UN6SWd+b8xbQZjHZXW+U=";
    // The status and body of an answer (transport errors fail the test).
    let answer = |r: Result<ureq::Response, ureq::Error>| match r {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    };
    let put = |key: &str, body: &[u8]| {
        let mut action = bucket.put_object(Some(&creds), key);
        action.headers_mut().insert("x-amz-checksum-sha256", sum);
        answer(
            ureq::put(action.sign(Duration::from_secs(600)).as_str())
                .set("x-amz-checksum-sha256", sum)
                .send_bytes(body),
        )
    };
    let get = |key: &str| {
        let url = bucket.get_object(Some(&creds), key).sign(Duration::from_secs(600));
        answer(ureq::get(url.as_str()).call())
    };
    let (code, body) = put("damaged", b"0riginal");
    assert!(
        (400..500).contains(&code),
        "a damaged body was not refused: HTTP {code}: {body}"
    );
    assert_eq!(get("damaged").0, 404);
    assert_eq!(put("whole", b"original").0, 200);
    assert_eq!(get("whole"), (200, "original".to_string()));
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "needs Garage, built by scripts/test.sh (run it, which passes --features lab)"
)]
fn a_backup_while_the_s3_server_is_killed_and_restarted_loses_nothing() {
    let mut g = Garage::start();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_files(&src, 71, 10, 200_000);
    let repo = g.repo("restart");
    g.ok(&repo, &["repo", "init"]);
    let first = g.ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();
    let before = t.path().join("before");
    restore_to(&g, &repo, &first_id, &before);
    // New data large enough that the backup is uploading when the server goes.
    std::fs::write(src.join("big"), bytes(72, 200 << 20)).unwrap();
    let mut child = g
        .cmd(&repo, &["--json", "backup", "files", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup ended before the server was killed: the test needs more data"
    );
    g.kill();
    std::thread::sleep(Duration::from_millis(1000));
    g.run_server();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // Either the retries carried it over the restart, or it failed in one clear line.
    if !o.status.success() {
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // Whatever happened: the repository is whole and every snapshot restores exactly.
    let check = g.ok(&repo, &["repo", "check", "--read-data"]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    let again = t.path().join("again");
    restore_to(&g, &repo, &first_id, &again);
    assert_same_tree(&restored(&before, &src), &restored(&again, &src));
    // And it goes on: the next backup commits, and holds the new data.
    g.ok(&repo, &["unlock"]);
    g.ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    let out = t.path().join("out");
    restore_to(&g, &repo, "latest", &out);
    assert_same_tree(&src, &restored(&out, &src));
    let snaps = g.ok(&repo, &["snapshots"]);
    eprintln!(
        "backup across the restart: {} ({} snapshots now)",
        if o.status.success() {
            "finished"
        } else {
            "failed cleanly"
        },
        snaps.as_array().unwrap().len()
    );
}

#[test]
#[cfg_attr(
    not(feature = "lab"),
    ignore = "needs Garage, built by scripts/test.sh (run it, which passes --features lab)"
)]
fn unreachable_s3_endpoint_is_one_clear_error() {
    // Nothing listens on this loopback port.
    let port = free_port();
    let o = cmd(&format!("s3:http://127.0.0.1:{port}/b/p"), &["snapshots"])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
}
