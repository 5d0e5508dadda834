//! Docker Engine and Swarm adapter.
//!
//! [`Site`] talks to one Docker Engine through its API (bollard), locally (`unix://`) or remotely:
//! `tcp://` with TLS and a client certificate ([`Transport`], dockerd `--tlsverify`), or `ssh://`
//! (the system's `ssh` client runs `docker system dial-stdio` on the host). Plain `tcp://` is
//! refused unless [`Transport::insecure`] says otherwise: whoever reaches such a port is root on
//! that host, and volume data and secret values would cross the network in clear. It turns the applications on that
//! host into a snapshot ([`backup`]) and a snapshot back into applications ([`restore`]), and
//! compares a snapshot with what runs now ([`diff`]).
//!
//! What a snapshot of kind `docker` holds (all of it encrypted in the repository like any other data):
//! - `docker.json`: the [`Manifest`]: the engine, the selection, the secrets that could not be captured;
//! - `containers/NAME.json`, `services/NAME.json`, `networks/NAME.json`, `volumes/NAME.json`,
//!   `configs/NAME.json` (with data), `secrets/NAME.json`, `nodes/HOSTNAME.json`: the engine's own
//!   inspect documents (Docker's field names), so nothing the engine reported is lost;
//! - `secrets/NAME.value`: a Swarm secret's bytes, read by a short-lived helper service;
//! - `volumes/NAME/data/...`: a named volume's files, read through the archive endpoint of a
//!   helper container and chunked and deduplicated like any file tree (a later backup of a volume
//!   adds only changed chunks).
//!
//! The adapter's API is blocking: it owns a small tokio runtime for the Engine API and does the
//! chunking and encryption on the calling thread and rayon's pool.
#![forbid(unsafe_code)]

pub mod backup;
mod bridge;
pub mod capture;
pub mod control;
pub mod diff;
pub mod helper;
pub mod hooks;
pub mod restore;
mod rules;

use std::time::Duration;

use bollard::Docker;
pub use lifeboat_model::reach::AccessProblem;
use lifeboat_model::reach::{classify, Reach};
pub use lifeboat_model::Retry;
use serde_json::Value;

pub use backup::{backup, BackupOptions, BackupOutcome};
pub use capture::{Capture, Manifest, Selection};
pub use control::{Change, Workload};
pub use restore::{restore, Existing, ItemResult, RestoreOptions, RestoreReport};

/// Label on every container and service Lifeboat creates for its own work; such objects are never
/// backed up and are removed when the work is done.
pub const HELPER_LABEL: &str = "io.lifeboat.helper";

/// Errors of the Docker adapter.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The way to the engine is refused or cannot be set up: plain `tcp://` without
    /// [`Transport::insecure`], TLS files that cannot be read, an unknown scheme. Nothing was sent;
    /// retrying does not help: fix the plan, the flags or the files.
    #[error("cannot use the Docker engine at {host}: {reason}")]
    Transport { host: String, reason: String },
    /// The engine cannot be reached or did not answer the version handshake. Nothing was changed;
    /// retrying makes sense once the host is reachable.
    #[error("cannot reach the Docker engine at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    /// The engine's address cannot be used as given, or the engine answered the handshake with
    /// an error (see [`AccessProblem`]): unlike [`DockerError::Unreachable`], this is no sign that
    /// the site is down. Nothing was changed; retrying does not help until the cause is fixed.
    #[error("Docker engine at {host}: {problem}: {reason}")]
    Access {
        host: String,
        problem: AccessProblem,
        reason: String,
    },
    /// An Engine API call failed (the engine's own message is included). `what` names the object;
    /// `retry` is the class of the engine's answer ([`Retry::for_status`]; no answer at all is
    /// [`Retry::Later`]).
    #[error("Docker engine at {host}: {what}: {reason}")]
    Api {
        host: String,
        what: String,
        reason: String,
        retry: Retry,
    },
    /// The engine or the selection cannot do what was asked (for example Swarm objects on a host
    /// that is not a Swarm manager). Nothing was changed.
    #[error("{0}")]
    Unsupported(String),
    /// A pre-backup or post-backup hook failed and its policy is `fail`. The backup was not written.
    #[error("hook {phase} in container {container} failed: {reason}")]
    Hook {
        container: String,
        phase: &'static str,
        reason: String,
    },
    /// The snapshot is not a Docker snapshot or one of its documents cannot be read.
    #[error("snapshot {snapshot}: {reason}")]
    BadSnapshot { snapshot: String, reason: String },
    /// The checks before a restore failed; every problem is listed and nothing was changed.
    #[error("restore refused, nothing was changed:\n  {}", .problems.join("\n  "))]
    Preflight { problems: Vec<String> },
    /// A secret given with `--secret` could not be read.
    #[error("secret {name}: {reason}")]
    SecretInput { name: String, reason: String },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::RepoError),
    /// Storing or reading file data failed.
    #[error(transparent)]
    Fs(#[from] lifeboat_fs::FsError),
}

