//! Kubernetes adapter.
//!
//! Works through discovery and dynamic objects, not compiled-in types, so it serves every
//! Kubernetes version a user runs (the lab runs 1.20) and every custom resource. [`Cluster`] is one
//! API server reached through a kubeconfig context.
//!
//! A snapshot of kind `kube` is a tree:
//! - `kube.json`: the [`Manifest`] (server version, selection, resources seen, what was skipped);
//! - `resources/GROUP/VERSION/PLURAL/NAMESPACE/NAME.json` (`GROUP` is `core` for the legacy group,
//!   `NAMESPACE` is `_cluster` for cluster-scoped objects): each object exactly as the API server
//!   returned it, one blob each, so an unchanged object costs nothing in the next backup;
//! - `volumes/NAMESPACE/CLAIM/data/...`: the files of each bound PersistentVolumeClaim in scope,
//!   read through a helper pod ([`volumes`]).
//!
//! The API is blocking: a [`Cluster`] owns a small tokio runtime.
#![forbid(unsafe_code)]

pub mod backup;
pub mod control;
pub mod discovery;
pub mod exec;
pub mod hooks;
pub mod restore;
pub mod rules;
pub mod stall;
pub mod volumes;

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
pub use lifeboat_model::reach::AccessProblem;
use lifeboat_model::reach::{classify, Reach};
pub use lifeboat_model::Retry;
use serde::{Deserialize, Serialize};

pub use backup::{backup, BackupOptions, BackupOutcome};
pub use restore::{restore, ItemResult, RestoreOptions, RestoreReport};

/// Label on the helper pods Lifeboat starts (never backed up, removed after use).
pub const HELPER_LABEL: &str = "io.lifeboat.helper";

/// Errors of the Kubernetes adapter.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig cannot be read or names no usable context.
    #[error("kubeconfig: {0}")]
    Config(String),
    /// The API server cannot be reached (retry when it is). Nothing was changed.
    #[error("cannot reach the Kubernetes API server of context {context}: {reason}")]
    Unreachable { context: String, reason: String },
    /// The API server was reached but could not be used (see [`AccessProblem`]: credentials
    /// refused, TLS failed, an error answer to the version request): unlike
    /// [`KubeError::Unreachable`], no sign that the cluster is down. Nothing was changed.
    #[error("Kubernetes API server of context {context}: {problem}: {reason}")]
    Access {
        context: String,
        problem: AccessProblem,
        reason: String,
    },
    /// An API call failed; `what` names the resource or object; `retry` is the class of the API
    /// server's answer ([`Retry::for_status`]; no answer, a helper pod that failed, is
    /// [`Retry::Later`]).
    #[error("Kubernetes API ({context}): {what}: {reason}")]
    Api {
        context: String,
        what: String,
        reason: String,
        retry: Retry,
    },
    /// The options cannot be used (a bad selector, an unknown kind, a bad mapping).
    #[error("{0}")]
    BadOption(String),
    /// A backup hook failed with policy `fail` (or is misconfigured): no snapshot was written.
    #[error("hook {phase} in pod {pod}: {reason}")]
    Hook {
        pod: String,
        phase: &'static str,
        reason: String,
    },
    /// The snapshot is not a Kubernetes snapshot or a document in it cannot be read.
    #[error("snapshot {snapshot}: {reason}")]
    BadSnapshot { snapshot: String, reason: String },
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::RepoError),
    #[error(transparent)]
    Fs(#[from] lifeboat_fs::FsError),
}

impl KubeError {
    /// Whether the same call may succeed later without a change: an API server that cannot be
    /// reached, an API call that failed in passing, a repository lock or store error, a failed
    /// stream are [`Retry::Later`]; a kubeconfig, credential or TLS problem, a bad option, a failed
    /// hook or a bad snapshot need a fix.
    pub fn retry(&self) -> Retry {
        match self {
            KubeError::Unreachable { .. } | KubeError::Fs(_) => Retry::Later,
            KubeError::Api { retry, .. } => *retry,
            KubeError::Repo(e) => e.retry(),
            KubeError::Config(_)
            | KubeError::Access { .. }
            | KubeError::BadOption(_)
            | KubeError::Hook { .. }
            | KubeError::BadSnapshot { .. } => Retry::AfterFix,
        }
    }
}

