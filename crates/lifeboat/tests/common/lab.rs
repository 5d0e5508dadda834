//! The lab's sites as tests see them: `lab/lab env` must describe at least two Docker sites
//! (`scripts/test.sh` starts them with `lab/lab up --docker 2`).
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_lab_support::env as lab_env;

#[derive(Clone)]
pub struct Site {
    pub name: String,
    pub addr: String,
    pub docker_host: String,
    /// The engine's TLS listener (`tcp://ADDR:2376`, client certificates required), when the lab has one.
    pub docker_tls_host: Option<String>,
}

/// The lab's Docker TLS files (`ca.pem`, `cert.pem`, `key.pem` of a trusted client, and
/// `rogue-cert.pem`, `rogue-key.pem` from a CA no site trusts), when the lab made them.
pub fn docker_tls_dir() -> Option<PathBuf> {
    lab_env().get("LAB_DOCKER_TLS_DIR").map(PathBuf::from)
}

/// The site names listed in `var` (`LAB_SITES`, `LAB_KUBE_SITES`).
fn site_names(vars: &BTreeMap<String, String>, var: &str) -> Vec<String> {
    vars.get(var)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The Docker sites that are up, in order (a, b, ...). Fails the test with instructions when fewer
/// than `n` are up.
pub fn docker_sites(n: usize) -> Vec<Site> {
    let vars = lab_env();
    let sites: Vec<Site> = site_names(&vars, "LAB_SITES")
        .into_iter()
        .filter_map(|s| {
            let up = s.to_uppercase();
            Some(Site {
                addr: vars.get(&format!("LAB_{up}_ADDR"))?.clone(),
                docker_host: vars.get(&format!("LAB_{up}_DOCKER_HOST"))?.clone(),
                docker_tls_host: vars.get(&format!("LAB_{up}_DOCKER_TLS_HOST")).cloned(),
                name: s,
            })
        })
        .collect();
    assert!(
        sites.len() >= n,
        "these tests need {n} Docker lab sites; start them with `lab/lab up --docker {n}` (as root)"
    );
    sites
}

impl Site {
    /// Runs the docker CLI against this site; returns (success, stdout, stderr).
    pub fn docker_try(&self, args: &[&str]) -> (bool, String, String) {
        let o = Command::new("docker")
            .arg("-H")
            .arg(&self.docker_host)
            .args(args)
            .output()
            .expect("run docker");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs the docker CLI and requires success; returns stdout trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.docker_try(args);
        assert!(ok, "docker {args:?} on site {} failed: {err}", self.name);
        out.trim().to_string()
    }

    /// Like [`Site::docker`] with data on stdin.
    pub fn docker_stdin(&self, args: &[&str], input: &[u8]) -> String {
        use std::io::Write;
        let mut c = Command::new("docker")
            .arg("-H")
            .arg(&self.docker_host)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run docker");
        c.stdin.take().unwrap().write_all(input).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "docker {args:?} on site {} failed: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Every object whose name starts with `prefix`: a comparable picture of what a test made.
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let swarm = self.docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]) == "true";
        let mut lists: Vec<(&str, Vec<&str>)> = vec![
            (
                "container",
                vec!["ps", "-a", "--format", "{{.Names}} {{.Image}} {{.State}}"],
            ),
            ("network", vec!["network", "ls", "--format", "{{.Name}} {{.Driver}}"]),
            ("volume", vec!["volume", "ls", "--format", "{{.Name}} {{.Driver}}"]),
        ];
        if swarm {
            lists.push((
                "service",
                vec!["service", "ls", "--format", "{{.Name}} {{.Image}} {{.Replicas}}"],
            ));
            lists.push(("config", vec!["config", "ls", "--format", "{{.Name}} {{.ID}}"]));
            lists.push(("secret", vec!["secret", "ls", "--format", "{{.Name}} {{.ID}}"]));
        }
        for (kind, args) in lists {
            for line in self.docker(&args).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.starts_with(prefix) {
                    out.insert(format!("{kind} {name}"), line.to_string());
                }
            }
        }
        out
    }

    /// Removes every object whose name starts with `prefix` (services and containers first).
    pub fn cleanup(&self, prefix: &str) {
        let objs = self.objects(prefix);
        for kind in ["service", "container", "config", "secret", "volume", "network"] {
            let names: Vec<&str> = objs
                .keys()
                .filter_map(|k| k.strip_prefix(&format!("{kind} ")))
                .collect();
            if names.is_empty() {
                continue;
            }
            let mut args: Vec<&str> = match kind {
                "container" => vec!["rm", "-f", "-v"],
                "volume" => vec!["volume", "rm", "-f"],
                other => vec![other, "rm"],
            };
            args.extend(names);
            if kind == "volume" {
                // Volumes of removed service tasks are released a moment later.
                let deadline = Instant::now() + Duration::from_secs(30);
                while !self.docker_try(&args).0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(500));
                }
            } else {
                let _ = self.docker_try(&args);
            }
        }
    }
}