impl DockerError {
    /// Whether the same call may succeed later without a change: an engine that cannot be reached,
    /// an API call that failed in passing, a repository lock or store error, a failed stream are
    /// [`Retry::Later`]; a transport, address or credential problem, what the engine or the
    /// selection cannot do, a failed hook, a bad snapshot or secret, a refused restore need a fix.
    pub fn retry(&self) -> Retry {
        match self {
            DockerError::Unreachable { .. } | DockerError::Fs(_) => Retry::Later,
            DockerError::Api { retry, .. } => *retry,
            DockerError::Repo(e) => e.retry(),
            DockerError::Transport { .. }
            | DockerError::Access { .. }
            | DockerError::Unsupported(_)
            | DockerError::Hook { .. }
            | DockerError::BadSnapshot { .. }
            | DockerError::Preflight { .. }
            | DockerError::SecretInput { .. } => Retry::AfterFix,
        }
    }
}

/// One Docker Engine (and the Swarm it manages, if any).
pub struct Site {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    host: String,
    /// The helper image's id, once it is known to be on the engine.
    helper: std::sync::Mutex<Option<String>>,
}

/// How to reach a remote engine, beyond its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    /// TLS with a client certificate, for `tcp://` (and `https://`) engines.
    pub tls: Option<TlsFiles>,
    /// Plain `tcp://` is allowed (no encryption, no authentication).
    pub insecure: bool,
}

/// The PEM files of a TLS connection with a client certificate (Docker's `DOCKER_CERT_PATH`
/// holds them as `ca.pem`, `cert.pem`, `key.pem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the engine's certificate.
    pub ca: std::path::PathBuf,
    /// The client certificate.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir`.
    pub fn in_dir(dir: &std::path::Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

impl Transport {
    /// As the `docker` CLI reads the environment: `DOCKER_TLS_VERIFY` set and not empty means TLS
    /// with the files in `DOCKER_CERT_PATH` (default `~/.docker`). `LIFEBOAT_DOCKER_INSECURE=1`
    /// allows plain `tcp://`.
    pub fn from_env() -> Transport {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0");
        let tls = set("DOCKER_TLS_VERIFY").then(|| {
            let dir = std::env::var_os("DOCKER_CERT_PATH")
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))
                .unwrap_or_else(|| std::path::PathBuf::from(".docker"));
            TlsFiles::in_dir(&dir)
        });
        Transport {
            tls,
            insecure: set("LIFEBOAT_DOCKER_INSECURE"),
        }
    }
}

