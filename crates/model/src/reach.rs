//! How a failed attempt to reach a site's control endpoint (a Docker engine, a Kubernetes API
//! server) is read. Fencing depends on it: only a site that cannot be reached at all may be fenced
//! on other evidence (a witness, an operator); a site that answered with an authentication, TLS or
//! protocol error, or that the plan addresses wrongly, is a failed fence.

use std::error::Error;
use std::io::ErrorKind;

/// Why a site's endpoint could not be used, when the reason is not "it cannot be reached".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessProblem {
    /// The address, kubeconfig, context or socket path cannot be used as given.
    Config,
    /// The endpoint answered and refused the credentials (HTTP 401/403, a failing credential
    /// plugin, a socket the user may not open).
    Auth,
    /// The TLS handshake failed (certificate not trusted, wrong name, expired).
    Tls,
    /// The endpoint answered, but not as it should (an HTTP error, a malformed answer, a reset).
    Protocol,
}

impl std::fmt::Display for AccessProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccessProblem::Config => "configuration error",
            AccessProblem::Auth => "authentication failed",
            AccessProblem::Tls => "TLS failed",
            AccessProblem::Protocol => "unexpected answer",
        })
    }
}

/// The reading of one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// No connection could be made: refused, no route to the host or network, timed out. Says
    /// nothing about whether the site's workloads still run.
    Unreachable(ErrorKind),
    /// A connection was made or the attempt failed for another reason.
    Access(AccessProblem),
}

/// Whether an I/O error kind means "nothing answered there".
pub fn is_network_failure(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::NetworkDown
            | ErrorKind::TimedOut
    )
}

/// Reads an error chain: [`Reach::Unreachable`] when an I/O error in it (also one wrapped inside
/// another I/O error) is a network failure ([`is_network_failure`]), [`AccessProblem::Auth`] for
/// "permission denied", else `other`. Unknown errors are never taken for "unreachable".
pub fn classify(e: &(dyn Error + 'static), other: AccessProblem) -> Reach {
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_network_failure(io.kind()) {
                return Reach::Unreachable(io.kind());
            }
            if io.kind() == ErrorKind::PermissionDenied {
                return Reach::Access(AccessProblem::Auth);
            }
            // `io::Error::source` skips the error it wraps; look at that one too.
            if let Some(inner) = io.get_ref() {
                if let Reach::Unreachable(k) = classify(inner, other) {
                    return Reach::Unreachable(k);
                }
            }
        }
        next = err.source();
    }
    Reach::Access(other)
}

/// The longest a data stream from or to an engine or a cluster may make no progress before it
/// counts as stalled: 120 s, or `LIFEBOAT_STREAM_STALL_SECS`. A hung engine (stopped, its disk
/// gone, a half-open connection) then fails the backup or restore instead of holding the app's
/// lock for ever. Read by the Docker and Kubernetes adapters.
pub fn stream_stall() -> std::time::Duration {
    let secs = std::env::var("LIFEBOAT_STREAM_STALL_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(120);
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Wrap(Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "request failed")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn only_network_failures_are_unreachable() {
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::HostUnreachable,
            ErrorKind::NetworkUnreachable,
            ErrorKind::TimedOut,
        ] {
            let e = Wrap(Box::new(io::Error::from(kind)));
            assert_eq!(classify(&e, AccessProblem::Protocol), Reach::Unreachable(kind));
        }
        // Wrapped inside another I/O error, as connectors do.
        let e = io::Error::other(Wrap(Box::new(io::Error::from(ErrorKind::ConnectionRefused))));
        assert_eq!(
            classify(&e, AccessProblem::Protocol),
            Reach::Unreachable(ErrorKind::ConnectionRefused)
        );
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::InvalidData,
            ErrorKind::NotFound,
            ErrorKind::UnexpectedEof,
        ] {
            let e = Wrap(Box::new(io::Error::from(kind)));
            assert_eq!(
                classify(&e, AccessProblem::Protocol),
                Reach::Access(AccessProblem::Protocol),
                "{kind:?}"
            );
        }
        let e = Wrap(Box::new(io::Error::from(ErrorKind::PermissionDenied)));
        assert_eq!(
            classify(&e, AccessProblem::Protocol),
            Reach::Access(AccessProblem::Auth)
        );
        let plain = Wrap(Box::new(std::fmt::Error));
        assert_eq!(classify(&plain, AccessProblem::Tls), Reach::Access(AccessProblem::Tls));
    }
}