/// Polls `f` until it returns `Some`, or fails the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// An HTTP GET to a lab address (plain TCP, no proxy): the body of a 200 answer; `None` while it
/// does not answer so. Headers may end with CRLF or, as CGI programs write them, bare newlines.
pub fn http_get(addr: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{addr}:{port}").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let resp = resp.replace("\r\n", "\n");
    let (head, body) = resp.split_once("\n\n")?;
    let status = head.lines().next()?;
    (status.starts_with("HTTP/") && status.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// A Kubernetes lab site.
pub struct KubeSite {
    pub name: String,
    pub addr: String,
    pub kubeconfig: String,
    pub context: String,
    /// etcd's client URL.
    pub etcd: String,
}

/// The Kubernetes sites that are up (`lab/lab up --kube N`); fails the test with instructions when
/// fewer than `n` are.
pub fn kube_sites(n: usize) -> Vec<KubeSite> {
    let vars = lab_env();
    let sites: Vec<KubeSite> = site_names(&vars, "LAB_KUBE_SITES")
        .into_iter()
        .filter_map(|s| {
            let up = s.to_uppercase();
            Some(KubeSite {
                addr: vars.get(&format!("LAB_{up}_ADDR"))?.clone(),
                kubeconfig: vars.get(&format!("LAB_{up}_KUBECONFIG"))?.clone(),
                context: vars
                    .get(&format!("LAB_{up}_KUBE_CONTEXT"))
                    .cloned()
                    .unwrap_or_else(|| s.clone()),
                etcd: vars.get(&format!("LAB_{up}_ETCD"))?.clone(),
                name: s,
            })
        })
        .collect();
    assert!(
        sites.len() >= n,
        "these tests need {n} Kubernetes lab sites; start them with `lab/lab up --kube {n}` (as root)"
    );
    sites
}

impl KubeSite {
    /// Runs kubectl against this site; returns (success, stdout, stderr).
    pub fn kubectl_try(&self, args: &[&str], input: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut c = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut stdin = c.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        let o = c.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs kubectl and requires success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl_try(args, None);
        assert!(ok, "kubectl {args:?} on site {} failed: {err}", self.name);
        out
    }

    /// `kubectl apply -f -` of a YAML document.
    pub fn apply(&self, yaml: &str) {
        let (ok, _, err) = self.kubectl_try(&["apply", "-f", "-"], Some(yaml));
        assert!(ok, "kubectl apply on site {} failed: {err}", self.name);
    }

    /// Removes namespace `ns` and waits until it is gone (its pods can take a minute and a half).
    pub fn drop_namespace(&self, ns: &str) {
        self.drop_namespaces(&[ns]);
    }

    /// Removes the namespaces `names` at once and waits until every one is gone. A namespace still
    /// there after five minutes fails the test with the conditions its controller reported (which
    /// content or finalizer holds it), so a stuck deletion says why.
    pub fn drop_namespaces(&self, names: &[&str]) {
        for ns in names {
            let _ = self.kubectl_try(&["delete", "namespace", ns, "--wait=false", "--ignore-not-found"], None);
        }
        for ns in names {
            let deadline = Instant::now() + Duration::from_secs(300);
            while let Some(left) = self.get_json("namespace", None, ns) {
                if Instant::now() >= deadline {
                    let (_, pods, _) = self.kubectl_try(&["-n", ns, "get", "pods", "-o", "wide"], None);
                    panic!(
                        "namespace {ns} on site {} is still there after 300s: conditions {}, pods:\n{pods}",
                        self.name, left["status"]["conditions"]
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    /// An object as JSON, if it exists.
    pub fn get_json(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<serde_json::Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let (ok, out, _) = self.kubectl_try(&args, None);
        ok.then(|| serde_json::from_str(&out).expect("kubectl prints JSON"))
    }
}

/// `lab/lab up ARGS` (with `--kube 2` too when the lab runs Kubernetes: `kill` takes a site's
/// control plane down as well), tried three times: on a loaded machine a daemon can miss its start
/// timeout, and `up` starts only what is missing.
pub fn lab_up(args: &[&str]) {
    let mut args: Vec<&str> = [&["up"][..], args].concat();
    if lifeboat_lab_support::var("LAB_KUBE_SITES").is_some_and(|k| !k.is_empty()) {
        args.extend(["--kube", "2"]);
    }
    let lab = lifeboat_lab_support::script();
    let mut o = Command::new(&lab).args(&args).output().unwrap();
    for _ in 0..2 {
        if o.status.success() {
            break;
        }
        eprintln!("lab up failed, once more: {}", String::from_utf8_lossy(&o.stderr));
        o = Command::new(&lab).args(&args).output().unwrap();
    }
    assert!(o.status.success(), "lab up: {}", String::from_utf8_lossy(&o.stderr));
}

/// The address the lab's DNS server gives for NAME.lab.test.
pub fn resolve(name: &str) -> String {
    let o = Command::new("dig")
        .args(["+short", "-p", "5353", "@127.0.0.1", &format!("{name}.lab.test."), "A"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Points NAME.lab.test. at `addr` (an RFC 2136 update signed with the lab's key, `key`).
pub fn point(name: &str, addr: &str, key: &str) {
    let script = format!(
        "server 127.0.0.1 5353\nzone lab.test.\nupdate delete {name}.lab.test. A\nupdate add {name}.lab.test. 5 A {addr}\nsend\n"
    );
    let mut c = Command::new("nsupdate")
        .args(["-k", key])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "nsupdate failed");
}
