//! Volume data of PersistentVolumeClaims, through short-lived helper pods and the exec API (no
//! agent on the nodes).
//!
//! Backup: a helper pod mounts the claim read-only (on the node of a pod that uses the claim, so
//! node-local volumes work) and `tar cf - -C /data .` streams over exec into the repository, chunked
//! and deduplicated like any file tree. Restore: a helper pod mounts the claim, `tar xf` takes the
//! stored tree over exec's stdin into a new copy beside the old contents, and only a complete copy
//! is switched to (see [`Cluster::write_pvc`]). The helper image must have `sh`, `sleep`, `tar`,
//! `cp`, `mv`, `rm`, `find` and `stat` (busybox does); pods are labelled `io.lifeboat.helper=1` and
//! removed after use.
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, AttachedProcess, DeleteParams, PostParams};

use crate::stall::Stalling;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use lifeboat_fs::archive::{removed_paths, tar_to_tree, tree_delta_to_tar, TarOutcome, VecWrite};
use lifeboat_fs::backup::Progress;
use lifeboat_fs::listing::{parse_stat_line, tree_digest, ListingDigest, STAT_FORMAT};
use lifeboat_model::Node;
use lifeboat_repo::Repository;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::io::SyncIoBridge;

use crate::{Cluster, KubeError};

/// Shell functions of the helpers that write a claim (see [`Cluster::write_pvc`]): the claim's
/// top holds `.lifeboat-new` (the new copy), `.lifeboat-old` (old entries during a switch) and
/// `.lifeboat-swap` (present while a switch runs: `1` while old entries move out, `2` while new
/// ones move in). Every move is a rename within the claim's file system. `rm`, `mv`, `cp` and
/// `stat` may be missing where only busybox is (the lab's images): then busybox's own.
const SWITCH_FNS: &str = r#"cd /data || exit 1
N=.lifeboat-new O=.lifeboat-old M=.lifeboat-swap
rmf() { rm -rf -- "$@" 2>/dev/null || busybox rm -rf -- "$@"; }
mvf() { mv -- "$@" 2>/dev/null || busybox mv -- "$@"; }
cpf() { cp "$@" 2>/dev/null || busybox cp "$@"; }
statf() { stat "$@" 2>/dev/null || busybox stat "$@"; }
mark() { echo "$1" > "$M.tmp" && mvf "$M.tmp" "$M" && sync; }
each() {
  for g in * .[!.]* ..?*; do
    case "$g" in "$N"|"$O"|"$M"|"$M.tmp") continue;; esac
    if [ -e "$g" ] || [ -L "$g" ]; then "$1" "$g" || return 1; fi
  done
}
to_old() { mvf "$1" "$O/"; }
to_top() { mvf "$1" ../; }
switch() {
  if [ "$(cat "$M")" = 1 ]; then
    mkdir -p "$O" && each to_old && mark 2 || return 1
  fi
  cd "$N" || return 1
  each to_top || { cd /data; return 1; }
  cd /data
  chmod "$(statf -c %a "$N")" . || echo "cannot set the mode of the claim's top directory" >&2
  chown "$(statf -c %u:%g "$N")" . 2>/dev/null || echo "cannot set the owner of the claim's top directory" >&2
  sync
  rmf "$M" && rmf "$N" "$O"
}
settle() {
  if [ -f "$M" ]; then switch || return 1; fi
  rmf "$N" "$O" "$M.tmp"
}
"#;

/// Writes the new copy: settles what an earlier write left, then reads from stdin a mode line
/// (`full` or `delta`), paths to remove (delta: from a copy of what the claim holds, made with
/// hard links where the file system allows), one per line, ended by an empty line, then a tar
/// stream into `.lifeboat-new`. `read` takes stdin a byte at a time, so the tar stream is left
/// whole for `tar` (which replaces a file by unlinking it: a hard-linked old file is untouched).
const PREPARE_AND_UNTAR: &str = r#"settle || exit 1
IFS= read -r mode || exit 1
mkdir "$N" || exit 1
copy() { cpf -al "$1" "$N/" || { rmf "$N/$1"; cpf -a "$1" "$N/"; }; }
if [ "$mode" = delta ]; then
  chmod "$(statf -c %a .)" "$N"; chown "$(statf -c %u:%g .)" "$N" 2>/dev/null
  each copy || exit 1
fi
cd "$N" || exit 1
while IFS= read -r f; do
  [ -z "$f" ] && break
  [ "$mode" = delta ] && { rmf "./$f" || exit 1; }
done
exec tar xf - -C /data/.lifeboat-new"#;

