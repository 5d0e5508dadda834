//! Docker Engine and Swarm adapter.
//!
//! [`Site`] talks to one Docker Engine through its API (bollard), locally or at `tcp://` / `unix://`
//! addresses, so a remote host works the same as the local one. It turns the applications on that
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

/// The default engine address: `DOCKER_HOST`, else the local socket.
pub fn default_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

impl Site {
    /// Connects to `host` (`unix:///path`, `tcp://HOST:PORT`, `http://...`) and negotiates the API
    /// version (engines from API 1.41, Docker 20.10, on).
    pub fn connect(host: &str) -> Result<Site, DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            host: host.to_string(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("cannot start the I/O runtime: {e}")))?;
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                return Err(unreachable(format!("no socket at {path}")));
            }
            Docker::connect_with_unix(host, 600, bollard::API_DEFAULT_VERSION)
        } else {
            let h = host.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&h, 600, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|e| unreachable(e.to_string()))?;
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