/// The API client for `host` over `transport`; sends nothing yet. Chooses the transport only:
/// `unix://` (the socket must exist), `tcp://`/`https://` with TLS, plain `tcp://`/`http://` only
/// when `insecure`, `ssh://`.
fn client(host: &str, transport: &Transport) -> Result<Docker, DockerError> {
    let refused = |reason: String| DockerError::Transport {
        host: host.to_string(),
        reason,
    };
    let unreachable = |reason: String| DockerError::Unreachable {
        host: host.to_string(),
        reason,
    };
    const TIMEOUT: u64 = 600;
    let version = bollard::API_DEFAULT_VERSION;
    if let Some(path) = host.strip_prefix("unix://") {
        if transport.tls.is_some() {
            return Err(refused("TLS applies to tcp:// engines, not to a unix socket".into()));
        }
        if !std::path::Path::new(path).exists() {
            return Err(unreachable(format!("no socket at {path}")));
        }
        return Docker::connect_with_unix(host, TIMEOUT, version).map_err(|e| refused(e.to_string()));
    }
    if host.starts_with("ssh://") {
        if transport.tls.is_some() {
            return Err(refused(
                "TLS applies to tcp:// engines; ssh:// brings its own encryption".into(),
            ));
        }
        return Docker::connect_with_ssh(host, TIMEOUT, version, None).map_err(|e| refused(e.to_string()));
    }
    let tcp = host.starts_with("tcp://") || host.starts_with("http://") || host.starts_with("https://");
    if !tcp {
        return Err(refused(
            "the address is neither unix:///PATH, tcp://HOST:PORT nor ssh://[USER@]HOST".into(),
        ));
    }
    match &transport.tls {
        Some(tls) => {
            for (what, path) in [
                ("CA certificate", &tls.ca),
                ("client certificate", &tls.cert),
                ("client key", &tls.key),
            ] {
                check_pem(path).map_err(|reason| refused(format!("{what} {}: {reason}", path.display())))?;
            }
            if let Some(warning) = lifeboat_model::redact::loose_permissions(&tls.key) {
                tracing::warn!("{warning}");
            }
            let h = host.replacen("http://", "tcp://", 1);
            Docker::connect_with_ssl(&h, &tls.key, &tls.cert, &tls.ca, TIMEOUT, version)
                .map_err(|e| refused(format!("TLS setup: {e}")))
        }
        None if host.starts_with("https://") => Err(refused(
            "https:// needs the TLS files (ca, cert, key; DOCKER_TLS_VERIFY and DOCKER_CERT_PATH)".into(),
        )),
        None if transport.insecure => {
            let h = host.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&h, TIMEOUT, version).map_err(|e| refused(e.to_string()))
        }
        None => Err(refused(
            "plain tcp:// is unencrypted and unauthenticated (whoever reaches the port is root on that host); \
             use TLS with a client certificate (the plan's tls: {ca, cert, key}, or DOCKER_TLS_VERIFY=1 with \
             DOCKER_CERT_PATH), ssh://, or allow it explicitly (the plan's insecure: true, or \
             LIFEBOAT_DOCKER_INSECURE=1)"
                .into(),
        )),
    }
}

/// Whether `path` is a readable PEM file (its content is not shown: a key is a secret).
fn check_pem(path: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err("not a PEM file (no -----BEGIN line)".into());
    }
    Ok(())
}

/// The default engine address: `DOCKER_HOST`, else the local socket.
pub fn default_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// How hard [`Site::connect`] tries before it calls an engine unreachable.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    /// Handshakes tried.
    pub tries: u32,
    /// The longest wait for one handshake's answer.
    pub timeout: Duration,
    /// The pause between two handshakes.
    pub pause: Duration,
}

impl Default for Attempts {
    /// 3 handshakes of at most 5 s each, 1 s apart.
    fn default() -> Self {
        Attempts {
            tries: 3,
            timeout: Duration::from_secs(5),
            pause: Duration::from_secs(1),
        }
    }
}

impl Site {
    /// Connects to `host` (`unix:///path`, `tcp://HOST:PORT`, `ssh://[USER@]HOST`) over
    /// `transport` and negotiates the API version (engines from API 1.41, Docker 20.10, on), trying as [`Attempts::default`] says.
    ///
    /// [`DockerError::Unreachable`] only when no handshake got an answer: the connection was
    /// refused, there was no route, or no answer came in time, on every try; or the socket file
    /// is missing from a directory that exists (a stopped dockerd removes its socket).
    /// [`DockerError::Access`] for everything else: a socket directory that does not exist or a
    /// path that is not a socket (configuration), a socket the user may not open or an HTTP
    /// 401/403 (authentication), any other error answer (protocol).
    pub fn connect(host: &str, transport: &Transport) -> Result<Site, DockerError> {
        Site::connect_with(host, transport, Attempts::default())
    }

