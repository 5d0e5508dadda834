//! The retry class of an error: what a caller that retries (the watch, a backend, a router) reads
//! instead of the message.

/// Whether trying a failed call again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// The condition may pass by itself: a site or store that did not answer or answered with a
    /// server error, a lock another process holds. Again after a pause.
    Later,
    /// Something must change first: the plan, a credential, a file, the data, a hook. Trying again
    /// before someone acted gives the same answer.
    AfterFix,
}

impl Retry {
    /// [`Retry::Later`] when `may_pass`, else [`Retry::AfterFix`].
    pub fn later_if(may_pass: bool) -> Retry {
        if may_pass {
            Retry::Later
        } else {
            Retry::AfterFix
        }
    }
}
