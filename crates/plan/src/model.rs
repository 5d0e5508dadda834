//! The plan's fields. `docs/plan-reference.md` describes each one; unknown fields are errors.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use crate::duration::Dur;

pub const API_VERSION: &str = "lifeboat.dev/v1";
pub const KIND: &str = "DRPlan";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(rename = "apiVersion")]
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: Metadata,
    /// Where backups go: a path or `s3://...` (as `--repo`).
    pub repository: String,
    /// Sites by name.
    pub sites: BTreeMap<String, Site>,
    pub apps: Vec<App>,
    /// A second prober (`lifeboat watch --witness`) must confirm a failure before `watch` fails over.
    #[serde(default)]
    pub witness: Option<Witness>,
    /// Several `serve` instances (one per site and a witness) elect one leader through etcd and
    /// fail over on a majority verdict; without it, `serve` is one process.
    #[serde(default)]
    pub coordination: Option<Coordination>,
}

/// The control plane's coordination service: `serve` instances on several machines elect one
/// leader (the only one that acts) through an etcd v3 lease, decide "the primary is down" by a
/// majority of their verdicts, and the instance on the primary's site fences the app there when it
/// loses etcd for `self_fence_after`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Coordination {
    pub etcd: EtcdCoordination,
    /// How many `serve` instances vote; a failover needs more than half of them to see the
    /// active site down (default: one per etcd endpoint).
    #[serde(default)]
    pub instances: Option<u32>,
    /// How long the instance on the active site may be cut off from etcd before it stops the app
    /// there (default: 40% of the lease TTL; must be shorter than the TTL, see docs/dr.md).
    #[serde(default)]
    pub self_fence_after: Option<Dur>,
}

/// An etcd v3 cluster, through its HTTP/JSON gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdCoordination {
    /// Client URLs, `http://HOST:PORT` or `https://HOST:PORT`, of the cluster's members.
    pub endpoints: Vec<String>,
    /// The leader's lease: a leader that has not renewed it for this long is replaced.
    #[serde(default = "ten_seconds")]
    pub ttl: Dur,
    /// CA certificate (PEM) of https endpoints.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), when etcd asks for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl Coordination {
    /// The instances that vote.
    pub fn voters(&self) -> u32 {
        self.instances.unwrap_or(self.etcd.endpoints.len() as u32).max(1)
    }

    /// How many "down" verdicts make a majority.
    pub fn majority(&self) -> u32 {
        self.voters() / 2 + 1
    }

    /// The lease TTL.
    pub fn ttl(&self) -> std::time::Duration {
        self.etcd.ttl.0
    }

    /// How long the active site's instance may be cut off before it fences the app there.
    pub fn self_fence_after(&self) -> std::time::Duration {
        self.self_fence_after.map(|d| d.0).unwrap_or(self.ttl() * 2 / 5)
    }
}

/// The witness rule: `watch` fails over only when the witness reported the primary failing within
/// `max_age`; a silent or stale witness, or one that still sees the primary healthy, stops it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    #[serde(default = "ten_seconds")]
    pub max_age: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

/// A place applications run: a Docker engine or Swarm, or a Kubernetes cluster.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Site {
    Docker {
        /// `unix:///PATH`, `tcp://HOST:PORT` (with `tls`, or `insecure: true`) or `ssh://[USER@]HOST`;
        /// default: `DOCKER_HOST`, else the local socket.
        #[serde(default)]
        host: Option<String>,
        /// What `{site}` becomes in probe and check URLs (default: the host of a `tcp://` engine).
        #[serde(default)]
        address: Option<String>,
        /// TLS with a client certificate for a `tcp://` engine (dockerd `--tlsverify`).
        #[serde(default)]
        tls: Option<DockerTls>,
        /// Allows a plain `tcp://` engine: no encryption, no authentication (anyone who reaches the
        /// port is root on that host). Refused without it.
        #[serde(default)]
        insecure: bool,
    },
    Kubernetes {
        #[serde(default)]
        kubeconfig: Option<PathBuf>,
        #[serde(default)]
        context: Option<String>,
        /// What `{site}` becomes in probe and check URLs.
        #[serde(default)]
        address: Option<String>,
        /// Image of the helper pods that read and write volume data (needs `sh`, `sleep`, `tar`);
        /// default `busybox:1.36`.
        #[serde(default)]
        helper_image: Option<String>,
    },
}