/// Switches the claim to its complete new copy.
const COMMIT: &str = r#"[ -d "$N" ] || { echo "no new copy to switch to" >&2; exit 1; }
sync
mark 1 || exit 1
switch"#;

/// Settles the claim: finishes an interrupted switch, removes a copy never switched to.
const SETTLE: &str = "settle";

/// Settles the claim, then lists every entry below its top (Lifeboat's own work entries left
/// out) with `stat -c` [`STAT_FORMAT`], for [`ListingDigest`].
fn list_script() -> String {
    format!(
        r#"settle || exit 1
if command -v stat >/dev/null 2>&1; then S=stat; else S="busybox stat"; fi
exec find . -xdev \( -path "./$N" -o -path "./$O" -o -path "./$M" -o -path "./$M.tmp" \) -prune -o ! -path . -exec $S -c '{STAT_FORMAT}' {{}} +"#
    )
}

/// What [`Cluster::write_pvc`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimWrite {
    /// Bytes of file data sent.
    pub bytes: u64,
    /// Only what changed since the base was sent.
    pub delta: bool,
    /// Why a base was given but everything was written: the claim did not hold the base.
    pub full_because: Option<String>,
}

/// The default helper image.
pub const DEFAULT_HELPER_IMAGE: &str = "busybox:1.36";

/// How many helper pods a claim's read or a helper's start tries when one is preempted or evicted.
const HELPER_TRIES: u32 = 3;

/// How long a helper pod may take to start when nothing says it cannot (a slow image pull).
const HELPER_START_LIMIT: Duration = Duration::from_secs(120);
/// How long a helper pod may stay unschedulable for want of room or a matching node.
const UNSCHEDULABLE_LIMIT: Duration = Duration::from_secs(10);
/// How long a helper pod may stay unschedulable while its claim binds: a claim restored a moment
/// ago waits for its provisioner (the scheduler says "unbound immediate PersistentVolumeClaims"
/// meanwhile), which on a loaded cluster or a cloud disk takes tens of seconds.
const BINDING_LIMIT: Duration = Duration::from_secs(90);

/// Container waiting reasons that mean the helper will not start by waiting longer.
const HOPELESS_WAITING: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Whether a failed create of a helper pod may succeed when tried again: the API server is busy,
/// or a namespace this restore just made has no default service account yet. Quota and limit
/// refusals (also 403) do not pass by waiting.
fn transient_create_error(e: &kube::Error) -> bool {
    match crate::status_code(e) {
        Some(c) if c >= 500 || c == 429 => true,
        Some(403) => {
            let m = crate::short_error(e).to_ascii_lowercase();
            !m.contains("quota") && (m.contains("serviceaccount") || m.contains("service account"))
        }
        _ => false,
    }
}

/// The scheduler's message when it reports the pod unschedulable.
fn unschedulable_reason(pod: &Value) -> Option<String> {
    let conds = pod.pointer("/status/conditions")?.as_array()?;
    conds.iter().find_map(|c| {
        (c.get("type").and_then(Value::as_str) == Some("PodScheduled")
            && c.get("status").and_then(Value::as_str) == Some("False")
            && c.get("reason").and_then(Value::as_str) == Some("Unschedulable"))
        .then(|| c.get("message").and_then(Value::as_str).unwrap_or_default().to_string())
    })
}

/// Whether the scheduler's message says the pod waits for its claims to bind.
fn waits_for_binding(unschedulable: &str) -> bool {
    unschedulable.contains("unbound immediate PersistentVolumeClaims")
}

/// Whether the scheduler's message says no node has the CPU or memory the pod requests.
fn no_room(unschedulable: &str) -> bool {
    unschedulable.contains("Insufficient cpu") || unschedulable.contains("Insufficient memory")
}

/// A helper pod that went before it ran, or while it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gone {
    why: String,
    /// The node's kubelet refused it: the pods there already request all of a resource.
    node_full: bool,
}

/// Why a helper pod (as the API server reports it) is gone or going, if it is: preempted or
/// evicted (a pod of higher priority needed the node), refused by the kubelet of a node whose
/// pods already request all its CPU or memory (reason `OutOfcpu`, `OutOfmemory`: a pod pinned to
/// a node passes no scheduler), or being deleted.
fn why_gone(p: &Pod) -> Option<Gone> {
    let status = p.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or_default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let node_full = matches!(reason, "OutOfcpu" | "OutOfmemory");
    if matches!(reason, "Preempted" | "Evicted") || node_full {
        let msg = status.and_then(|s| s.message.as_deref()).unwrap_or_default();
        Some(Gone {
            why: format!("helper pod {name}: {reason}: {msg}"),
            node_full,
        })
    } else if p.metadata.deletion_timestamp.is_some() {
        Some(Gone {
            why: format!("helper pod {name} is being deleted"),
            node_full: false,
        })
    } else {
        None
    }
}

