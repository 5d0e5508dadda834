//! Fencing tokens: the term of the leader an operation runs under, checked before each of its side
//! effects.
//!
//! Several `serve` instances may run one plan; only the leader acts. Leader election alone does not
//! stop a leader that was deposed while it was paused (`kill -STOP`, a long pause, a partition) from
//! carrying on where it was when it wakes up. So every journaled step, every traffic switch and
//! every stage on a standby first asks [`Leadership::check`]; a process that is no longer leader
//! gets [`OrchestratorError::Deposed`] and does nothing more: not the step, not even the journal
//! record of its failure (the new leader may be resuming the same operation). Each step's record
//! carries the term it ran under ([`crate::journal::StepRecord::term`]).
//!
//! What this does not cover: the time between a check and the side effect it guards (a call
//! already on its way to a site). The coordination service bounds that (its lease outlives a
//! check by at least the time a step takes to start), and the record of each step's term shows it.
use crate::OrchestratorError;

/// Whether this process still leads, and in which term.
pub trait Leadership: Send + Sync {
    /// The term this process acts under while it leads; [`OrchestratorError::Deposed`] when it
    /// does not (or can no longer tell: an unconfirmed term is a lost term).
    fn check(&self) -> Result<i64, OrchestratorError>;

    /// Evidence that `site`, which cannot be reached, has stopped the app itself: the instance that
    /// guards it lost its lease, so it fenced the app there before the lease ended. `Ok`: a line
    /// for the journal; `Err`: why there is no such evidence. `None`: this leadership knows no
    /// self-fencing instances (the fence then needs a witness or an operator).
    fn site_fenced(&self, site: &str) -> Option<Result<String, String>> {
        let _ = site;
        None
    }
}