    /// [`Site::connect`] with its own [`Attempts`].
    pub fn connect_with(host: &str, transport: &Transport, attempts: Attempts) -> Result<Site, DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            host: host.to_string(),
            reason,
        };
        let access = |problem: AccessProblem, reason: String| DockerError::Access {
            host: host.to_string(),
            problem,
            reason,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| access(AccessProblem::Config, format!("cannot start the I/O runtime: {e}")))?;
        if let Some(path) = host.strip_prefix("unix://") {
            use std::os::unix::fs::FileTypeExt;
            let p = std::path::Path::new(path);
            match std::fs::metadata(p) {
                Ok(m) if m.file_type().is_socket() => {}
                Ok(_) => return Err(access(AccessProblem::Config, format!("{path} is not a socket"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(match p.parent().filter(|d| d.is_dir()) {
                        Some(_) => unreachable(format!(
                            "no socket at {path}: no engine runs there (a stopped dockerd removes its socket)"
                        )),
                        None => access(
                            AccessProblem::Config,
                            format!("no socket at {path}, and its directory does not exist: is the address right?"),
                        ),
                    })
                }
                Err(e) => {
                    let problem = match classify(&e, AccessProblem::Config) {
                        Reach::Access(p) => p,
                        Reach::Unreachable(_) => AccessProblem::Config,
                    };
                    return Err(access(problem, format!("{path}: {e}")));
                }
            }
        }
        let docker = client(host, transport)?;
        let docker = rt.block_on(async {
            let mut last = String::new();
            for n in 0..attempts.tries.max(1) {
                if n > 0 {
                    tokio::time::sleep(attempts.pause).await;
                }
                match tokio::time::timeout(attempts.timeout, docker.clone().negotiate_version()).await {
                    Ok(Ok(d)) => return Ok(d),
                    Err(_) => last = format!("no answer within {:?}", attempts.timeout),
                    Ok(Err(e)) => match handshake_error(&e) {
                        Reach::Unreachable(_) => last = short_error(&e),
                        Reach::Access(problem) => return Err(access(problem, short_error(&e))),
                    },
                }
            }
            Err(unreachable(format!("{last} ({} tries)", attempts.tries.max(1))))
        })?;
        Ok(Site {
            rt,
            docker,
            host: host.to_string(),
            helper: std::sync::Mutex::new(None),
        })
    }

    /// The address this site was reached at.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn api_err(&self, what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError + '_ {
        let what = what.into();
        move |e| DockerError::Api {
            host: self.host.clone(),
            what,
            retry: api_retry(&e),
            reason: short_error(&e),
        }
    }
}

/// The class of a failed Engine API call: the engine's answer ([`Retry::for_status`]), or
/// [`Retry::Later`] when it did not answer.
pub(crate) fn api_retry(e: &bollard::errors::Error) -> Retry {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Retry::for_status(*status_code),
        _ => Retry::Later,
    }
}

/// The engine's message without bollard's wrapping.
pub(crate) fn short_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            format!("{message} (HTTP {status_code})")
        }
        other => other.to_string(),
    }
}

/// How a failed version handshake reads: HTTP 401/403 is authentication, any other answer a
/// protocol error; a connection that could not be made is [`Reach::Unreachable`].
fn handshake_error(e: &bollard::errors::Error) -> Reach {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => {
            Reach::Access(if matches!(status_code, 401 | 403) {
                AccessProblem::Auth
            } else {
                AccessProblem::Protocol
            })
        }
        other => classify(other, AccessProblem::Protocol),
    }
}

/// Whether an API error is "no such object".
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

/// Whether the engine is an active Swarm manager.
pub(crate) fn swarm_manager(info: &bollard::models::SystemInfo) -> bool {
    info.swarm.as_ref().is_some_and(|s| {
        s.control_available == Some(true)
            && s.local_node_state.as_ref().map(to_json) == Some(Value::String("active".into()))
    })
}

