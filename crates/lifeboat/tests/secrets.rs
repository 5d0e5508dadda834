//! Secret markers planted in every secret input the binary takes without a lab (the repository
//! password, S3 credentials and session token, a TSIG secret, a webhook secret and its URL's
//! token and user info, probe and check URL credentials) never reach stdout, stderr, the runbook,
//! `plan check`, or the repository's bytes. (The lab-wide version with a failover and a drill,
//! finding 12's `no_secret_marker_appears_in_any_output_of_a_failover_and_a_drill`, is not done.)
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{bin, files_containing};

const MARKERS: &[&str] = &[
    "MRKPASSWORD7",
    "MRKACCESSKEY7",
    "MRKSECRETKEY7",
    "MRKSESSION7",
    "MRKHOOKSECRET7",
    "MRKHOOKTOKEN7",
    "MRKHOOKPW7",
    "MRKPROBEPW7",
    "MRKCHECKTOKEN7",
];

fn no_marker(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for m in MARKERS {
        assert!(!text.contains(m), "{m} appears in {what}:\n{text}");
    }
}

#[test]
fn secret_markers_never_reach_the_cli_outputs_runbook_plan_check_or_repository() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pw = dir.join("pw");
    std::fs::write(&pw, "MRKPASSWORD7\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let repo = dir.join("repo");
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a.txt"), "data").unwrap();
    let lb = |args: &[&str]| {
        let o = Command::new(bin())
            .env_remove("LIFEBOAT_PASSWORD")
            .env_remove("LIFEBOAT_REPO")
            .arg("--password-file")
            .arg(&pw)
            .args(args)
            .output()
            .unwrap();
        no_marker(&format!("the stdout of {args:?}"), &o.stdout);
        no_marker(&format!("the stderr of {args:?}"), &o.stderr);
        o
    };
    let repo_s = repo.display().to_string();
    let o = lb(&["--repo", &repo_s, "repo", "init"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The loose password file is named, with its mode.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("is readable by every local user (mode 0644)"),
        "{stderr}"
    );
    let o = lb(&["--repo", &repo_s, "backup", "files", &src.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(files_containing(&repo, b"MRKPASSWORD7").is_empty());

    // S3 credentials and session token, at an endpoint nothing listens on.
    let o = Command::new(bin())
        .env("LIFEBOAT_PASSWORD", "x")
        .env("AWS_ACCESS_KEY_ID", "MRKACCESSKEY7")
        .env("AWS_SECRET_ACCESS_KEY", "MRKSECRETKEY7")
        .env("AWS_SESSION_TOKEN", "MRKSESSION7")
        .args(["--repo", "s3:http://127.0.0.1:9/bucket/p", "snapshots"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    no_marker("the S3 error", &o.stderr);
    no_marker("the S3 error's stdout", &o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("X-Amz-"), "{stderr}");

    // A plan whose traffic and probes carry secrets.
    std::fs::write(dir.join("hook.secret"), "MRKHOOKSECRET7\n").unwrap();
    std::fs::write(
        dir.join("tsig.key"),
        "key \"k\" {\n\talgorithm hmac-sha256;\n\tsecret \"TVJLVFNJRzcgc2VjcmV0IHZhbHVl\";\n};\n",
    )
    .unwrap();
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "apiVersion: lifeboat.dev/v1\nkind: DRPlan\nmetadata: {{name: s}}\nrepository: {repo_s}\n\
             sites:\n  a: {{docker: {{host: unix://{d}/a.sock, address: 127.0.0.1}}}}\n  b: {{docker: {{host: unix://{d}/b.sock, address: 127.0.0.1}}}}\n\
             apps:\n  - name: web\n    primary: a\n    standby: b\n    select: {{labels: {{app: web}}}}\n\
             \x20   health: [{{http: {{url: \"http://u:MRKPROBEPW7@{{site}}:9/healthz\"}}}}]\n\
             \x20   verify: [{{http: {{url: \"http://{{site}}:9/items?token=MRKCHECKTOKEN7\"}}}}]\n\
             \x20   traffic: {{webhook: {{url: \"http://u:MRKHOOKPW7@127.0.0.1:9/hook?token=MRKHOOKTOKEN7\", secret_file: hook.secret}}}}\n\
             \x20 - name: dns\n    primary: a\n    standby: b\n    select: {{labels: {{app: dns}}}}\n\
             \x20   traffic: {{dns: {{server: \"127.0.0.1:9\", zone: lab.test., name: x, tsig_key: tsig.key, primary: 10.0.0.1, standby: 10.0.0.2}}}}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let plan_s = plan.display().to_string();
    let o = lb(&["runbook", &plan_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("http://127.0.0.1:9/hook"), "{md}");
    no_marker("the runbook", md.as_bytes());
    assert!(!md.contains("TVJLVFNJRzc"), "the TSIG secret in the runbook: {md}");
    let o = lb(&["plan", "check", &plan_s]);
    let out = [o.stdout.clone(), o.stderr.clone()].concat();
    assert!(!String::from_utf8_lossy(&out).contains("TVJLVFNJRzc"));
    // The loose webhook secret and TSIG key files are named.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("webhook secret file"), "{stderr}");
}

#[test]
fn serve_warns_when_its_password_comes_from_the_environment() {
    let run = |pw_file: Option<&std::path::Path>| {
        let mut c = Command::new(bin());
        c.env("LIFEBOAT_PASSWORD", "x").env_remove("LIFEBOAT_REPO");
        if let Some(f) = pw_file {
            c.arg("--password-file").arg(f);
        }
        // No such plan: serve stops right after its start, which is all this looks at.
        let o = c.args(["serve", "/nonexistent/plan.yaml"]).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(None);
    assert!(
        err.contains("LIFEBOAT_PASSWORD") && err.contains("--password-file"),
        "{err}"
    );
    let d = tempfile::tempdir().unwrap();
    let pw = d.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = run(Some(&pw));
    assert!(!err.contains("LIFEBOAT_PASSWORD"), "{err}");
}
