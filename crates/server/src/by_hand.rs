//! A command run by hand on a plan whose `serve` instances coordinate (`backup --plan`,
//! `failover`, `failback`, `drill`, `sync --once`): it leads while it runs, or it does nothing.
//!
//! Only the leader acts. A command run by an operator is one more actor, so it takes the same
//! leadership the instances campaign for: a lease and the leader key (`lifeboat/PLAN/leader`),
//! held for as long as the command runs, and its term is the fencing token of every step it
//! journals ([`Leadership`]). While it leads, the instances follow it and act on nothing; when it
//! ends it resigns, and one of them leads at once.
//!
//! Guarantees: a command never acts while a `serve` instance leads ([`ByHand::take`] refuses,
//! naming the leader and how to ask it); a command paused or cut off past its lease is refused at
//! its next step like a deposed leader. Assumes: the lease is kept alive from a thread of this
//! process (every fifth of the TTL). Breaks: when etcd itself is lost nobody can lead;
//! [`ByHand::without`] then lets the operator act without a term, and only when no endpoint
//! answers (an etcd that answers has a leader to ask).
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use lifeboat_etcd::coord::{Campaign, CoordError, Coordinator, Term};
use lifeboat_orchestrator::leadership::Leadership;
use lifeboat_orchestrator::OrchestratorError;
use lifeboat_plan::Plan;

use crate::coord::{coordinator, guard_evidence, members, plan_digest};
use crate::ServerError;

/// The leadership of one command run by hand, released when dropped.
pub struct ByHand {
    coord: Arc<Coordinator>,
    /// Who leads, as the leader key and the instances' logs name it.
    pub holder: String,
    pub term: Term,
    ttl: Duration,
    /// Set by the keep-alive thread when the lease could not be kept: every check fails then.
    lost: Arc<AtomicBool>,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    keeper: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ByHand {
    /// Takes the plan's leadership for a command run by `holder` (an operator's name). Refuses,
    /// changing nothing, when etcd cannot be used, when a `serve` instance (or another command)
    /// leads, or when the instances on this etcd run another plan of the same name.
    pub fn take(plan: &Plan, plan_dir: &Path, holder: &str) -> Result<ByHand, ServerError> {
        let c = plan.coordination.as_ref().ok_or_else(|| ServerError::NoCoordination {
            plan: plan.metadata.name.clone(),
        })?;
        let by_hand = |source| ServerError::ByHand {
            plan: plan.metadata.name.clone(),
            source,
        };
        let coord = Arc::new(coordinator(plan, c, plan_dir).map_err(by_hand)?);
        let digest = plan_digest(plan);
        if let Some(m) = members(&coord).map_err(by_hand)?.into_iter().find(|m| m.plan != digest) {
            return Err(ServerError::TwoPlans {
                plan: plan.metadata.name.clone(),
                instance: m.name,
            });
        }
        let ttl = c.ttl();
        let lease = coord.grant(ttl).map_err(by_hand)?;
        let term = match coord.campaign(holder, lease) {
            Ok(Campaign::Won(t)) => t,
            Ok(Campaign::Held(l)) => {
                let _ = coord.revoke(lease);
                return Err(ServerError::Led {
                    plan: plan.metadata.name.clone(),
                    leader: l.holder,
                    term: l.term.revision,
                });
            }
            Err(e) => {
                let _ = coord.revoke(lease);
                return Err(by_hand(e));
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let keeper = {
            let (coord, lost) = (coord.clone(), lost.clone());
            std::thread::spawn(move || loop {
                match stopped.recv_timeout(ttl / 5) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if coord.keep_alive(lease).is_err() {
                    // An unconfirmed lease is a lost one: stop acting now, not when etcd says so.
                    lost.store(true, Ordering::SeqCst);
                }
            })
        };
        Ok(ByHand {
            coord,
            holder: holder.to_string(),
            term,
            ttl,
            lost,
            stop: Mutex::new(Some(stop)),
            keeper: Mutex::new(Some(keeper)),
        })
    }

    /// For acting without the leadership (`--without-coordination`): allowed only when no etcd
    /// endpoint of the plan answers. `Ok(why)`: the line to warn with; an etcd that answers
    /// refuses, naming who leads.
    pub fn without(plan: &Plan, plan_dir: &Path) -> Result<String, ServerError> {
        let Some(c) = plan.coordination.as_ref() else {
            return Err(ServerError::NoCoordination {
                plan: plan.metadata.name.clone(),
            });
        };
        let answers = |leader: Option<String>| ServerError::CoordinationAnswers {
            plan: plan.metadata.name.clone(),
            leader,
        };
        let coord = coordinator(plan, c, plan_dir).map_err(|source| ServerError::ByHand {
            plan: plan.metadata.name.clone(),
            source,
        })?;
        match coord.leader() {
            Ok(l) => Err(answers(l.map(|l| format!("{} (term {})", l.holder, l.term.revision)))),
            Err(e @ CoordError::Unreachable { .. }) => Ok(format!(
                "acting on plan {} without coordination: {e}; no serve instance can lead meanwhile, so make sure \
                 none acts (they stop leading when they cannot reach etcd)",
                plan.metadata.name
            )),
            Err(e) => Err(ServerError::ByHand {
                plan: plan.metadata.name.clone(),
                source: e,
            }),
        }
    }

    /// Resigns and ends the lease (also done on drop): a `serve` instance leads at once.
    pub fn release(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        if let Some(k) = self.keeper.lock().unwrap().take() {
            let _ = k.join();
            let _ = self.coord.resign(self.term);
            let _ = self.coord.revoke(self.term.lease);
        }
    }
}

impl Drop for ByHand {
    fn drop(&mut self) {
        self.release();
    }
}

impl Leadership for ByHand {
    fn check(&self) -> Result<i64, OrchestratorError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(OrchestratorError::Deposed {
                term: self.term.revision,
                reason: format!("{}'s lease could not be kept alive", self.holder),
            });
        }
        self.coord
            .check(self.term)
            .map(|()| self.term.revision)
            .map_err(|e| OrchestratorError::Deposed {
                term: self.term.revision,
                reason: e.to_string(),
            })
    }

    fn site_fenced(&self, site: &str) -> Option<Result<String, String>> {
        Some(guard_evidence(&self.coord, self.ttl, site))
    }
}
