//! The S3 backend against a real S3 server (moto's server from PyPI, started here on loopback;
//! `scripts/test.sh` installs it). Same format as the local backend, same commands.
mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server not found: run scripts/test.sh, which installs moto[server] from PyPI");
    let server = Server(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (server, port)
}

fn s3(repo: &str, args: &[&str]) -> std::process::Output {
    cmd(repo, args)
        .env("AWS_ACCESS_KEY_ID", "lifeboat-test")
        .env("AWS_SECRET_ACCESS_KEY", "lifeboat-test-secret")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap()
}

fn s3_ok(repo: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = s3(repo, &a);
    assert!(
        o.status.success(),
        "lifeboat {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn s3_repository_backup_restore_check_prune() {
    let (_server, port) = start_moto();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_files(&src, 61, 20, 400_000);
    std::fs::write(src.join("big"), bytes(62, 20 << 20)).unwrap();
    let repo = format!("s3:http://127.0.0.1:{port}/lifeboat-test/team/repo");
    s3_ok(&repo, &["repo", "init"]);
    let first = s3_ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(first["files_read"], 21);
    let second = s3_ok(&repo, &["backup", "files", src.to_str().unwrap()]);
    assert_eq!(second["files_read"], 0);
    let out = t.path().join("out");
    s3_ok(
        &repo,
        &["restore", "latest", "--to", &format!("files:{}", out.display())],
    );
    assert_same_tree(&src, &restored(&out, &src));
    let check = s3_ok(&repo, &["repo", "check", "--read-data"]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    s3_ok(&repo, &["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(s3_ok(&repo, &["snapshots"]).as_array().unwrap().len(), 1);
    // Wrong password and a missing repository fail cleanly over S3 too.
    let o = cmd(&repo, &["snapshots"])
        .env("LIFEBOAT_PASSWORD", "wrong")
        .env("AWS_ACCESS_KEY_ID", "lifeboat-test")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong password"));
    let o = s3(
        &format!("s3:http://127.0.0.1:{port}/lifeboat-test/none"),
        &["snapshots"],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no repository at"));
}

#[test]
fn unreachable_s3_endpoint_is_one_clear_error() {
    // Nothing listens on this loopback port.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = s3(&format!("s3:http://127.0.0.1:{port}/b/p"), &["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
}
