use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Lifeboat: disaster recovery for containerized applications.
#[derive(Parser, Debug)]
#[command(name = "lifeboat", version, about, max_term_width = 110)]
pub struct Cli {
    /// Repository: a local path, s3://BUCKET/PREFIX (endpoint from AWS_ENDPOINT_URL) or
    /// s3:http://HOST:PORT/BUCKET/PREFIX. Default: ~/.local/share/lifeboat/repo
    #[arg(long, global = true, env = "LIFEBOAT_REPO")]
    pub repo: Option<String>,
    /// Read the repository password from this file (else from LIFEBOAT_PASSWORD)
    #[arg(long, global = true, env = "LIFEBOAT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Print results as JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// How log lines look on stderr: `human` (default) or `json` (one object per line, with the
    /// event's kind, app and site as fields; what `serve`, `watch` and `sync` report goes there)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Wait up to this many seconds for a conflicting lock to be released
    #[arg(long, global = true, default_value_t = 0, value_name = "SECONDS")]
    pub lock_wait: u64,
    #[command(subcommand)]
    pub command: Command,
}

/// The format of log lines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, check and manage keys of a repository
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Back up data into the repository (`backup --plan PLAN`: every app of a DR plan)
    Backup(BackupArgs),
    /// DR plans: preflight check
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Write a Markdown runbook for recovering the plan's apps by hand
    Runbook {
        plan: PathBuf,
        /// Write to this file instead of stdout
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Move apps to their standby site: fence, data, start, health, traffic, verify (journaled; run
    /// again after an interruption to resume)
    Failover(OpArgs),
    /// Move apps back to their primary site, with the data written on the standby
    Failback(OpArgs),
    /// Watch the apps' health and fail over after `failure_threshold` consecutive failures
    Watch {
        plan: PathBuf,
        /// Only this app
        #[arg(long)]
        app: Option<String>,
        /// Be the witness: probe and report to the repository, never fail over
        #[arg(long)]
        witness: bool,
    },
    /// Keep each hot standby's workload definitions in step with the active site (created or
    /// replaced at zero replicas, nothing started), reporting the drift corrected
    Sync {
        plan: PathBuf,
        /// Only this app
        #[arg(long)]
        app: Option<String>,
        /// One round, then exit (default: a round every `--every` until interrupted)
        #[arg(long)]
        once: bool,
        /// Time between rounds, e.g. 30s, 5m
        #[arg(long, default_value = "1m", value_parser = lifeboat_plan::parse_duration)]
        every: std::time::Duration,
        /// Report the drift, change nothing
        #[arg(long)]
        dry_run: bool,
        /// On a plan with `coordination`: act without taking its leadership, when no etcd
        /// endpoint answers (nobody can lead then); refused while etcd answers
        #[arg(long)]
        without_coordination: bool,
    },
    /// Run the plan: each app's backups on its `backup.every` schedule with its `backup.keep`
    /// retention, sync rounds, and the health watch, until interrupted
    Serve {
        plan: PathBuf,
        /// Only this app
        #[arg(long)]
        app: Option<String>,
        /// Do not watch health (another process does, or failover is manual)
        #[arg(long)]
        no_watch: bool,
        /// Time between sync rounds (which also fence again a returning primary); 0 turns sync off
        #[arg(long, default_value = "1m", value_parser = lifeboat_plan::parse_duration)]
        sync_every: std::time::Duration,
        /// With the plan's `coordination`: this instance's name among the plan's serve instances
        /// (default: --site, else the host name)
        #[arg(long)]
        instance: Option<String>,
        /// With the plan's `coordination`: the site this instance runs at; it stops the apps active
        /// there when it is cut off from etcd for `self_fence_after` (none: a witness elsewhere)
        #[arg(long)]
        site: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Recover into an isolated copy, verify it, measure RTO and RPO, tear it down, and report
    Drill {
        plan: PathBuf,
        /// Only this app (default: every dr app)
        #[arg(long)]
        app: Option<String>,
        /// Recover on this site (default: the app's drill.site, else its standby)
        #[arg(long)]
        site: Option<String>,
        /// Write the report here: NAME.md, NAME.json, NAME.xml (JUnit) and NAME.html
        #[arg(long, value_name = "PATH")]
        report: Option<PathBuf>,
        /// Longest wait for the copy to become healthy, in seconds
        #[arg(long, default_value_t = 300)]
        health_timeout: u64,
        /// On a plan with `coordination`: act without taking its leadership, when no etcd
        /// endpoint answers (nobody can lead then); refused while etcd answers
        #[arg(long)]
        without_coordination: bool,
    },
    /// List the drills the repository holds for a plan's apps, newest first, with their result
    Drills {
        plan: PathBuf,
        /// Only this app
        #[arg(long)]
        app: Option<String>,
    },
    /// Where each app of a plan stands: active site and traffic, RPO now against its objective,
    /// last backup, standby, last drill, operation in flight, readiness level
    Status {
        plan: PathBuf,
        /// Only this app
        #[arg(long)]
        app: Option<String>,
        /// Redraw every --every until interrupted
        #[arg(long)]
        watch: bool,
        /// With --watch: time between redraws
        #[arg(long, default_value = "5s", value_parser = lifeboat_plan::parse_duration)]
        every: std::time::Duration,
    },
    /// Write Prometheus alerting rules for a plan, derived from each app's objectives
    Alerts {
        plan: PathBuf,
        /// Write here instead of stdout
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long the RPO may be above its objective before the alert fires
        #[arg(long, default_value = "5m", value_parser = lifeboat_plan::parse_duration)]
        rpo_for: std::time::Duration,
        /// How often `lifeboat repo check` is expected to pass
        #[arg(long, default_value = "7d", value_parser = lifeboat_plan::parse_duration)]
        repository_check_every: std::time::Duration,
    },
    /// API tokens for `serve --listen`
    #[command(subcommand)]
    Token(TokenCmd),
    /// List snapshots
    Snapshots,
    /// Show one snapshot: its record and its top-level entries
    Show {
        /// Snapshot id (or a unique prefix of at least 4 digits), or `latest`
        snapshot: String,
        /// Also list every entry below the roots (path, type, size)
        #[arg(long)]
        recursive: bool,
    },
    /// Restore a snapshot
    Restore(RestoreArgs),
    /// Show what differs between a Docker snapshot and a live engine (drift), or another snapshot
    Diff {
        /// Snapshot id (or a unique prefix), or `latest`
        snapshot: String,
        /// `live`, or a second snapshot
        other: String,
        /// Docker engine to compare with (default: DOCKER_HOST, else the local socket)
        #[arg(long)]
        host: Option<String>,
    },
    /// Lifeboat's helper program inside helper containers (not for direct use)
    #[command(subcommand, hide = true)]
    Helper(HelperCmd),
    /// Remove snapshots according to a retention policy (data is freed by `prune`)
    Forget(ForgetArgs),
    /// Delete data no snapshot references, and duplicate copies
    Prune {
        /// Report what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Keep pack files younger than this, whatever the index and the locks say (a backup
        /// running beside the prune writes only young packs)
        #[arg(long, default_value = "2h", value_parser = lifeboat_plan::parse_duration)]
        min_age: std::time::Duration,
    },
    /// Remove stale and unreadable lock files (of repository commands and of DR operations),
    /// naming each; with --all, every lock file (only when no other lifeboat process runs)
    Unlock {
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepoCmd {
    /// Create a new repository protected by the password
    Init,
    /// Verify the repository's structure (and with --read-data every byte)
    Check {
        /// Also read, decrypt and verify every stored blob
        #[arg(long)]
        read_data: bool,
    },
    /// Manage key slots (passwords)
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Add a password (read from --new-password-file or LIFEBOAT_NEW_PASSWORD)
    Add {
        #[arg(long, env = "LIFEBOAT_NEW_PASSWORD_FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// List key slots
    List,
    /// Remove a key slot (by id prefix); the slot in use cannot be removed
    Remove { id: String },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub cmd: Option<BackupCmd>,
    /// Back up every app of this DR plan from where it is active (and stage hot standbys)
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// With --plan: only this app
    #[arg(long, requires = "plan")]
    pub app: Option<String>,
    /// With --plan on a plan with `coordination`: back up without taking its leadership, when no
    /// etcd endpoint answers (nobody can lead then); refused while etcd answers
    #[arg(long, requires = "plan")]
    pub without_coordination: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token: print it once, and add its hash (never the token) to the token file
    New {
        /// The token's name (shown in the audit log)
        name: String,
        /// viewer (every GET) or operator (also the POSTs that start actions)
        #[arg(long, value_enum)]
        role: TokenRole,
        /// The token file (created mode 0600 if absent)
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TokenRole {
    Viewer,
    Operator,
}

/// The HTTP API, dashboard and metrics of `serve`.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Serve the API, the dashboard and /metrics on this address (e.g. 127.0.0.1:8443)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The API's token file (`lifeboat token new`); without it only /healthz, /readyz and /metrics answer
    #[arg(long, requires = "listen")]
    pub tokens: Option<PathBuf>,
    /// TLS certificate (PEM); without it a self-signed pair is made in --tls-dir
    #[arg(long, requires_all = ["listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, requires_all = ["listen", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Where the self-signed pair is made and kept (default: ~/.local/state/lifeboat/tls/PLAN)
    #[arg(long, requires = "listen", conflicts_with = "tls_cert")]
    pub tls_dir: Option<PathBuf>,
    /// Plain HTTP (loopback addresses only: behind a local proxy that terminates TLS)
    #[arg(long, requires = "listen", conflicts_with_all = ["tls_cert", "tls_dir"])]
    pub no_tls: bool,
    /// How often the status is read from the repository and the traffic routers
    #[arg(long, default_value = "10s", value_parser = lifeboat_plan::parse_duration)]
    pub status_every: std::time::Duration,
    /// How often the full check runs (sites, standby drift, images, capacity, readiness)
    #[arg(long, default_value = "1m", value_parser = lifeboat_plan::parse_duration)]
    pub check_every: std::time::Duration,
}

#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Preflight: sites, repository, recovery point age, images, capacity, drift, traffic router
    Check { plan: PathBuf },
}

#[derive(Args, Debug)]
pub struct OpArgs {
    pub plan: PathBuf,
    /// Only this app (default: every dr app of the plan)
    #[arg(long)]
    pub app: Option<String>,
    /// Do not take a last backup of the side being left (recover from the latest backup)
    #[arg(long)]
    pub no_final_backup: bool,
    /// Go on although data may be lost: failback with the standby unreachable (its writes since its
    /// last backup are lost), or a site to overwrite that cannot be read for its quarantine snapshot
    #[arg(long)]
    pub accept_data_loss: bool,
    /// You made sure SITE (the side being left) is off and stays off: go on although Lifeboat cannot
    /// stop it itself (it cannot be reached, or refuses). Recorded in the journal with your name
    #[arg(long, value_name = "SITE")]
    pub fenced_by_hand: Option<String>,
    /// Recover from an incomplete snapshot (one that lists items it could not back up): the final
    /// backup when it is incomplete, else the newest snapshot whether complete or not
    #[arg(long)]
    pub accept_incomplete: bool,
    /// Go on although the site taking over has fewer CPUs or less memory than the app's workloads
    /// ask for (checked before anything is fenced)
    #[arg(long)]
    pub ignore_capacity: bool,
    /// Longest wait for the app to become healthy, in seconds
    #[arg(long, default_value_t = 300)]
    pub health_timeout: u64,
    /// On a plan with `coordination`: act without taking its leadership, when no etcd endpoint
    /// answers (nobody can lead then); refused while etcd answers
    #[arg(long)]
    pub without_coordination: bool,
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Back up file trees (regular files, directories, links, devices, with all metadata)
    Files {
        /// Files and directories to back up
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Tag the snapshot (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Read every file, ignoring the previous snapshot's metadata
        #[arg(long, conflicts_with = "parent")]
        no_parent: bool,
        /// Compare against this snapshot instead of the newest one of the same paths
        #[arg(long)]
        parent: Option<String>,
    },
    /// Take an etcd snapshot through etcd's maintenance API (its integrity hash checked)
    Etcd {
        /// etcd client URL (http://HOST:2379 or https://HOST:2379)
        #[arg(long)]
        endpoints: String,
        /// CA certificate (PEM) for https
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Client certificate (PEM)
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Client key (PEM)
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Tag the snapshot (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Back up a Kubernetes cluster's objects (every served resource, found by discovery)
    Kube {
        /// Kubeconfig file (default: KUBECONFIG, else ~/.kube/config)
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Context (default: the kubeconfig's current context)
        #[arg(long)]
        context: Option<String>,
        /// Only these namespaces (repeatable); cluster-scoped objects they refer to come along
        #[arg(short = 'n', long = "namespace")]
        namespaces: Vec<String>,
        /// Every namespace, the system ones (kube-system, kube-public, kube-node-lease) too: the
        /// default without -n (kept for scripts written when it was not)
        #[arg(short = 'A', long, conflicts_with = "namespaces")]
        all_namespaces: bool,
        /// Without -n: leave this namespace out (repeatable), e.g. kube-system
        #[arg(long = "exclude-namespace", value_name = "NS", conflicts_with = "namespaces")]
        exclude_namespaces: Vec<String>,
        /// Label selector (app=web,tier!=db) for every listed object
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// Only these kinds (configmaps, Deployment, deployments.apps; repeatable or comma-separated)
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        /// Never these kinds (repeatable or comma-separated)
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Do not read the files of PersistentVolumeClaims
        #[arg(long)]
        no_volumes: bool,
        /// Image of the helper pods that read volumes (needs sh, sleep and tar)
        #[arg(long, default_value = lifeboat_kube::volumes::DEFAULT_HELPER_IMAGE)]
        helper_image: String,
        /// Tag the snapshot (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Back up a Docker engine's applications: containers, Swarm services, stacks, configs,
    /// secrets, networks, node labels and named volumes with their data
    Docker {
        /// Engine address: unix:///PATH or tcp://HOST:PORT (default: DOCKER_HOST, else the local socket)
        #[arg(long)]
        host: Option<String>,
        /// Only containers and services with this label, KEY=VALUE or KEY (repeatable; all must match)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Only this stack (com.docker.stack.namespace) or Compose project
        #[arg(long)]
        stack: Option<String>,
        /// Do not read volume data (volumes are still described)
        #[arg(long)]
        no_volumes: bool,
        /// Tag the snapshot (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (or a unique prefix), or `latest`
    pub snapshot: String,
    /// Where to: files:DIR, docker[:HOST] (default engine: DOCKER_HOST, else the local socket), or
    /// kube[:CONTEXT]
    #[arg(long)]
    pub to: String,
    /// Replicas of every replicated service or scalable workload; with Docker, 0 also leaves
    /// containers created but not started
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Kubernetes: kubeconfig file (default: KUBECONFIG, else ~/.kube/config)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: restore namespace A as B, with the references that carry it (repeatable)
    #[arg(long = "namespace-map", value_name = "A=B")]
    pub namespace_map: Vec<String>,
    /// Kubernetes: restore storage class A as B (repeatable)
    #[arg(long = "storage-class-map", value_name = "A=B")]
    pub storage_class_map: Vec<String>,
    /// Docker: prefix for the name of every restored object (references follow)
    #[arg(long, default_value = "")]
    pub name_prefix: String,
    /// Docker, with --name-prefix: cut the copy off from the network as a drill's copy is (one
    /// internal network; published TCP ports forwarded by a gateway container PREFIXgateway)
    #[arg(long, requires = "name_prefix")]
    pub isolated: bool,
    /// What to do with objects that already exist (Docker default: refuse the restore; Kubernetes
    /// default: leave them and report them; update on Kubernetes also replaces a claim's files)
    #[arg(long, value_parser = ["skip", "update"])]
    pub existing: Option<String>,
    /// Print every change that would be made, change nothing (Kubernetes: server-side dry run)
    #[arg(long)]
    pub dry_run: bool,
    /// Docker: a secret's value, NAME=@FILE (for secrets not captured at backup, or to override)
    #[arg(long = "secret", value_name = "NAME=@FILE")]
    pub secrets: Vec<String>,
    /// Docker: a `docker save` archive that provides images missing on the target
    #[arg(long, value_name = "FILE")]
    pub load_images: Option<PathBuf>,
    /// Create volumes (Docker) or claims (Kubernetes) but do not write their data
    #[arg(long)]
    pub no_volume_data: bool,
    /// Kubernetes: image of the helper pods that write volume data (needs sh, sleep and tar)
    #[arg(long, default_value = lifeboat_kube::volumes::DEFAULT_HELPER_IMAGE)]
    pub helper_image: String,
    /// files:DIR of a docker or kube snapshot: also recreate device nodes and set-uid/set-gid bits
    /// (left out by default: outside the container they are no longer confined)
    #[arg(long)]
    pub allow_special: bool,
}

#[derive(Subcommand, Debug)]
pub enum HelperCmd {
    /// Wait until stopped
    Sleep,
    /// Print the files of a directory as JSON {name: base64}
    ReadFiles { dir: PathBuf },
    /// Settle a volume before a new copy is written into it (finish an interrupted switch, remove leftovers)
    VolumePrepare { dir: PathBuf },
    /// Switch a volume to its complete new copy in DIR/.lifeboat-new
    VolumeCommit { dir: PathBuf },
    /// A drill gateway: forward TCP port LISTEN to HOST:PORT, for each LISTEN=HOST:PORT
    Forward { maps: Vec<String> },
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
    /// With --prune: keep pack files younger than this
    #[arg(long, default_value = "2h", value_parser = lifeboat_plan::parse_duration)]
    pub min_age: std::time::Duration,
    /// Report what would be removed, remove nothing
    #[arg(long)]
    pub dry_run: bool,
}
