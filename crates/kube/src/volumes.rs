//! Volume data of PersistentVolumeClaims, through short-lived helper pods and the exec API (no
//! agent on the nodes).
//!
//! Backup: a helper pod mounts the claim read-only (on the node of a pod that uses the claim, so
//! node-local volumes work) and `tar cf - -C /data .` streams over exec into the repository, chunked
//! and deduplicated like any file tree. Restore: a helper pod mounts the claim, empties it
//! and `tar xf - -C /data` takes the stored tree over exec's stdin. The helper image must have `sh`,
//! `sleep` and `tar` (busybox does); pods are labelled `io.lifeboat.helper=1` and removed after use.
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, DeleteParams, PostParams};
use lifeboat_fs::archive::{removed_paths, tar_to_tree, tree_delta_to_tar, TarOutcome, VecWrite};
use lifeboat_fs::backup::Progress;
use lifeboat_model::Node;
use lifeboat_repo::Repository;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::io::SyncIoBridge;

use crate::{Cluster, KubeError};

/// What a helper runs to write a claim. Its stdin is a list of paths to remove first, one per
/// line (`/` for everything in the claim), ended by an empty line, then a tar stream. `read` takes
/// stdin a byte at a time, so the tar stream is left whole for `tar`. `rm` may be missing where
/// only busybox is (the lab's images): then busybox's own.
const REMOVE_AND_UNTAR: &str = r#"cd /data || exit 1
while IFS= read -r f; do
  [ -z "$f" ] && break
  if [ "$f" = / ]; then set -- * .[!.]* ..?*; else set -- "./$f"; fi
  for g; do
    if [ -e "$g" ] || [ -L "$g" ]; then rm -rf -- "$g" 2>/dev/null || busybox rm -rf -- "$g" || exit 1; fi
  done
done
exec tar xf - -C /data"#;

/// The default helper image.
pub const DEFAULT_HELPER_IMAGE: &str = "busybox:1.36";

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

    /// Starts a helper pod with `claim` at /data and waits until it runs; returns its name.
    fn start_helper(&self, ns: &str, claim: &str, image: &str, read_only: bool) -> Result<String, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut spec = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "helper", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "sleep 3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": read_only}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        });
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
                Err(e)
                    if started.elapsed() < Duration::from_secs(60)
                        && crate::status_code(&e).is_some_and(|c| c == 403 || c >= 500) =>
                {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(self.api_err(what.clone())(e)),
            }
        };
        let name = created.metadata.name.unwrap_or_default();
        let started = Instant::now();
        loop {
            let p = self.block_on(pods.get(&name)).map_err(self.api_err(what.clone()))?;
            let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if phase == "Running" {
                return Ok(name);
            }
            if phase == "Failed" || started.elapsed() > Duration::from_secs(120) {
                self.remove_helper(ns, &name);
                return Err(self.helper_err(what)(format!("did not start (phase {phase:?})")));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn remove_helper(&self, ns: &str, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let _ = self.block_on(pods.delete(name, &DeleteParams::default().grace_period(0)));
    }

    /// Reads a bound claim's files into the repository.
    pub fn read_pvc(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        image: &str,
        progress: &Progress,
    ) -> Result<TarOutcome, KubeError> {
        let pod = self.start_helper(ns, claim, image, true)?;
        let result = self.read_pod(repo, ns, claim, &pod, progress);
        self.remove_helper(ns, &pod);
        result
    }

    fn read_pod(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        pod: &str,
        progress: &Progress,
    ) -> Result<TarOutcome, KubeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let what = format!("read claim {ns}/{claim}");
        let ap = AttachParams::default().stdin(false).stdout(true).stderr(true);
        let mut proc = self
            .block_on(pods.exec(pod, ["tar", "cf", "-", "-C", "/data", "."], &ap))
            .map_err(self.api_err(what.clone()))?;
        let stdout = proc.stdout().expect("stdout was asked for");
        let status = proc.take_status();
        let reader = SyncIoBridge::new_with_handle(stdout, self.rt.handle().clone());
        let out = tar_to_tree(repo, reader, 0, &format!("claim {ns}/{claim}"), progress);
        let status = match status {
            Some(s) => self.block_on(s),
            None => None,
        };
        if let Some(s) = status.filter(|s| s.status.as_deref() != Some("Success")) {
            return Err(self.helper_err(what)(format!(
                "tar in the helper pod failed: {}",
                s.message.unwrap_or_default()
            )));
        }
        Ok(out?)
    }

    /// Writes a stored tree into a claim (which must be bound or bindable), so that the claim
    /// holds exactly that tree. With `base`, the tree the claim is known to hold now, only what
    /// changed is sent and what is gone removed; without, everything in the claim is replaced.
    pub fn write_pvc(
        &self,
        repo: &Repository,
        ns: &str,
        claim: &str,
        image: &str,
        root: &Node,
        base: Option<&Node>,
    ) -> Result<u64, KubeError> {
        // Paths with a newline cannot be listed one per line: then everything is written.
        let removals = match base {
            Some(b) => Some(removed_paths(repo, root, b)?).filter(|r| !r.iter().any(|p| p.contains(&b'\n'))),
            None => None,
        };
        let pod = self.start_helper(ns, claim, image, false)?;
        let result = self.write_pod(
            repo,
            ns,
            claim,
            &pod,
            root,
            removals.as_ref().and(base),
            removals.as_deref(),
        );
        self.remove_helper(ns, &pod);
        result
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let what = format!("write claim {ns}/{claim}");
        let ap = AttachParams::default().stdin(true).stdout(false).stderr(true);
        let mut proc = self
            .block_on(pods.exec(pod, ["sh", "-c", REMOVE_AND_UNTAR], &ap))
            .map_err(self.api_err(what.clone()))?;
        let stdin = proc.stdin().expect("stdin was asked for");
        let status = proc.take_status();
        let mut writer = Writer(SyncIoBridge::new_with_handle(stdin, self.rt.handle().clone()));
        let mut list = Vec::new();
        for p in removals.unwrap_or(&[b"/".to_vec()]) {
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
        let status = match status {
            Some(s) => self.block_on(s),
            None => None,
        };
        let bytes = written?;
        if let Some(s) = status.filter(|s| s.status.as_deref() != Some("Success")) {
            return Err(self.helper_err(what)(format!(
                "tar in the helper pod failed: {}",
                s.message.unwrap_or_default()
            )));
        }
        Ok(bytes)
    }
}