/// A string at a JSON pointer, if present.
pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Converts an engine document to JSON (Docker's field names).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("engine documents serialise")
}

#[cfg(test)]
mod connect_tests {
    use super::*;

    /// Errors lost their retry class at every boundary (architecture review, change 4).
    #[test]
    fn an_engine_api_error_keeps_the_class_of_the_engine_s_answer() {
        let api = |status_code: u16| {
            let retry = api_retry(&bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: "m".into(),
            });
            DockerError::Api {
                host: "h".into(),
                what: "create container web".into(),
                reason: "m".into(),
                retry,
            }
        };
        assert_eq!(
            api(409).retry(),
            Retry::Later,
            "a name in use by a container being removed"
        );
        assert_eq!(api(503).retry(), Retry::Later);
        assert_eq!(api(400).retry(), Retry::AfterFix, "a request the engine refuses");
        assert_eq!(api(404).retry(), Retry::AfterFix);
        assert_eq!(api_retry(&bollard::errors::Error::RequestTimeoutError), Retry::Later);
        let unreachable = DockerError::Unreachable {
            host: "h".into(),
            reason: "refused".into(),
        };
        assert_eq!(unreachable.retry(), Retry::Later);
    }
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    fn quick() -> Attempts {
        Attempts {
            tries: 2,
            timeout: Duration::from_millis(300),
            pause: Duration::from_millis(50),
        }
    }

    /// A socket that answers every request with `response` (None: reads and never answers).
    fn server(path: &std::path::Path, response: Option<&'static str>) {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                match response {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes());
                    }
                    None => held.push(s),
                }
            }
        });
    }

    fn err(host: &str) -> DockerError {
        match Site::connect_with(
            host,
            &Transport {
                tls: None,
                insecure: true,
            },
            quick(),
        ) {
            Ok(_) => panic!("{host}: connected"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_socket_in_a_directory_that_does_not_exist_is_a_configuration_error() {
        let e = err("unix:///nonexistent-lifeboat-dir/docker.sock");
        assert!(
            matches!(
                e,
                DockerError::Access {
                    problem: AccessProblem::Config,
                    ..
                }
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let e = err(&format!("unix://{}", file.display()));
        assert!(
            matches!(
                e,
                DockerError::Access {
                    problem: AccessProblem::Config,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_missing_or_refusing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(&format!("unix://{}", dir.path().join("gone.sock").display()));
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        // A socket file nobody listens on (a killed dockerd leaves it): connection refused.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let e = err(&format!("unix://{}", stale.display()));
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("2 tries"), "{e}");
    }

    #[test]
    fn an_engine_that_never_answers_is_unreachable_after_its_tries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hung.sock");
        server(&path, None);
        let t = std::time::Instant::now();
        let e = err(&format!("unix://{}", path.display()));
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("no answer within"), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(600), "both tries waited");
    }

    #[test]
    fn an_error_answer_to_the_handshake_is_authentication_or_protocol_never_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        for (name, status, want) in [
            ("401.sock", "401 Unauthorized", AccessProblem::Auth),
            ("403.sock", "403 Forbidden", AccessProblem::Auth),
            ("500.sock", "500 Internal Server Error", AccessProblem::Protocol),
        ] {
            let path = dir.path().join(name);
            let resp: &'static str = Box::leak(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: 21\r\nConnection: close\r\n\r\n{{\"message\":\"refused\"}}"
                )
                .into_boxed_str(),
            );
            server(&path, Some(resp));
            let e = err(&format!("unix://{}", path.display()));
            match &e {
                DockerError::Access { problem, .. } => assert_eq!(*problem, want, "{e}"),
                other => panic!("{status}: {other}"),
            }
        }
        // Not HTTP at all.
        let path = dir.path().join("garbage.sock");
        server(&path, Some("SSH-2.0-OpenSSH_9.2\r\n"));
        let e = err(&format!("unix://{}", path.display()));
        assert!(
            matches!(
                e,
                DockerError::Access {
                    problem: AccessProblem::Protocol,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_port_nobody_listens_on_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = err(&format!("tcp://127.0.0.1:{port}"));
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
    }
}
