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

use std::time::Duration;

use bollard::Docker;
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
    /// An Engine API call failed (the engine's own message is included). `what` names the object.
    #[error("Docker engine at {host}: {what}: {reason}")]
    Api { host: String, what: String, reason: String },
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

impl Site {
    /// Connects to `host` (`unix:///path`, `tcp://HOST:PORT`, `ssh://[USER@]HOST`) over
    /// `transport` and negotiates the API version (engines from API 1.41, Docker 20.10, on).
    pub fn connect(host: &str, transport: &Transport) -> Result<Site, DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            host: host.to_string(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("cannot start the I/O runtime: {e}")))?;
        let docker = client(host, transport)?;
        let docker = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), docker.negotiate_version())
                .await
                .map_err(|_| unreachable("no answer within 15 s".into()))?
                .map_err(|e| unreachable(e.to_string()))
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
            reason: short_error(&e),
        }
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
