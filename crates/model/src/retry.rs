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
    /// The class of an HTTP error status: a timeout, a conflict, too many requests and server
    /// errors (5xx) may pass; any other refusal (4xx: bad request, forbidden, not found) needs a
    /// change first.
    pub fn for_status(code: u16) -> Retry {
        Retry::later_if(matches!(code, 408 | 409 | 425 | 429) || code >= 500)
    }

    /// [`Retry::Later`] when `may_pass`, else [`Retry::AfterFix`].
    pub fn later_if(may_pass: bool) -> Retry {
        if may_pass {
            Retry::Later
        } else {
            Retry::AfterFix
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Retry;

    #[test]
    fn http_statuses_that_may_pass_are_retried_later_and_refusals_after_a_fix() {
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert_eq!(Retry::for_status(code), Retry::Later, "{code}");
        }
        for code in [400, 401, 403, 404, 405, 410, 413, 422] {
            assert_eq!(Retry::for_status(code), Retry::AfterFix, "{code}");
        }
    }
}
