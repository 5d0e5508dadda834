//! Commands in running containers, over the exec API (through the API server to the kubelet):
//! the building block of backup hooks and of a DR plan's hooks on Kubernetes sites.
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use tokio::io::AsyncReadExt;

use crate::{Cluster, KubeError};

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// 0 on success; the process's exit code when the kubelet reports one, else 1.
    pub code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// `NAMESPACE/NAME[/CONTAINER]` (how a DR plan's hook names where it runs on Kubernetes) split
/// into its parts; `None` without a namespace and a name.
pub fn target(s: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut parts = s.splitn(3, '/');
    let (ns, name) = (parts.next()?, parts.next()?);
    (!ns.is_empty() && !name.is_empty()).then(|| (ns, name, parts.next().filter(|c| !c.is_empty())))
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

impl Cluster {
    /// Runs `command` (no shell) in `container` of pod `pod` (default: its first container).
    /// Gives up after `timeout` with [`KubeError::Api`]; the API gives no way to stop the
    /// command, so it may go on in the container.
    pub fn exec(
        &self,
        ns: &str,
        pod: &str,
        container: Option<&str>,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, KubeError> {
        let what = format!("exec in pod {ns}/{pod}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut ap = AttachParams::default().stdin(false).stdout(true).stderr(true);
        if let Some(c) = container {
            ap = ap.container(c);
        }
        let run = async {
            let mut proc = pods.exec(pod, command.to_vec(), &ap).await?;
            let (mut out, mut err) = (proc.stdout().expect("asked for"), proc.stderr().expect("asked for"));
            let status = proc.take_status();
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let _ = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
            let status = match status {
                Some(s) => s.await,
                None => None,
            };
            let code = match status {
                Some(s) if s.status.as_deref() != Some("Success") => s
                    .details
                    .and_then(|d| d.causes)
                    .into_iter()
                    .flatten()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
                    .and_then(|c| c.message?.parse().ok())
                    .unwrap_or(1),
                _ => 0,
            };
            Ok::<_, kube::Error>(ExecOutput {
                code,
                stdout: o,
                stderr: e,
            })
        };
        match self.block_on(async { tokio::time::timeout(timeout, run).await }) {
            Ok(r) => r.map_err(self.api_err(what)),
            Err(_) => Err(KubeError::Api {
                context: self.context.clone(),
                retry: crate::Retry::Later,
                what,
                reason: format!("no answer within {} s", timeout.as_secs()),
            }),
        }
    }

    /// The pod `name` names in `ns`: the pod of that name if it runs, else a running pod of the
    /// Deployment or StatefulSet of that name (the first by name).
    pub fn running_pod(&self, ns: &str, name: &str) -> Result<String, KubeError> {
        let what = format!("pod or workload {ns}/{name}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        if let Some(p) = self.block_on(pods.get_opt(name)).map_err(self.api_err(what.clone()))? {
            if running(&p) {
                return Ok(name.to_string());
            }
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
        let workload = match self
            .block_on(deployments.get_opt(name))
            .map_err(self.api_err(what.clone()))?
        {
            Some(d) => serde_json::to_value(d).ok(),
            None => self
                .block_on(sets.get_opt(name))
                .map_err(self.api_err(what.clone()))?
                .and_then(|s| serde_json::to_value(s).ok()),
        };
        let labels = workload.as_ref().and_then(crate::control::pod_selector);
        let Some(labels) = labels else {
            return Err(KubeError::BadOption(format!(
                "{ns}/{name}: no running pod, Deployment or StatefulSet of that name"
            )));
        };
        let mut list = self
            .block_on(pods.list(&ListParams::default().labels(&labels)))
            .map_err(self.api_err(what))?
            .items;
        list.retain(running);
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        list.into_iter()
            .next()
            .and_then(|p| p.metadata.name)
            .ok_or_else(|| KubeError::BadOption(format!("{ns}/{name}: no pod of it runs")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hook_target_names_namespace_name_and_maybe_a_container() {
        assert_eq!(super::target("shop/db"), Some(("shop", "db", None)));
        assert_eq!(super::target("shop/db/pg"), Some(("shop", "db", Some("pg"))));
        assert_eq!(super::target("db"), None);
        assert_eq!(super::target("/db"), None);
    }
}