/// Why a helper pod (as the API server reports it) will not start, if something says so: a
/// container waiting for a reason that waiting does not cure (an image that cannot be pulled or
/// is not on the node), the pod failed, or unschedulable for `unschedulable_for` beyond
/// [`UNSCHEDULABLE_LIMIT`] ([`BINDING_LIMIT`] while its claims bind).
fn helper_failure(pod: &Value, unschedulable_for: Duration) -> Option<String> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for c in statuses {
        if let Some(w) = c.pointer("/state/waiting") {
            let reason = w.get("reason").and_then(Value::as_str).unwrap_or_default();
            if HOPELESS_WAITING.contains(&reason) {
                let msg = w.get("message").and_then(Value::as_str).unwrap_or_default();
                return Some(if msg.is_empty() {
                    format!("container waiting: {reason}")
                } else {
                    format!("container waiting: {reason}: {msg}")
                });
            }
        }
        if let Some(t) = c.pointer("/state/terminated") {
            let reason = t.get("reason").and_then(Value::as_str).unwrap_or("terminated");
            let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or_default();
            return Some(format!(
                "container ended: {reason} (exit code {code}); the image needs sh and sleep"
            ));
        }
    }
    if pod.pointer("/status/phase").and_then(Value::as_str) == Some("Failed") {
        let msg = pod
            .pointer("/status/message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Some(format!("pod failed: {msg}"));
    }
    if let Some(msg) = unschedulable_reason(pod) {
        let limit = if waits_for_binding(&msg) {
            BINDING_LIMIT
        } else {
            UNSCHEDULABLE_LIMIT
        };
        if unschedulable_for >= limit {
            return Some(format!("Unschedulable for {} s: {msg}", unschedulable_for.as_secs()));
        }
    }
    None
}

