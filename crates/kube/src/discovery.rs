//! Which resources the API server serves: the classic discovery endpoints (`/api`, `/apis`, one
//! call per group version), which every Kubernetes version has. A group whose discovery fails (an
//! aggregated API whose backend is down) is skipped with a note instead of failing the backup.
use std::collections::BTreeSet;

use futures_util::stream::{self, StreamExt};
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};

use crate::{Cluster, KubeError};

/// One listable resource in its group's preferred version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// `""` for the legacy core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl Resource {
    /// `core/v1/configmaps`, `apps/v1/deployments`: the resource's directory in a snapshot.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            if self.group.is_empty() { "core" } else { &self.group },
            self.version,
            self.plural
        )
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// Whether `name` (plural, `plural.group`, kind, lower-case kind) names this resource.
    pub fn matches(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        n == self.plural
            || n == self.kind.to_ascii_lowercase()
            || (!self.group.is_empty()
                && (n == format!("{}.{}", self.plural, self.group)
                    || n == format!("{}.{}", self.kind.to_ascii_lowercase(), self.group)))
    }

    pub fn can(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

/// Groups never read: `extensions` only re-serves objects of `networking.k8s.io` and `apps` under
/// old versions (the same objects twice).
const DUPLICATE_GROUPS: [&str; 1] = ["extensions"];

/// How long one discovery call may take: an aggregated API whose backend hangs must not stall
/// the backup (its group is skipped with a note).
const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Discovers every listable top-level resource (subresources left out), each in its group's
/// preferred version if served there, else in the first other version that serves it.
/// Returns the resources and notes on groups that were skipped.
pub fn discover(cluster: &Cluster) -> Result<(Vec<Resource>, Vec<String>), KubeError> {
    let client = cluster.client();
    cluster.block_on(async {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        let core = client
            .list_core_api_versions()
            .await
            .map_err(cluster.api_err("discovery of /api"))?;
        let core_version = core.versions.first().cloned().unwrap_or_else(|| "v1".into());
        let list = client
            .list_core_api_resources(&core_version)
            .await
            .map_err(cluster.api_err(format!("discovery of /api/{core_version}")))?;
        push_resources(&mut out, "", &core_version, list);

        let groups = client
            .list_api_groups()
            .await
            .map_err(cluster.api_err("discovery of /apis"))?;
        // Every version of every group, the preferred one first: a resource served only in an
        // older version (CronJob in batch/v1beta1 on Kubernetes 1.20) is taken from there.
        let mut wanted = Vec::new();
        for g in groups.groups {
            if DUPLICATE_GROUPS.contains(&g.name.as_str()) {
                skipped.push(format!("group {}: serves the same objects as newer groups", g.name));
                continue;
            }
            let mut versions: Vec<String> = g.preferred_version.iter().map(|p| p.version.clone()).collect();
            for v in g.versions {
                if !versions.contains(&v.version) {
                    versions.push(v.version);
                }
            }
            for (rank, version) in versions.into_iter().enumerate() {
                wanted.push((g.name.clone(), rank, version));
            }
        }
        // Without retries: an aggregated API whose backend is down answers 503 at once, and the
        // client's retries would turn that into DISCOVERY_TIMEOUT.
        let quick = &cluster.no_retry;
        let mut fetched: Vec<_> = stream::iter(wanted)
            .map(|(group, rank, version)| async move {
                let gv = format!("{group}/{version}");
                let r = match tokio::time::timeout(DISCOVERY_TIMEOUT, quick.list_api_group_resources(&gv)).await {
                    Ok(r) => r.map_err(|e| crate::short_error(&e)),
                    Err(_) => Err(format!("no answer within {} s", DISCOVERY_TIMEOUT.as_secs())),
                };
                (group, rank, version, r)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        fetched.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut failed_groups = BTreeSet::new();
        for (group, rank, version, r) in fetched {
            if failed_groups.contains(&group) {
                continue;
            }
            match r {
                Ok(list) => push_resources(&mut out, &group, &version, list),
                Err(e) if rank == 0 => {
                    failed_groups.insert(group.clone());
                    skipped.push(format!(
                        "group {group}/{version}: discovery failed ({e}); an aggregated API without a running backend?"
                    ))
                }
                Err(e) => skipped.push(format!(
                    "group {group}/{version}: discovery failed ({e}); resources served only in this version are left out"
                )),
            }
        }
        out.sort_by_key(Resource::key);
        skipped.sort();
        Ok((out, skipped))
    })
}

fn push_resources(
    out: &mut Vec<Resource>,
    group: &str,
    version: &str,
    list: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
) {
    for r in list.resources {
        if r.name.contains('/') || !r.verbs.iter().any(|v| v == "list") {
            continue;
        }
        // Served in a version taken before (the preferred one, or a newer one).
        if out.iter().any(|o| o.group == group && o.plural == r.name) {
            continue;
        }
        out.push(Resource {
            group: group.to_string(),
            version: version.to_string(),
            plural: r.name,
            kind: r.kind,
            namespaced: r.namespaced,
            verbs: r.verbs,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(group: &str, plural: &str, kind: &str) -> Resource {
        Resource {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced: true,
            verbs: vec!["list".into()],
        }
    }

    #[test]
    fn names_match_plural_kind_and_group_forms() {
        let d = res("apps", "deployments", "Deployment");
        for n in [
            "deployments",
            "Deployment",
            "deployment",
            "deployments.apps",
            "deployment.apps",
        ] {
            assert!(d.matches(n), "{n}");
        }
        assert!(!d.matches("deployments.extensions"));
        assert_eq!(d.key(), "apps/v1/deployments");
        assert_eq!(res("", "configmaps", "ConfigMap").key(), "core/v1/configmaps");
        assert_eq!(res("", "configmaps", "ConfigMap").api_version(), "v1");
    }

    fn list(version: &str, names: &[(&str, &str)]) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList {
        serde_json::from_value(serde_json::json!({
            "groupVersion": format!("batch/{version}"),
            "resources": names.iter().map(|(n, k)| serde_json::json!({
                "name": n, "singularName": "", "namespaced": true, "kind": k, "verbs": ["list", "get"]
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_resource_served_only_in_an_older_version_is_taken_from_there() {
        let mut out = Vec::new();
        push_resources(
            &mut out,
            "batch",
            "v1",
            list("v1", &[("jobs", "Job"), ("jobs/status", "Job")]),
        );
        push_resources(
            &mut out,
            "batch",
            "v1beta1",
            list("v1beta1", &[("jobs", "Job"), ("cronjobs", "CronJob")]),
        );
        let keys: Vec<String> = out.iter().map(Resource::key).collect();
        assert_eq!(keys, ["batch/v1/jobs", "batch/v1beta1/cronjobs"]);
    }
}
