//! Several `serve` instances of one plan, one per site and one on a witness site, coordinated
//! through etcd (the plan's `coordination`): exactly one leads and acts, all of them probe and
//! publish their verdicts, and the instance on the active site fences the app there when it is cut
//! off from etcd.
//!
//! Keys, under `lifeboat/PLAN/`:
//! - `leader`: the leader's instance name, held by its lease (see [`lifeboat_etcd::coord`]);
//! - `instances/NAME`: each running instance (its site, the plan it runs), held by its lease;
//! - `guards/SITE`: the instance that fences SITE itself when cut off, kept until it stops cleanly;
//! - `verdicts/APP/NAME`: what NAME's probes of APP's active site say, held by its lease.
//!
//! Guarantees: [`Coordination`] is the [`Leadership`] of the leader's operations, so a deposed
//! leader's next step is refused; an instance that cannot confirm its lease (etcd unreachable)
//! stops leading at once, not when the lease ends; a failover needs a majority of `instances`
//! fresh "down" verdicts ([`QuorumWitness`]), and an unreachable site counts as fenced only when
//! its guard lost its lease ([`Leadership::site_fenced`]), which it does only after it stopped the
//! app there (`self_fence_after` < TTL, validated with the plan).
//!
//! Assumes: the instances run the same plan (checked at start by a digest of its sites and apps)
//! under distinct names. Breaks: an instance that guards a site and is killed (`kill -9`) while
//! the app there keeps running and is cut off from the others; its guard key then vouches for a
//! self-fence that did not happen (a double fault; `docs/dr.md` says how to stop guarding first).
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_etcd::coord::{Campaign, CoordError, Coordinator, Term};
use lifeboat_etcd::Endpoint;
use lifeboat_orchestrator::check::{CheckResult, Status};
use lifeboat_orchestrator::leadership::Leadership;
use lifeboat_orchestrator::watch::{self, BoxFuture, Freshness, Verdict, WitnessReport};
use lifeboat_orchestrator::OrchestratorError;
use lifeboat_plan::Plan;
use serde::{Deserialize, Serialize};

use crate::active::{ActiveSites, REPO_DEADLINE};
use crate::{Event, ServerError};

/// Who this instance is.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Unique among the plan's instances (a site's name, a host name).
    pub name: String,
    /// The site it runs at, which it fences when cut off (none: a witness elsewhere).
    pub site: Option<String>,
}

/// An instance's record in etcd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Member {
    pub(crate) name: String,
    site: Option<String>,
    /// A digest of the plan's sites and apps: two plans of one name are told apart by it.
    pub(crate) plan: String,
    version: String,
}

/// A guard's record in etcd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Guard {
    instance: String,
    self_fence_after_ms: u64,
}

/// The plan's coordination as this instance takes part in it.
pub struct Coordination {
    coord: Coordinator,
    pub me: Instance,
    digest: String,
    pub ttl: Duration,
    pub self_fence_after: Duration,
    pub voters: u32,
    pub majority: u32,
    lease: Mutex<Option<i64>>,
    term: tokio::sync::watch::Sender<Option<Term>>,
    /// When a keep-alive last succeeded, on this process's monotonic clock.
    contact: Mutex<Instant>,
}

/// A digest of what makes two plans the same plan: its sites and its apps with their sites.
pub(crate) fn plan_digest(plan: &Plan) -> String {
    let mut text = String::new();
    for name in plan.sites.keys() {
        text += &format!("site {name}\n");
    }
    for a in &plan.apps {
        let standby = a.standby.as_ref().map(|s| s.value.as_str()).unwrap_or("");
        text += &format!("app {} {} {standby}\n", a.name.value, a.primary.value);
    }
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The running instances' records.
pub(crate) fn members(coord: &Coordinator) -> Result<Vec<Member>, CoordError> {
    Ok(coord
        .list("instances/")?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// The guards, by the site they guard.
fn guards(coord: &Coordinator) -> Result<Vec<(String, Guard)>, CoordError> {
    Ok(coord
        .list("guards/")?
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("guards/")?.to_string(), serde_json::from_slice(&v).ok()?)))
        .collect())
}