/// The files of a TLS connection to a Docker engine, as `DOCKER_CERT_PATH` holds them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerTls {
    /// The CA that signed the engine's certificate (`ca.pem`).
    pub ca: PathBuf,
    /// The client certificate (`cert.pem`).
    pub cert: PathBuf,
    /// The client certificate's private key (`key.pem`).
    pub key: PathBuf,
}

impl Site {
    /// The key of this site's section (`docker`, `kubernetes`): the name its kind is registered
    /// under.
    pub fn kind(&self) -> &'static str {
        match self {
            Site::Docker { .. } => "docker",
            Site::Kubernetes { .. } => "kubernetes",
        }
    }

    /// What `{site}` stands for on this site, if known.
    pub fn address(&self) -> Option<String> {
        match self {
            Site::Docker { address: Some(a), .. } | Site::Kubernetes { address: Some(a), .. } => Some(a.clone()),
            Site::Docker { host: Some(h), .. } => {
                let rest = h
                    .strip_prefix("tcp://")
                    .or_else(|| h.strip_prefix("http://"))
                    .or_else(|| h.strip_prefix("https://"))
                    .or_else(|| h.strip_prefix("ssh://"))?;
                let rest = rest.trim_end_matches('/');
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                Some(rest.rsplit_once(':').map_or(rest, |(host, _)| host).to_string())
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// One site; backups only.
    SingleSite,
    /// Active on several sites at once; traffic spread, no failover of data.
    MultiSite,
    /// Primary and standby; failover and failback.
    #[default]
    Dr,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StandbyMode {
    /// Deployed on the standby at zero replicas, volume data staged after every backup.
    Hot,
    /// Restored from the repository at failover.
    #[default]
    Cold,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: Spanned<String>,
    #[serde(default)]
    pub profile: Profile,
    pub primary: Spanned<String>,
    #[serde(default)]
    pub standby: Option<Spanned<String>>,
    #[serde(default)]
    pub standby_mode: StandbyMode,
    #[serde(default)]
    pub select: Select,
    #[serde(default)]
    pub objectives: Option<Objectives>,
    #[serde(default)]
    pub backup: Option<BackupPolicy>,
    #[serde(default)]
    pub health: Vec<Health>,
    #[serde(default)]
    pub traffic: Option<Traffic>,
    #[serde(default)]
    pub verify: Vec<Check>,
    #[serde(default)]
    pub hooks: Hooks,
    /// How long fencing waits for the app's containers to stop after SIGTERM before it kills
    /// them (whole seconds). Default: each container's own stop timeout, else the engine's 10 s.
    #[serde(default)]
    pub stop_grace: Option<Dur>,
    /// How a drill's copy is isolated.
    #[serde(default)]
    pub drill: Drill,
}

/// A drill's copy is cut off from everything but itself (on Kubernetes: a default-deny
/// NetworkPolicy in each of its namespaces); `allow` opens it to these networks.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// Networks (`10.77.0.0/16`, `192.0.2.7/32`) the copy may exchange traffic with, both ways:
    /// e.g. where Lifeboat's health probes come from. Kubernetes drill sites only.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// How often the leading `serve` drills the app (`7d`; profile `dr` only); none: only by hand
    /// (`lifeboat drill`).
    #[serde(default)]
    pub every: Option<Spanned<Dur>>,
    /// How many drill reports the repository keeps for the app (the oldest are removed after each
    /// drill); none: every report is kept.
    #[serde(default)]
    pub keep: Option<Spanned<u32>>,
    /// Where drills run (default: the standby); never the primary.
    #[serde(default)]
    pub site: Option<Spanned<String>>,
}

impl Drill {
    /// The interval a drill must have passed within: `every`, else [`DEFAULT_DRILL_INTERVAL`].
    pub fn interval(&self) -> std::time::Duration {
        self.every.as_ref().map_or(DEFAULT_DRILL_INTERVAL, |e| e.value.0)
    }
}

/// How recent a passed drill must be for an app without `drill.every` to count as drilled: 30 days.
pub const DEFAULT_DRILL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Commands run in the app's containers around its backups and after it is started elsewhere.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before `backup --plan` reads the app, on the site where it is active (e.g. a database dump
    /// into a volume). A failure with `on_error: fail` stops that app's backup.
    #[serde(default)]
    pub pre_backup: Vec<Hook>,
    /// After the backup, also when it failed (e.g. unfreeze).
    #[serde(default)]
    pub post_backup: Vec<Hook>,
    /// After failover, failback or a drill started the app, before its health is awaited (e.g.
    /// load the dump, rebuild an index). A failure with `on_error: fail` fails the step.
    #[serde(default)]
    pub post_restore: Vec<Hook>,
}

/// One hook command.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub exec: Spanned<Exec>,
    /// Longest run; then the hook counts as failed. Default 60s.
    #[serde(default = "sixty_seconds")]
    pub timeout: Dur,
    #[serde(default)]
    pub on_error: HookOnError,
}