/// What a Kubernetes snapshot records about where and how it was taken (`kube.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// The kubeconfig context.
    pub context: String,
    /// The API server's URL.
    pub server: String,
    /// The API server's version (`v1.20.2`).
    pub server_version: String,
    pub selection: Selection,
    /// Resources backed up: `group/version/plural` with object counts.
    pub resources: Vec<ResourceCount>,
    /// Resources not backed up and why (aggregated APIs without a backend, excluded kinds ...).
    pub skipped: Vec<String>,
    /// Objects or resources that could not be read.
    pub errors: Vec<String>,
    /// The namespaces objects were taken from (sorted).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Backup hooks that ran (`pre pod NS/NAME container C`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResourceCount {
    /// `group/version/plural` (`core/v1/configmaps`).
    pub resource: String,
    pub kind: String,
    pub namespaced: bool,
    pub objects: u64,
}

/// Which objects a backup takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Only these namespaces (empty: every namespace, the system ones too, see
    /// [`rules::SYSTEM_NAMESPACES`]; objects the cluster makes itself are left out by
    /// [`rules::excluded_object`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// With no `namespaces`: every namespace but these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
    /// A label selector (`app=web,tier!=db`), applied to every listed object (cluster-scoped ones
    /// too); cluster-scoped objects taken because something in scope refers to them are not filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Only these kinds (`configmaps`, `ConfigMap`, `deployments.apps`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never these kinds (on top of the default exclusions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// One Kubernetes API server.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// The same server without the client's retries of 429/503/504 (kube-rs retries them up to 15
    /// times, backing off): for discovery, where a 503 means an aggregated API whose backend is
    /// down, to be skipped at once.
    no_retry: Client,
    context: String,
    server: String,
}

impl Cluster {
    /// Connects with a kubeconfig file (else `KUBECONFIG`, else `~/.kube/config`) and a context
    /// (else the current one), and checks that the server answers its version request (3 tries of
    /// at most 8 s, 1 s apart).
    ///
    /// [`KubeError::Unreachable`] only when no try got a connection (refused, no route, no answer
    /// in time); a kubeconfig that cannot be read or names no usable context is
    /// [`KubeError::Config`]; credentials refused (HTTP 401/403, a failing credential plugin), a
    /// failed TLS handshake or another error answer is [`KubeError::Access`].
    pub fn connect(kubeconfig: Option<&std::path::Path>, context: Option<&str>) -> Result<Cluster, KubeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| KubeError::Config(format!("cannot start the I/O runtime: {e}")))?;
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let kc = match kubeconfig {
            Some(path) => {
                Kubeconfig::read_from(path).map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
            }
            None => Kubeconfig::read().map_err(|e| KubeError::Config(e.to_string()))?,
        };
        let current = kc.current_context.clone();
        let config = rt
            .block_on(kube::Config::from_custom_kubeconfig(kc, &options))
            .map_err(|e| KubeError::Config(e.to_string()))?;
        let server = config.cluster_url.to_string();
        let context = context
            .map(str::to_string)
            .or(current)
            .unwrap_or_else(|| "current".into());
        let mut no_retry = config.clone();
        no_retry.default_retry = false;
        let (client, no_retry) = {
            let _guard = rt.enter();
            (
                Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?,
                Client::try_from(no_retry).map_err(|e| KubeError::Config(e.to_string()))?,
            )
        };
        let cluster = Cluster {
            rt,
            client,
            no_retry,
            context,
            server,
        };
        cluster.block_on(async {
            let (tries, timeout) = (3, Duration::from_secs(8));
            let mut last = String::new();
            for n in 0..tries {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                match tokio::time::timeout(timeout, cluster.client.apiserver_version()).await {
                    Ok(Ok(_)) => return Ok(()),
                    Err(_) => last = format!("no answer within {timeout:?}"),
                    Ok(Err(e)) => match handshake_error(&e) {
                        Reach::Unreachable(_) => last = short_error(&e),
                        Reach::Access(problem) => {
                            return Err(KubeError::Access {
                                context: cluster.context.clone(),
                                problem,
                                reason: format!("{} ({})", cluster.server, short_error(&e)),
                            })
                        }
                    },
                }
            }
            Err(cluster.unreachable(format!("{last}; {tries} tries")))
        })?;
        Ok(cluster)
    }

    fn unreachable(&self, reason: String) -> KubeError {
        KubeError::Unreachable {
            context: self.context.clone(),
            reason: format!("{} ({reason})", self.server),
        }
    }

    pub(crate) fn api_err(&self, what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError + '_ {
        let what = what.into();
        move |e| KubeError::Api {
            context: self.context.clone(),
            what,
            retry: status_code(&e).map_or(Retry::Later, Retry::for_status),
            reason: short_error(&e),
        }
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn context(&self) -> &str {
        &self.context
    }

    pub fn server(&self) -> &str {
        &self.server
    }
}