struct Writer<W: std::io::Write>(W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: std::io::Write> VecWrite for Writer<W> {}

impl Cluster {
    fn helper_err(&self, what: String) -> impl FnOnce(String) -> KubeError + '_ {
        move |reason| KubeError::Api {
            context: self.context.clone(),
            retry: crate::Retry::Later,
            what,
            reason,
        }
    }

    /// The node a running pod that mounts `claim` is on, if any.
    fn claim_node(&self, ns: &str, claim: &str) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = self.block_on(pods.list(&Default::default())).ok()?;
        list.items.into_iter().find_map(|p| {
            let spec = p.spec?;
            let uses = spec.volumes.unwrap_or_default().iter().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim)
            });
            if uses {
                spec.node_name
            } else {
                None
            }
        })
    }

    /// Starts a helper pod with `claim` at /data and waits until it runs; returns its name. One
    /// that is preempted or evicted before it runs (a pod of higher priority took its place) is
    /// replaced, up to [`HELPER_TRIES`] times. One the node's kubelet refused because the pods on
    /// the node already request all its CPU or memory (a helper of a claim in use is pinned to
    /// that pod's node, past the scheduler) is replaced by one that requests nothing.
    fn start_helper(&self, ns: &str, claim: &str, image: &str, read_only: bool) -> Result<String, KubeError> {
        let mut last = String::new();
        let mut requests = true;
        for _ in 0..HELPER_TRIES {
            match self.start_helper_once(ns, claim, image, read_only, requests)? {
                Ok(name) => return Ok(name),
                Err(gone) => {
                    requests &= !gone.node_full;
                    last = gone.why;
                }
            }
        }
        Err(self.helper_err(format!("helper pod for claim {ns}/{claim}"))(format!(
            "gone {HELPER_TRIES} times before it ran; last: {last}"
        )))
    }

    /// [`Self::start_helper`] once: `Ok(Err(gone))` when the pod went before it ran. Without
    /// `requests` the helper asks for no CPU and memory (its limits stay).
    fn start_helper_once(
        &self,
        ns: &str,
        claim: &str,
        image: &str,
        read_only: bool,
        requests: bool,
    ) -> Result<Result<String, Gone>, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "helper", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "sleep 3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": read_only}],
                // PodSecurity "baseline": root (it must give restored files their owners), but
                // only the capabilities that takes, no privilege escalation, the runtime's
                // default seccomp profile. Requests and limits, for namespaces whose quota asks
                // (zero requests still name both).
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "2", "memory": "512Mi"},
                },
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        });
        if !requests {
            spec["containers"][0]["resources"]["requests"] = json!({"cpu": "0", "memory": "0"});
        }
        if let Some(node) = self.claim_node(ns, claim) {
            spec["nodeName"] = Value::String(node);
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "lifeboat-helper-", "namespace": ns, "labels": {crate::HELPER_LABEL: "1"}},
            "spec": spec,
        }))
        .expect("a valid pod");
        let what = format!("helper pod for claim {ns}/{claim}");
        // A namespace this restore just made gets its default service account a moment later.
        let started = Instant::now();
        let created = loop {
            match self.block_on(pods.create(&PostParams::default(), &pod)) {
                Ok(p) => break p,
                Err(e) if started.elapsed() < Duration::from_secs(60) && transient_create_error(&e) => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(self.helper_err(what.clone())(format!(
                        "cannot be created (image {image}): {}",
                        crate::short_error(&e)
                    )))
                }
            }
        };
        let name = created.metadata.name.unwrap_or_default();
        let started = Instant::now();
        let mut unschedulable_since: Option<Instant> = None;
        loop {
            // One read per round: whether the pod is gone and why it fails come from one answer
            // (the kubelet may refuse it between two reads).
            let p = match self.block_on(pods.get(&name)) {
                Ok(p) => p,
                Err(e) if crate::status_code(&e) == Some(404) => {
                    return Ok(Err(Gone {
                        why: format!("helper pod {name} was deleted"),
                        node_full: false,
                    }))
                }
                Err(e) => return Err(self.api_err(what.clone())(e)),
            };
            if let Some(gone) = why_gone(&p) {
                // Preempted, evicted or refused by a full node: another one.
                self.remove_helper(ns, &name);
                return Ok(Err(gone));
            }
            let v = serde_json::to_value(&p).unwrap_or_default();
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase == "Running" {
                return Ok(Ok(name));
            }
            let unschedulable = unschedulable_reason(&v);
            if let Some(msg) = unschedulable.as_deref().filter(|m| requests && no_room(m)) {
                // Every node's pods already request all its CPU or memory: one that asks for none.
                self.remove_helper(ns, &name);
                return Ok(Err(Gone {
                    why: format!("helper pod {name}: Unschedulable: {msg}"),
                    node_full: true,
                }));
            }
            let unschedulable = unschedulable.is_some();
            let since = match (unschedulable, unschedulable_since) {
                (false, _) => {
                    unschedulable_since = None;
                    Duration::ZERO
                }
                (true, None) => {
                    unschedulable_since = Some(Instant::now());
                    Duration::ZERO
                }
                (true, Some(t)) => t.elapsed(),
            };
            let failure = helper_failure(&v, since).or_else(|| {
                (started.elapsed() > HELPER_START_LIMIT).then(|| {
                    format!(
                        "did not start within {} s (phase {phase:?})",
                        HELPER_START_LIMIT.as_secs()
                    )
                })
            });
            if let Some(why) = failure {
                self.remove_helper(ns, &name);
                return Err(self.helper_err(what)(format!("image {image}: {why}")));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Why the helper pod `name` is gone or going, if it is (see [`why_gone`]).
    fn helper_gone(&self, ns: &str, name: &str) -> Option<Gone> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match self.block_on(pods.get(name)) {
            Err(e) if crate::status_code(&e) == Some(404) => Some(Gone {
                why: format!("helper pod {name} was deleted"),
                node_full: false,
            }),
            Err(_) => None,
            Ok(p) => why_gone(&p),
        }
    }

    fn remove_helper(&self, ns: &str, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let _ = self.block_on(pods.delete(name, &DeleteParams::default().grace_period(0)));
    }

    /// Reads a bound claim's files into the repository.
    /// A helper pod preempted or evicted while it reads is replaced and the claim read again
    /// (up to [`HELPER_TRIES`] times): what the first one stored is only unreferenced data.
    pub fn read_pvc(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        image: &str,
        progress: &Progress,
    ) -> Result<TarOutcome, KubeError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let pod = self.start_helper(ns, claim, image, true)?;
            let result = self.read_pod(repo, ns, claim, &pod, progress);
            let gone = match &result {
                Err(_) if tries < HELPER_TRIES => self.helper_gone(ns, &pod),
                _ => None,
            };
            self.remove_helper(ns, &pod);
            if gone.is_none() {
                return result;
            }
        }
    }

    fn read_pod(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        pod: &str,
        progress: &Progress,
    ) -> Result<TarOutcome, KubeError> {
        let what = format!("read claim {ns}/{claim}");
        let ap = AttachParams::default().stdin(false).stdout(true).stderr(true);
        let stall = lifeboat_model::reach::stream_stall();
        let command = ["tar", "cf", "-", "-C", "/data", "."].map(String::from);
        let mut proc = self.start_exec(ns, pod, command, &ap, &what, stall)?;
        let stdout = Stalling::new(proc.stdout().expect("stdout was asked for"), stall, what.clone());
        let status = proc.take_status();
        let reader = SyncIoBridge::new_with_handle(stdout, self.rt.handle().clone());
        let out = tar_to_tree(repo, reader, 0, &format!("claim {ns}/{claim}"), progress);
        let status = self.exec_status(status, stall, &what);
        if let Ok(Some(s)) = &status {
            if s.status.as_deref() != Some("Success") {
                return Err(self.helper_err(what)(format!(
                    "tar in the helper pod failed: {}",
                    s.message.clone().unwrap_or_default()
                )));
            }
        }
        // A stream that broke says why before a missing status does.
        let out = out?;
        status?;
        Ok(out)
    }

    /// Starts `command` in the helper `pod`; an exec that has not started within `stall` fails,
    /// named by `what`.
    fn start_exec<const N: usize>(
        &self,
        ns: &str,
        pod: &str,
        command: [String; N],
        ap: &AttachParams,
        what: &str,
        stall: Duration,
    ) -> Result<AttachedProcess, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        self.block_on(async { tokio::time::timeout(stall, pods.exec(pod, command, ap)).await })
            .map_err(|_| {
                self.helper_err(what.to_string())(format!("the exec did not start within {} s", stall.as_secs()))
            })?
            .map_err(self.api_err(what.to_string()))
    }

    /// The exit status of a helper's exec, waited for at most `stall` after its stream ended (no
    /// status in that time is an error: the helper's `tar` may not have finished).
    fn exec_status(
        &self,
        status: Option<impl std::future::Future<Output = Option<Status>>>,
        stall: Duration,
        what: &str,
    ) -> Result<Option<Status>, KubeError> {
        let Some(s) = status else { return Ok(None) };
        self.block_on(async { tokio::time::timeout(stall, s).await })
            .map_err(|_| self.helper_err(what.to_string())(format!("no exit status within {} s", stall.as_secs())))
    }

    /// Writes a stored tree into a claim (which must be bound or bindable), so that the claim
    /// holds exactly that tree. With `base`, the tree the claim is believed to hold now, only what
    /// changed is sent and what is gone removed, once the claim's listing (see
    /// [`lifeboat_fs::listing`]) showed that it holds `base`; a claim that holds anything else (a
    /// standby changed by hand, a write of someone else's) or that cannot be listed gets
    /// everything, and [`ClaimWrite::full_because`] says why. Without `base`, everything is sent.
    ///
    /// The claim's old contents stay whole until the new copy is complete: the helper writes into
    /// `.lifeboat-new` at the claim's top (delta: a hard-linked copy of what the claim holds, with
    /// the changes applied), and only when the whole stream arrived and `tar` succeeded does a
    /// second command switch (sync, record the switch, move the old entries aside and the new ones
    /// into place by rename, remove the old). A stream that breaks (a damaged blob, a full disk, a
    /// cut connection) leaves the claim as it was; a switch interrupted by a crash is finished by
    /// the next write. Needs room for both copies (a delta: for what changed) while it runs.
    pub fn write_pvc(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        image: &str,
        root: &Node,
        base: Option<&Node>,
    ) -> Result<ClaimWrite, KubeError> {
        // Paths with a newline cannot be listed one per line: then everything is written.
        let removals = match base {
            Some(b) => Some(removed_paths(repo, root, b)?).filter(|r| !r.iter().any(|p| p.contains(&b'\n'))),
            None => None,
        };
        let pod = self.start_helper(ns, claim, image, false)?;
        let result = (|| {
            let mut delta = removals.as_ref().and(base);
            let mut full_because = None;
            if let Some(b) = delta {
                let want = tree_digest(repo, b)?;
                let why = match self.claim_digest(ns, claim, &pod)? {
                    Ok(held) if held == want => None,
                    Ok(held) => Some(format!(
                        "it held other files than the snapshot staged on it ({} entries, the snapshot {})",
                        held.entries, want.entries
                    )),
                    Err(why) => Some(why),
                };
                if why.is_some() {
                    delta = None;
                    full_because = why;
                }
            }
            let bytes = self.write_pod(repo, ns, claim, &pod, root, delta, delta.and(removals.as_deref()))?;
            self.helper_script(ns, claim, &pod, COMMIT)?;
            Ok(ClaimWrite {
                bytes,
                delta: delta.is_some(),
                full_because,
            })
        })();
        if result.is_err() {
            // The partial copy goes; the claim keeps what it had.
            let _ = self.helper_script(ns, claim, &pod, SETTLE);
        }
        self.remove_helper(ns, &pod);
        result
    }

    /// The digest of what the claim holds, listed by the helper `pod` (after settling an
    /// interrupted switch); `Ok(Err(why))` when the helper could not list it.
    fn claim_digest(&self, ns: &str, claim: &str, pod: &str) -> Result<Result<ListingDigest, String>, KubeError> {
        use std::io::BufRead;
        let what = format!("list claim {ns}/{claim}");
        let ap = AttachParams::default().stdin(false).stdout(true).stderr(false);
        let stall = lifeboat_model::reach::stream_stall();
        let command = [
            "sh".to_string(),
            "-c".to_string(),
            format!("{SWITCH_FNS}{}", list_script()),
        ];
        let mut proc = self.start_exec(ns, pod, command, &ap, &what, stall)?;
        let stdout = Stalling::new(proc.stdout().expect("stdout was asked for"), stall, what.clone());
        let status = proc.take_status();
        let reader = std::io::BufReader::new(SyncIoBridge::new_with_handle(stdout, self.rt.handle().clone()));
        let mut digest = ListingDigest::default();
        let mut unreadable = None;
        for line in reader.split(b'\n') {
            let line = line.map_err(|e| self.helper_err(what.clone())(format!("the listing broke off: {e}")))?;
            match parse_stat_line(&line) {
                Some(e) => digest.add(&e),
                None => {
                    unreadable.get_or_insert_with(|| String::from_utf8_lossy(&line).into_owned());
                }
            }
        }
        if let Some(s) = self.exec_status(status, stall, &what)? {
            if s.status.as_deref() != Some("Success") {
                return Ok(Err(format!(
                    "the helper could not list it: {}",
                    s.message.unwrap_or_default()
                )));
            }
        }
        Ok(match unreadable {
            Some(l) => Err(format!("the helper's listing has a line Lifeboat cannot read: {l:?}")),
            None => Ok(digest),
        })
    }

    /// Runs one of the claim scripts (after [`SWITCH_FNS`]) in the helper pod.
    fn helper_script(&self, ns: &str, claim: &str, pod: &str, script: &str) -> Result<(), KubeError> {
        let what = format!("write claim {ns}/{claim}");
        let out = self.exec(
            ns,
            pod,
            None,
            &["sh".into(), "-c".into(), format!("{SWITCH_FNS}{script}")],
            Duration::from_secs(3600),
        )?;
        if out.code != 0 {
            return Err(self.helper_err(what)(format!(
                "the helper's switch to the new copy failed (exit {}): {}",
                out.code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write_pod(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        pod: &str,
        root: &Node,
        base: Option<&Node>,
        removals: Option<&[Vec<u8>]>,
    ) -> Result<u64, KubeError> {
        let what = format!("write claim {ns}/{claim}");
        let ap = AttachParams::default().stdin(true).stdout(false).stderr(true);
        let stall = lifeboat_model::reach::stream_stall();
        let command = [
            "sh".to_string(),
            "-c".to_string(),
            format!("{SWITCH_FNS}{PREPARE_AND_UNTAR}"),
        ];
        let mut proc = self.start_exec(ns, pod, command, &ap, &what, stall)?;
        let stdin = Stalling::new(proc.stdin().expect("stdin was asked for"), stall, what.clone());
        let status = proc.take_status();
        let mut writer = Writer(SyncIoBridge::new_with_handle(stdin, self.rt.handle().clone()));
        let mut list = if base.is_some() {
            b"delta\n".to_vec()
        } else {
            b"full\n".to_vec()
        };
        for p in removals.unwrap_or_default() {
            list.extend_from_slice(p);
            list.push(b'\n');
        }
        list.push(b'\n');
        let written = std::io::Write::write_all(&mut writer, &list)
            .map_err(|e| self.helper_err(what.clone())(format!("cannot write to the helper: {e}")))
            .and_then(|()| Ok(tree_delta_to_tar(repo, root, base, ".", &mut writer)?));
        // Closing stdin ends tar's input.
        let mut stdin = writer.0.into_inner();
        let _ = self.block_on(stdin.shutdown());
        drop(stdin);
        let status = self.exec_status(status, stall, &what);
        let bytes = written?;
        let status = status?;
        if let Some(s) = status.filter(|s| s.status.as_deref() != Some("Success")) {
            return Err(self.helper_err(what)(format!(
                "tar in the helper pod failed: {}",
                s.message.unwrap_or_default()
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "lifeboat-helper-x"}, "status": status})).unwrap()
    }

    /// Regression (CI, corpus): a helper pinned to a node whose pods requested 1992 of its 2000
    /// millicores was refused by the kubelet and the claim was not backed up.
    #[test]
    fn a_helper_refused_by_a_full_node_is_gone_and_asks_for_room() {
        let refused = pod(json!({
            "phase": "Failed", "reason": "OutOfcpu",
            "message": "Pod Node didn't have enough resource: cpu, requested: 100, used: 1992, capacity: 2000",
        }));
        let gone = why_gone(&refused).expect("gone");
        assert!(gone.node_full);
        assert!(
            gone.why.contains("OutOfcpu") && gone.why.contains("used: 1992"),
            "{}",
            gone.why
        );
        assert!(
            why_gone(&pod(json!({"phase": "Failed", "reason": "OutOfmemory"})))
                .unwrap()
                .node_full
        );
        let preempted = why_gone(&pod(json!({"phase": "Failed", "reason": "Preempted"}))).unwrap();
        assert!(!preempted.node_full);
        assert_eq!(why_gone(&pod(json!({"phase": "Running"}))), None);
        assert_eq!(why_gone(&pod(json!({"phase": "Failed", "reason": "Error"}))), None);
        assert!(no_room("0/1 nodes are available: 1 Insufficient cpu."));
        assert!(!no_room(
            "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims."
        ));
    }

    /// Runs a claim script with `dir` standing for the claim, `stdin` as its input.
    fn run(dir: &Path, script: &str, stdin: &[u8]) -> (bool, String) {
        let text = format!("{SWITCH_FNS}{script}").replace("/data", dir.to_str().unwrap());
        let mut c = Command::new("sh")
            .args(["-c", &text])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        let _ = std::io::Write::write_all(&mut input, stdin);
        drop(input);
        let o = c.wait_with_output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// Path and content ("<dir>" for directories) of everything under `dir`.
    fn listing(dir: &Path) -> Vec<(String, String)> {
        fn walk(top: &Path, d: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(top).unwrap().display().to_string();
                if p.is_dir() {
                    out.push((rel, "<dir>".into()));
                    walk(top, &p, out);
                } else {
                    out.push((rel, std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn tar_of(files: &[(&str, &str)], truncate: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, content.as_bytes()).unwrap();
        }
        let mut t = b.into_inner().unwrap();
        if truncate {
            t.truncate(600);
        }
        t
    }

    fn claim() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("data/items"), "old").unwrap();
        std::fs::write(d.path().join("deleted-later"), "private").unwrap();
        std::fs::write(d.path().join(".hidden"), "old").unwrap();
        d
    }

    fn write(d: &Path, head: &str, tar: &[u8]) -> bool {
        let mut input = head.as_bytes().to_vec();
        input.extend_from_slice(tar);
        let (ok, err) = run(d, PREPARE_AND_UNTAR, &input);
        if !ok {
            let (settled, e) = run(d, SETTLE, b"");
            assert!(settled, "{e}");
            return false;
        }
        let (ok, err2) = run(d, COMMIT, b"");
        assert!(ok, "{err}{err2}");
        true
    }

    #[test]
    fn the_claim_listing_has_one_readable_line_per_entry_and_leaves_out_lifeboats_own() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a b.txt"), "x").unwrap();
        std::fs::write(d.path().join(".hidden"), "yy").unwrap();
        std::fs::create_dir(d.path().join(".lifeboat-new")).unwrap();
        std::fs::write(d.path().join(".lifeboat-new/partial"), "z").unwrap();
        let text = format!("{SWITCH_FNS}{}", list_script()).replace("/data", d.path().to_str().unwrap());
        let o = Command::new("sh").args(["-c", &text]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut seen: Vec<(String, u64)> = o
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let e = lifeboat_fs::listing::parse_stat_line(l).expect("a stat line");
                (
                    String::from_utf8_lossy(e.path).into_owned(),
                    if e.kind == lifeboat_model::NodeKind::File {
                        e.size
                    } else {
                        0
                    },
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [(".hidden".into(), 2), ("sub".into(), 0), ("sub/a b.txt".into(), 1)]
        );
        assert!(
            !d.path().join(".lifeboat-new").exists(),
            "a copy never switched to is settled first"
        );
    }

    #[test]
    fn a_full_write_leaves_exactly_the_new_tree() {
        let d = claim();
        let t = tar_of(&[("data/items", "new"), ("added", "new")], false);
        assert!(write(d.path(), "full\n\n", &t));
        assert_eq!(
            listing(d.path()),
            [("added", "new"), ("data", "<dir>"), ("data/items", "new")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .to_vec()
        );
    }

    #[test]
    fn a_broken_stream_leaves_the_claim_as_it_was() {
        let d = claim();
        let before = listing(d.path());
        let t = tar_of(&[("big", &"x".repeat(5000)), ("z.txt", "new")], true);
        assert!(!write(d.path(), "full\n\n", &t), "a truncated stream must fail");
        assert_eq!(listing(d.path()), before);
    }

    #[test]
    fn a_delta_write_removes_changes_and_keeps_the_rest() {
        let d = claim();
        // A second name for the old file: the write must never change the old file itself.
        let outside = tempfile::tempdir_in(d.path().parent().unwrap()).unwrap();
        std::fs::hard_link(d.path().join("data/items"), outside.path().join("items")).unwrap();
        let t = tar_of(&[("data/items", "changed"), ("added", "new")], false);
        assert!(write(d.path(), "delta\ndeleted-later\n\n", &t));
        assert_eq!(
            listing(d.path()),
            [
                (".hidden", "old"),
                ("added", "new"),
                ("data", "<dir>"),
                ("data/items", "changed")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .to_vec()
        );
        assert_eq!(std::fs::read_to_string(outside.path().join("items")).unwrap(), "old");
    }

    #[test]
    fn a_delta_stream_that_breaks_changes_nothing_even_through_hard_links() {
        let d = claim();
        let before = listing(d.path());
        let t = tar_of(&[("data/items", &"y".repeat(5000))], true);
        assert!(!write(d.path(), "delta\ndeleted-later\n\n", &t));
        assert_eq!(listing(d.path()), before);
    }

    #[test]
    fn an_interrupted_switch_is_finished_by_the_next_write() {
        let d = claim();
        let p = d.path();
        std::fs::create_dir_all(p.join(".lifeboat-new/data")).unwrap();
        std::fs::write(p.join(".lifeboat-new/data/items"), "new").unwrap();
        std::fs::create_dir_all(p.join(".lifeboat-old")).unwrap();
        std::fs::rename(p.join("data"), p.join(".lifeboat-old/data")).unwrap();
        std::fs::write(p.join(".lifeboat-swap"), "1\n").unwrap();
        let (ok, err) = run(p, SETTLE, b"");
        assert!(ok, "{err}");
        assert_eq!(
            listing(p),
            [("data", "<dir>"), ("data/items", "new")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .to_vec()
        );
    }

    fn waiting(reason: &str, message: &str) -> Value {
        json!({"status": {"phase": "Pending", "containerStatuses": [
            {"name": "helper", "state": {"waiting": {"reason": reason, "message": message}}}]}})
    }

    #[test]
    fn a_helper_that_cannot_start_is_named_with_its_reason_at_once() {
        for reason in ["ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull"] {
            let why = helper_failure(
                &waiting(reason, "Back-off pulling image \"busybox:1.36\""),
                Duration::ZERO,
            )
            .unwrap_or_else(|| panic!("{reason} is not hopeless"));
            assert!(why.contains(reason) && why.contains("busybox:1.36"), "{why}");
        }
        // Pulling or creating the container is waiting worth doing.
        assert_eq!(
            helper_failure(&waiting("ContainerCreating", ""), Duration::from_secs(60)),
            None
        );
        let ended = json!({"status": {"phase": "Running", "containerStatuses": [
            {"state": {"terminated": {"reason": "Error", "exitCode": 127}}}]}});
        assert!(helper_failure(&ended, Duration::ZERO).unwrap().contains("127"));
        let failed = json!({"status": {"phase": "Failed", "message": "evicted"}});
        assert!(helper_failure(&failed, Duration::ZERO).unwrap().contains("evicted"));
    }

    #[test]
    fn an_unschedulable_helper_fails_once_the_claim_had_time_to_bind() {
        let pod = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient cpu."}]}});
        assert!(unschedulable_reason(&pod).is_some());
        assert_eq!(helper_failure(&pod, Duration::from_secs(3)), None);
        let why = helper_failure(&pod, UNSCHEDULABLE_LIMIT).unwrap();
        assert!(
            why.contains("Unschedulable") && why.contains("Insufficient cpu"),
            "{why}"
        );
        let scheduled = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"}]}});
        assert_eq!(unschedulable_reason(&scheduled), None);
    }

    /// Regression (CI, 2026-12-02): a claim restored on a loaded cluster took more than 10 s to
    /// bind, and the failover's data step stopped on "unbound immediate PersistentVolumeClaims".
    #[test]
    fn a_helper_waiting_for_its_claim_to_bind_gets_the_binding_limit() {
        let pod = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims."}]}});
        assert_eq!(helper_failure(&pod, UNSCHEDULABLE_LIMIT), None);
        assert_eq!(helper_failure(&pod, BINDING_LIMIT - Duration::from_secs(1)), None);
        let why = helper_failure(&pod, BINDING_LIMIT).unwrap();
        assert!(why.contains("unbound immediate PersistentVolumeClaims"), "{why}");
    }
}
