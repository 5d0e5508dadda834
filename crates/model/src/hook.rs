//! Backup hooks as applications ask for them: the same keys on Docker labels and Kubernetes pod
//! annotations, so one vocabulary works on every platform.
//!
//! - `io.lifeboat.hook.pre`: a shell command (`sh -c`) run in the application's container before
//!   any of its volumes is read, for example `psql -U postgres -c CHECKPOINT` or a dump into the
//!   volume;
//! - `io.lifeboat.hook.post`: run after the volumes were read (also when reading failed);
//! - `io.lifeboat.hook.timeout`: seconds to wait for each command (default 60, `30` or `30s`, at
//!   most [`MAX_TIMEOUT`]: the annotation is set by whoever may edit the app, and a hook holds the
//!   app's lock, and with it a failover, for as long as it runs);
//! - `io.lifeboat.hook.on-error`: `fail` (default: the backup stops and writes no snapshot) or
//!   `continue` (the failure is recorded in the snapshot's manifest and the backup goes on);
//! - `io.lifeboat.hook.container` (Kubernetes only): the pod's container to run in (default: the
//!   first one).
//!
//! A hook fails when it exits non-zero, cannot be started, or exceeds its timeout.
use std::time::Duration;

pub const PRE: &str = "io.lifeboat.hook.pre";
pub const POST: &str = "io.lifeboat.hook.post";
pub const TIMEOUT: &str = "io.lifeboat.hook.timeout";
pub const ON_ERROR: &str = "io.lifeboat.hook.on-error";
pub const CONTAINER: &str = "io.lifeboat.hook.container";
/// The longest timeout a hook may ask for (15 minutes).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What to do when a hook fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Fail,
    Continue,
}

/// The commands and policy one application asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Duration,
    pub on_error: OnError,
}

impl HookSpec {
    /// Reads the hook keys through `get` (a label or annotation lookup). `Ok(None)` when neither a
    /// pre nor a post command is set; `Err` names the key and value that are wrong.
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Option<HookSpec>, String> {
        let (pre, post) = (get(PRE), get(POST));
        if pre.is_none() && post.is_none() {
            return Ok(None);
        }
        let timeout = match get(TIMEOUT) {
            None => Duration::from_secs(60),
            Some(t) => Duration::from_secs(
                t.trim_end_matches('s')
                    .parse::<u64>()
                    .map_err(|_| format!("{TIMEOUT}={t:?} is not a number of seconds"))?,
            ),
        };
        if timeout > MAX_TIMEOUT {
            return Err(format!(
                "{TIMEOUT}={:?} is more than {} s, the longest a hook may hold the app (and a failover waiting for it)",
                get(TIMEOUT).unwrap_or_default(),
                MAX_TIMEOUT.as_secs()
            ));
        }
        let on_error = match get(ON_ERROR) {
            None | Some("fail") => OnError::Fail,
            Some("continue") => OnError::Continue,
            Some(other) => return Err(format!("{ON_ERROR}={other:?} must be fail or continue")),
        };
        Ok(Some(HookSpec {
            pre: pre.map(str::to_string),
            post: post.map(str::to_string),
            timeout,
            on_error,
        }))
    }

    /// The command of a phase (`"pre"` or `"post"`).
    pub fn command(&self, phase: &str) -> Option<&str> {
        match phase {
            "pre" => self.pre.as_deref(),
            _ => self.post.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<HookSpec>, String> {
        let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        HookSpec::parse(|k| m.get(k).copied())
    }

    #[test]
    fn keys_give_hooks_with_defaults() {
        let h = parse(&[(PRE, "psql -c CHECKPOINT")]).unwrap().unwrap();
        assert_eq!(h.command("pre"), Some("psql -c CHECKPOINT"));
        assert_eq!(h.command("post"), None);
        assert_eq!((h.timeout, h.on_error), (Duration::from_secs(60), OnError::Fail));
        let h = parse(&[(POST, "rm /tmp/x"), (TIMEOUT, "5s"), (ON_ERROR, "continue")])
            .unwrap()
            .unwrap();
        assert_eq!((h.timeout, h.on_error), (Duration::from_secs(5), OnError::Continue));
        assert_eq!(parse(&[("x", "y"), (TIMEOUT, "5")]).unwrap(), None);
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&[(PRE, "true"), (TIMEOUT, "soon")]).unwrap_err();
        assert!(e.contains(TIMEOUT) && e.contains("soon"), "{e}");
        let e = parse(&[(PRE, "true"), (TIMEOUT, "86400")]).unwrap_err();
        assert!(e.contains("86400") && e.contains("900 s"), "{e}");
        assert!(parse(&[(PRE, "true"), (TIMEOUT, "900")]).is_ok());
        let e = parse(&[(PRE, "true"), (ON_ERROR, "ignore")]).unwrap_err();
        assert!(e.contains("ignore"), "{e}");
    }
}