/// How a failed version request reads (see [`Cluster::connect`]).
fn handshake_error(e: &kube::Error) -> Reach {
    match e {
        kube::Error::Api(s) if matches!(s.code, 401 | 403) => Reach::Access(AccessProblem::Auth),
        kube::Error::Api(_) => Reach::Access(AccessProblem::Protocol),
        kube::Error::Auth(_) => Reach::Access(AccessProblem::Auth),
        kube::Error::RustlsTls(_) | kube::Error::TlsRequired => Reach::Access(AccessProblem::Tls),
        other if has_tls_error(other) => Reach::Access(AccessProblem::Tls),
        other => classify(other, AccessProblem::Protocol),
    }
}

/// Whether a TLS error (rustls's) is in the error's chain, also inside an I/O error.
fn has_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if has_tls_error(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// The API server's own message for an error.
pub(crate) fn short_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// The HTTP status of an API error, if it is one.
pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[cfg(test)]
mod connect_tests {
    use super::*;
    use std::io::{Read, Write};

    /// A kubeconfig for `server` with a bearer token, context `t`.
    fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\n\
                 users: [{{name: u, user: {{token: invalid}}}}]\ncontexts: [{{name: t, context: {{cluster: c, user: u}}}}]\n\
                 current-context: t\n"
            ),
        )
        .unwrap();
        p
    }

    /// An HTTP server on loopback answering every request with `status` and a Status body.
    fn server(status: u16, reason: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = format!(
                    "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"{reason}\",\"reason\":\"{reason}\",\"code\":{status}}}"
                );
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    fn err(kc: &std::path::Path, context: Option<&str>) -> KubeError {
        match Cluster::connect(Some(kc), context) {
            Ok(_) => panic!("connected"),
            Err(e) => e,
        }
    }

    #[test]
    fn refused_credentials_are_an_authentication_error_not_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        for (status, reason) in [(401, "Unauthorized"), (403, "Forbidden")] {
            let kc = kubeconfig(dir.path(), &format!("http://127.0.0.1:{}", server(status, reason)));
            let e = err(&kc, None);
            assert!(
                matches!(
                    e,
                    KubeError::Access {
                        problem: AccessProblem::Auth,
                        ..
                    }
                ),
                "{status}: {e}"
            );
            assert!(!e.to_string().contains("invalid"), "the token is not shown: {e}");
        }
        let kc = kubeconfig(dir.path(), &format!("http://127.0.0.1:{}", server(500, "Internal")));
        let e = err(&kc, None);
        assert!(
            matches!(
                e,
                KubeError::Access {
                    problem: AccessProblem::Protocol,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_refused_port_is_unreachable_and_a_bad_kubeconfig_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let kc = kubeconfig(dir.path(), &format!("http://127.0.0.1:{port}"));
        let e = err(&kc, None);
        assert!(matches!(e, KubeError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("3 tries"), "{e}");
        let e = err(&kc, Some("no-such-context"));
        assert!(matches!(e, KubeError::Config(_)), "{e}");
        let e = err(&dir.path().join("missing"), None);
        assert!(matches!(e, KubeError::Config(_)), "{e}");
    }

    #[test]
    fn a_failed_tls_handshake_is_a_tls_error() {
        // A TLS server would need a certificate; a plain HTTP server spoken to over https fails
        // the handshake the same way (the answer is no TLS record).
        let dir = tempfile::tempdir().unwrap();
        let kc = kubeconfig(dir.path(), &format!("https://127.0.0.1:{}", server(200, "OK")));
        let e = err(&kc, None);
        assert!(
            matches!(
                e,
                KubeError::Access {
                    problem: AccessProblem::Tls,
                    ..
                }
            ),
            "{e}"
        );
    }
}