/// A command executed inside a running container of the app.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The container's name on the site (a drill's copy: with the drill's prefix added).
    pub container: String,
    /// The program and its arguments, run without a shell (use `["sh", "-c", "..."]` for one).
    pub command: Vec<String>,
}

/// What a failed hook does.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HookOnError {
    /// Stop the backup or fail the step (default).
    #[default]
    Fail,
    /// Report it and go on.
    Continue,
}

/// What belongs to the app. Docker: `labels` and/or `stack`; Kubernetes: `namespaces` and/or
/// `labels` (as a selector).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Select {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    #[serde(default)]
    pub rto: Option<Spanned<Dur>>,
    #[serde(default)]
    pub rpo: Option<Spanned<Dur>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    pub every: Spanned<Dur>,
    #[serde(default)]
    pub keep: Keep,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    #[serde(default)]
    pub last: Option<u32>,
    #[serde(default)]
    pub hourly: Option<u32>,
    #[serde(default)]
    pub daily: Option<u32>,
    #[serde(default)]
    pub weekly: Option<u32>,
    #[serde(default)]
    pub monthly: Option<u32>,
}

/// A health probe with its thresholds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(flatten)]
    pub probe: Probe,
    #[serde(default = "one_second")]
    pub interval: Spanned<Dur>,
    #[serde(default = "two_seconds")]
    pub timeout: Dur,
    #[serde(default = "three")]
    pub failure_threshold: Spanned<u32>,
    #[serde(default = "one")]
    pub success_threshold: Spanned<u32>,
}

/// One of `http` or `tcp`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// `{site}` is replaced by the address of the site being probed.
    pub url: String,
    /// Accepted status codes (default: 200-399).
    #[serde(default)]
    pub expect_status: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// `HOST:PORT`; `{site}` as for http.
    pub address: String,
}

/// How clients reach the app.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Traffic {
    /// RFC 2136 update signed with TSIG.
    Dns {
        server: String,
        zone: String,
        name: String,
        #[serde(default = "five")]
        ttl: u32,
        /// A file with the TSIG key (`name`, `algorithm`, `secret`), never the secret inline.
        tsig_key: PathBuf,
        /// The address the name points to for each site.
        primary: String,
        standby: String,
    },
    /// HAProxy's runtime API: one server enabled, the other put in maintenance.
    Haproxy {
        /// `unix:///PATH` or `tcp://HOST:PORT` of the runtime API.
        socket: String,
        backend: String,
        primary: String,
        standby: String,
        /// The file HAProxy's `server-state-file` names (with `load-server-state-from-file global`
        /// in `defaults`): after every switch Lifeboat writes `show servers state` into it, so a
        /// reload keeps traffic where the switch put it. `plan check` fails without it.
        #[serde(default)]
        state_file: Option<PathBuf>,
    },
    /// An HTTP POST with an HMAC-SHA256-signed body.
    Webhook {
        url: String,
        /// A file holding the signing secret.
        secret_file: PathBuf,
    },
}

/// A check that the recovered app works.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(default)]
    pub http: Option<HttpCheck>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default)]
    pub expect_body_contains: Option<String>,
}

fn one_second() -> Spanned<Dur> {
    unknown(Dur(std::time::Duration::from_secs(1)))
}
fn sixty_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn two_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn three() -> Spanned<u32> {
    unknown(3)
}
fn one() -> Spanned<u32> {
    unknown(1)
}
fn ten_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn five() -> u32 {
    5
}
fn unknown<T>(v: T) -> Spanned<T> {
    Spanned::new(v, serde_saphyr::Location::UNKNOWN, serde_saphyr::Location::UNKNOWN)
}