/// A client of the plan's coordination cluster (TLS files found from `plan_dir`).
pub(crate) fn coordinator(
    plan: &Plan,
    c: &lifeboat_plan::Coordination,
    plan_dir: &Path,
) -> Result<Coordinator, CoordError> {
    let file = |f: &Option<std::path::PathBuf>| f.as_ref().map(|p| plan_dir.join(p));
    let endpoints: Vec<Endpoint> = c
        .etcd
        .endpoints
        .iter()
        .map(|url| Endpoint {
            url: url.clone(),
            cacert: file(&c.etcd.ca),
            cert: file(&c.etcd.cert),
            key: file(&c.etcd.key),
        })
        .collect();
    Coordinator::new(&endpoints, &format!("lifeboat/{}/", plan.metadata.name))
}

/// `plan check`'s line about the plan's coordination as etcd holds it now: who leads, which
/// instances run and which sites are guarded. Fails when etcd cannot be read, warns when fewer
/// instances run than vote or an app's primary has no guard (none without `coordination`).
pub fn check(plan: &Plan, plan_dir: &Path) -> Option<CheckResult> {
    let c = plan.coordination.as_ref()?;
    let read = || -> Result<(String, Status), CoordError> {
        let coord = coordinator(plan, c, plan_dir)?;
        let leader = coord.leader()?;
        let members = members(&coord)?;
        let guards: Vec<String> = guards(&coord)?.into_iter().map(|(site, _)| site).collect();
        let names: Vec<String> = members
            .iter()
            .map(|m| match &m.site {
                Some(s) => format!("{} (site {s})", m.name),
                None => m.name.clone(),
            })
            .collect();
        let mut status = Status::Ok;
        let mut detail = format!(
            "{}; {} of {} instances run: {}; guarded sites: {}",
            match &leader {
                Some(l) => format!("{} leads (term {})", l.holder, l.term.revision),
                None => "nobody leads".into(),
            },
            members.len(),
            c.voters(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
            if guards.is_empty() {
                "none".into()
            } else {
                guards.join(", ")
            },
        );
        if leader.is_none() || (members.len() as u32) < c.majority() {
            status = Status::Warn;
            detail += "; with fewer than a majority running, no failover can be decided";
        }
        let mut unguarded: Vec<&str> = plan
            .apps
            .iter()
            .map(|a| a.primary.value.as_str())
            .filter(|p| !guards.iter().any(|g| g == p))
            .collect();
        unguarded.sort_unstable();
        unguarded.dedup();
        if !unguarded.is_empty() {
            status = Status::Warn;
            detail += &format!(
                "; no instance guards {} (run `serve --site` there): an unreachable primary there is failed over only by hand",
                unguarded.join(", ")
            );
        }
        Ok((detail, status))
    };
    Some(match read() {
        Ok((detail, status)) => CheckResult {
            app: None,
            check: "coordination".into(),
            status,
            detail,
            count: None,
        },
        Err(e) => CheckResult {
            app: None,
            check: "coordination".into(),
            status: Status::Fail,
            detail: e.to_string(),
            count: None,
        },
    })
}

fn coordination_error(source: CoordError) -> ServerError {
    ServerError::Coordination { source }
}

impl Coordination {
    /// Joins the plan's coordination as `me`: a lease, the instance's record and (with a site)
    /// its guard. Refuses (changing nothing) when etcd cannot be used, when another plan of the
    /// same name runs on it, or when an instance of this name already runs.
    pub fn join(plan: &Plan, plan_dir: &Path, me: Instance) -> Result<Coordination, ServerError> {
        let c = plan.coordination.as_ref().ok_or_else(|| ServerError::NoCoordination {
            plan: plan.metadata.name.clone(),
        })?;
        if me.name.is_empty() || me.name.contains('/') {
            return Err(ServerError::InstanceName { name: me.name });
        }
        let coord = coordinator(plan, c, plan_dir).map_err(coordination_error)?;
        let me_ = Coordination {
            coord,
            digest: plan_digest(plan),
            ttl: c.ttl(),
            self_fence_after: c.self_fence_after(),
            voters: c.voters(),
            majority: c.majority(),
            lease: Mutex::new(None),
            term: tokio::sync::watch::channel(None).0,
            contact: Mutex::new(Instant::now()),
            me,
        };
        let lease = me_.coord.grant(me_.ttl).map_err(coordination_error)?;
        let refuse = |e: ServerError| {
            let _ = me_.coord.revoke(lease);
            Err(e)
        };
        let members = match members(&me_.coord) {
            Ok(m) => m,
            Err(e) => return refuse(coordination_error(e)),
        };
        for m in members {
            if m.plan != me_.digest {
                return refuse(ServerError::TwoPlans {
                    plan: plan.metadata.name.clone(),
                    instance: m.name,
                });
            }
            if m.name == me_.me.name {
                return refuse(ServerError::InstanceRunning { name: m.name });
            }
        }
        *me_.lease.lock().unwrap() = Some(lease);
        if let Err(e) = me_.register(lease) {
            return refuse(coordination_error(e));
        }
        *me_.contact.lock().unwrap() = Instant::now();
        Ok(me_)
    }

    /// Publishes this instance's record under `lease`, and its guard.
    fn register(&self, lease: i64) -> Result<(), CoordError> {
        let m = Member {
            name: self.me.name.clone(),
            site: self.me.site.clone(),
            plan: self.digest.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let json = serde_json::to_vec(&m).expect("a member serializes");
        self.coord
            .publish(&format!("instances/{}", self.me.name), &json, lease)?;
        if let Some(site) = &self.me.site {
            let g = Guard {
                instance: self.me.name.clone(),
                self_fence_after_ms: self.self_fence_after.as_millis() as u64,
            };
            self.coord.put(
                &format!("guards/{site}"),
                &serde_json::to_vec(&g).expect("a guard serializes"),
            )?;
        }
        Ok(())
    }

    /// How long ago a keep-alive last succeeded.
    pub fn cut_off_for(&self) -> Duration {
        self.contact.lock().unwrap().elapsed()
    }

    /// Whether this instance leads now (as last confirmed).
    pub fn leads(&self) -> Option<Term> {
        *self.term.borrow()
    }

    /// Changes of leadership: `Some(term)` while this instance leads.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Term>> {
        self.term.subscribe()
    }

    /// One round: keep the lease alive (a new lease and record if it ended), then campaign. What
    /// changed, as an event; `None`: nothing new.
    fn round(&self, last: &mut Option<String>) -> Option<Event> {
        let said = |line: String, last: &mut Option<String>| -> Option<String> {
            (last.as_deref() != Some(line.as_str())).then(|| {
                *last = Some(line.clone());
                line
            })
        };
        let lease = *self.lease.lock().unwrap();
        let lease = match lease {
            Some(l) => match self.coord.keep_alive(l) {
                Ok(_) => l,
                Err(e) => {
                    self.term.send_replace(None);
                    if matches!(e, CoordError::LeaseEnded { .. }) {
                        *self.lease.lock().unwrap() = None;
                    }
                    return said(format!("cut off from coordination: {e}"), last).map(|why| Event::CutOff { why });
                }
            },
            None => match self.coord.grant(self.ttl).and_then(|l| self.register(l).map(|()| l)) {
                Ok(l) => {
                    *self.lease.lock().unwrap() = Some(l);
                    l
                }
                Err(e) => {
                    return said(format!("cut off from coordination: {e}"), last).map(|why| Event::CutOff { why })
                }
            },
        };
        *self.contact.lock().unwrap() = Instant::now();
        match self.coord.campaign(&self.me.name, lease) {
            Ok(Campaign::Won(t)) => {
                self.term.send_if_modified(|now| {
                    let changed = *now != Some(t);
                    *now = Some(t);
                    changed
                });
                said(format!("leader term {}", t.revision), last).map(|_| Event::Leading { term: t.revision })
            }
            Ok(Campaign::Held(l)) => {
                self.term.send_replace(None);
                said(format!("follows {}", l.holder), last).map(|_| Event::Following {
                    leader: l.holder,
                    term: l.term.revision,
                })
            }
            Err(e) => {
                self.term.send_replace(None);
                if matches!(e, CoordError::LeaseEnded { .. }) {
                    *self.lease.lock().unwrap() = None;
                }
                said(format!("cut off from coordination: {e}"), last).map(|why| Event::CutOff { why })
            }
        }
    }

    /// Keeps the lease alive and campaigns every fifth of the TTL, forever. Runs the etcd calls on
    /// the blocking pool.
    pub async fn run(self: Arc<Self>, events: Arc<dyn Fn(Event) + Send + Sync>) {
        let every = self.ttl / 5;
        let mut last: Option<String> = None;
        loop {
            let me = self.clone();
            let (event, l) = tokio::task::spawn_blocking(move || {
                let mut l = last;
                (me.round(&mut l), l)
            })
            .await
            .unwrap_or((None, None));
            last = l;
            if let Some(e) = event {
                events(e);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Publishes this instance's verdict on `app` (held by its lease; none without a lease).
    pub fn publish_verdict(&self, app: &str, report: &WitnessReport) -> Result<(), String> {
        let lease = (*self.lease.lock().unwrap()).ok_or("no lease (cut off from coordination)")?;
        let json = serde_json::to_vec(report).map_err(|e| e.to_string())?;
        self.coord
            .publish(&format!("verdicts/{app}/{}", self.me.name), &json, lease)
            .map_err(|e| e.to_string())
    }

    /// Every instance's verdict on `app`, by instance name.
    fn verdicts(&self, app: &str) -> Result<Vec<(String, WitnessReport)>, CoordError> {
        let prefix = format!("verdicts/{app}/");
        Ok(self
            .coord
            .list(&prefix)?
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// Leaves cleanly: resigns (another instance takes over at once), removes the guard and ends
    /// the lease. `Err` when the guard could not be removed: the caller fences its site then, as
    /// the guard still vouches that it would.
    pub fn leave(&self) -> Result<(), CoordError> {
        if let Some(t) = self.term.send_replace(None) {
            let _ = self.coord.resign(t);
        }
        let guard = match &self.me.site {
            Some(site) => self.coord.delete(&format!("guards/{site}")),
            None => Ok(()),
        };
        if let Some(l) = self.lease.lock().unwrap().take() {
            let _ = self.coord.revoke(l);
        }
        guard
    }
}

impl Leadership for Coordination {
    fn check(&self) -> Result<i64, OrchestratorError> {
        let Some(t) = self.leads() else {
            return Err(OrchestratorError::Deposed {
                term: 0,
                reason: format!("instance {} does not lead", self.me.name),
            });
        };
        self.coord
            .check(t)
            .map(|()| t.revision)
            .map_err(|e| OrchestratorError::Deposed {
                term: t.revision,
                reason: e.to_string(),
            })
    }

    fn site_fenced(&self, site: &str) -> Option<Result<String, String>> {
        Some(guard_evidence(&self.coord, self.ttl, site))
    }
}

/// Evidence that `site`, which cannot be reached, has stopped the app itself: it has a guard and
/// no running instance on it holds a lease. `Err`: why there is no such evidence.
pub(crate) fn guard_evidence(coord: &Coordinator, ttl: Duration, site: &str) -> Result<String, String> {
    let read = || -> Result<Result<String, String>, CoordError> {
        let Some((_, guard)) = guards(coord)?.into_iter().find(|(s, _)| s == site) else {
            return Ok(Err(format!(
                "no serve instance guards site {site} (none runs there with --site {site}), so nothing stopped the \
                 app there"
            )));
        };
        if let Some(m) = members(coord)?.into_iter().find(|m| m.site.as_deref() == Some(site)) {
            return Ok(Err(format!(
                "instance {} on site {site} still holds its lease: it reaches etcd and has not fenced itself",
                m.name
            )));
        }
        Ok(Ok(format!(
            "instance {} that guards site {site} lost its lease ({:?} without a keep-alive) and stops the app there \
             {:?} after it is cut off, before its lease ends",
            guard.instance,
            ttl,
            Duration::from_millis(guard.self_fence_after_ms)
        )))
    };
    read().unwrap_or_else(|e| Err(format!("the guards cannot be read: {e}")))
}

/// The quorum as the leader's watch asks it: a failover only on a majority of fresh "down"
/// verdicts about the active site.
///
/// Guarantees: a verdict counts only while its `sequence` changes within `max_age` on this
/// process's clock (an instance paused or cut off stops counting before its lease ends); verdicts
/// that cannot be read within [`REPO_DEADLINE`] are [`Verdict::Silent`].
pub struct QuorumWitness {
    coord: Arc<Coordination>,
    sites: Arc<ActiveSites>,
    max_age: Duration,
    freshness: Mutex<HashMap<(String, String), Freshness>>,
}

impl QuorumWitness {
    pub fn new(coord: Arc<Coordination>, sites: Arc<ActiveSites>, max_age: Duration) -> QuorumWitness {
        QuorumWitness {
            coord,
            sites,
            max_age,
            freshness: Default::default(),
        }
    }
}

impl watch::Witness for QuorumWitness {
    fn verdict(&self, app: &str) -> BoxFuture<'_, Verdict> {
        let app = app.to_string();
        Box::pin(async move {
            let site = match self.sites.active(&app).await {
                Ok(s) => s,
                Err(e) => return Verdict::Silent(e),
            };
            let (coord, name) = (self.coord.clone(), app.clone());
            let read = tokio::task::spawn_blocking(move || coord.verdicts(&name));
            let verdicts = match tokio::time::timeout(REPO_DEADLINE, read).await {
                Ok(Ok(Ok(v))) => v,
                Ok(Ok(Err(e))) => return Verdict::Silent(format!("the verdicts cannot be read: {e}")),
                Ok(Err(e)) => return Verdict::Silent(e.to_string()),
                Err(_) => return Verdict::Silent(format!("the verdicts were not read within {REPO_DEADLINE:?}")),
            };
            let now = Instant::now();
            let mut down = Vec::new();
            let mut up = Vec::new();
            {
                let mut fresh = self.freshness.lock().unwrap();
                for (instance, r) in &verdicts {
                    let ago = fresh
                        .entry((app.clone(), instance.clone()))
                        .or_default()
                        .observe(Some(r), now);
                    if r.site != site || ago.is_none_or(|a| a > self.max_age) {
                        continue;
                    }
                    if r.down {
                        down.push(instance.clone());
                    } else {
                        up.push(instance.clone());
                    }
                }
            }
            let (majority, voters) = (self.coord.majority as usize, self.coord.voters);
            if down.len() >= majority {
                Verdict::Agrees
            } else {
                Verdict::Disagrees(format!(
                    "{} of {voters} serve instances see {site} down{}, {majority} needed{}",
                    down.len(),
                    if down.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", down.join(", "))
                    },
                    if up.is_empty() {
                        String::new()
                    } else {
                        format!("; {} see it up", up.join(", "))
                    }
                ))
            }
        })
    }
}
