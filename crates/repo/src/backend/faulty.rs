//! A backend wrapper that injects faults, for tests (in the spirit of kopia's `FaultyStorage`).
//!
//! Wraps any [`Backend`] and, per operation, fails the N-th call, fails every call from the N-th on,
//! tears a write (stores a truncated file, then reports an error, as a backend that breaks its
//! atomicity promise would), delays calls, or hides newly written files from listings for a while
//! (an eventually consistent listing). [`FaultyBackend::assert_all_faults_hit`] fails a test whose
//! faults were never reached, so a change that moves the code away from the fault cannot leave the
//! test passing without testing anything.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Backend, BackendError, Listed};

/// The backend operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    ReadRange,
    Write,
    WriteDeferred,
    Sync,
    List,
    Remove,
    Exists,
}

#[derive(Debug, Clone)]
enum Kind {
    Error(String),
    Torn,
    Delay(Duration),
}

#[derive(Debug)]
struct Fault {
    op: Op,
    /// The call number (counted from when the fault was added, 1 = the next call) it starts at.
    at: u64,
    /// Whether it applies to every call from `at` on, or to that one call only.
    sticky: bool,
    kind: Kind,
    /// Calls of `op` when the fault was added.
    base: u64,
    hits: u64,
}

#[derive(Default)]
struct State {
    calls: HashMap<Op, u64>,
    faults: Vec<Fault>,
    lag: Duration,
    written: HashMap<String, Instant>,
}

/// See the module documentation.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    state: Mutex<State>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FaultyBackend {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    fn add(&self, op: Op, at: u64, sticky: bool, kind: Kind) {
        let mut st = self.state.lock().expect("poisoned");
        let base = st.calls.get(&op).copied().unwrap_or(0);
        st.faults.push(Fault {
            op,
            at: at.max(1),
            sticky,
            kind,
            base,
            hits: 0,
        });
    }

    /// The `n`-th call of `op` from now (1 = the next) fails with `message`.
    pub fn fail_nth(&self, op: Op, n: u64, message: &str) {
        self.add(op, n, false, Kind::Error(message.to_string()));
    }

    /// Every call of `op` from the `n`-th on fails with `message` (until [`FaultyBackend::clear`]).
    pub fn fail_from(&self, op: Op, n: u64, message: &str) {
        self.add(op, n, true, Kind::Error(message.to_string()));
    }

    /// The `n`-th `write`/`write_deferred` from now stores only the first half of its data and fails.
    pub fn tear_nth(&self, op: Op, n: u64) {
        self.add(op, n, false, Kind::Torn);
    }

    /// Every call of `op` from now sleeps `by` first.
    pub fn delay(&self, op: Op, by: Duration) {
        self.add(op, 1, true, Kind::Delay(by));
    }

    /// Files written from now on are missing from listings for `lag` after their write.
    pub fn set_listing_lag(&self, lag: Duration) {
        self.state.lock().expect("poisoned").lag = lag;
    }

    /// Removes every fault (the disk was freed, the server came back); keeps the hit counts seen
    /// by [`FaultyBackend::assert_all_faults_hit`] for faults already hit.
    pub fn clear(&self) {
        let mut st = self.state.lock().expect("poisoned");
        st.faults.retain(|f| f.hits == 0);
        for f in &mut st.faults {
            f.kind = Kind::Delay(Duration::ZERO);
            f.hits = 1;
        }
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: Op) -> u64 {
        self.state
            .lock()
            .expect("poisoned")
            .calls
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// Panics naming every fault that no call reached.
    pub fn assert_all_faults_hit(&self) {
        let st = self.state.lock().expect("poisoned");
        let missed: Vec<String> = st
            .faults
            .iter()
            .filter(|f| f.hits == 0)
            .map(|f| format!("{:?} at call {} ({:?})", f.op, f.at, f.kind))
            .collect();
        assert!(missed.is_empty(), "faults never exercised: {}", missed.join(", "));
    }

    /// Counts the call and returns the fault it meets, after any delay.
    fn enter(&self, op: Op) -> Option<Kind> {
        let (delay, hit) = {
            let mut st = self.state.lock().expect("poisoned");
            let n = {
                let c = st.calls.entry(op).or_insert(0);
                *c += 1;
                *c
            };
            let mut delay = Duration::ZERO;
            let mut hit = None;
            for f in st.faults.iter_mut().filter(|f| f.op == op) {
                let rel = n - f.base;
                if rel == f.at || (f.sticky && rel > f.at) {
                    f.hits += 1;
                    match &f.kind {
                        Kind::Delay(d) => delay += *d,
                        k => {
                            hit.get_or_insert(k.clone());
                        }
                    }
                }
            }
            (delay, hit)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        hit
    }

    fn injected(&self, op: &'static str, path: &str, message: String) -> BackendError {
        BackendError::Io {
            location: self.inner.location().to_string(),
            op,
            path: path.to_string(),
            message,
            retryable: false,
        }
    }

    fn write_with(&self, op: Op, path: &str, data: &[u8], deferred: bool) -> Result<(), BackendError> {
        let name = "write";
        match self.enter(op) {
            Some(Kind::Error(m)) => return Err(self.injected(name, path, m)),
            Some(Kind::Torn) => {
                self.inner.write(path, &data[..data.len() / 2])?;
                return Err(self.injected(name, path, "injected: torn write".into()));
            }
            _ => {}
        }
        if deferred {
            self.inner.write_deferred(path, data)?;
        } else {
            self.inner.write(path, data)?;
        }
        self.state
            .lock()
            .expect("poisoned")
            .written
            .insert(path.to_string(), Instant::now());
        Ok(())
    }
}

impl Backend for FaultyBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn create(&self) -> Result<(), BackendError> {
        self.inner.create()
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        match self.enter(Op::Read) {
            Some(Kind::Error(m)) => return Err(self.injected("read", path, m)),
            Some(Kind::Torn) => {
                let mut b = self.inner.read(path)?;
                b.truncate(b.len() / 2);
                return Ok(b);
            }
            _ => {}
        }
        self.inner.read(path)
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        match self.enter(Op::ReadRange) {
            Some(Kind::Error(m)) => Err(self.injected("read", path, m)),
            Some(Kind::Torn) => {
                let mut b = self.inner.read_range(path, offset, len)?;
                b.truncate(b.len() / 2);
                Ok(b)
            }
            _ => self.inner.read_range(path, offset, len),
        }
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        self.write_with(Op::Write, path, data, false)
    }

    fn write_deferred(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        self.write_with(Op::WriteDeferred, path, data, true)
    }

    fn sync(&self) -> Result<(), BackendError> {
        if let Some(Kind::Error(m)) = self.enter(Op::Sync) {
            return Err(self.injected("sync", "(pending writes)", m));
        }
        self.inner.sync()
    }

    fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError> {
        if let Some(Kind::Error(m)) = self.enter(Op::List) {
            return Err(self.injected("list", dir, m));
        }
        let listed = self.inner.list(dir)?;
        let st = self.state.lock().expect("poisoned");
        if st.lag.is_zero() {
            return Ok(listed);
        }
        let now = Instant::now();
        Ok(listed
            .into_iter()
            .filter(|l| {
                let full = format!("{}/{}", dir.trim_end_matches('/'), l.name);
                st.written.get(&full).is_none_or(|t| now.duration_since(*t) >= st.lag)
            })
            .collect())
    }

    fn remove(&self, path: &str) -> Result<(), BackendError> {
        if let Some(Kind::Error(m)) = self.enter(Op::Remove) {
            return Err(self.injected("remove", path, m));
        }
        self.inner.remove(path)
    }

    fn exists(&self, path: &str) -> Result<bool, BackendError> {
        if let Some(Kind::Error(m)) = self.enter(Op::Exists) {
            return Err(self.injected("stat", path, m));
        }
        self.inner.exists(path)
    }

    fn remove_temporaries(&self) {
        self.inner.remove_temporaries()
    }

    /// A listing that lags by `lag` settles after a little more than `lag`.
    fn listing_settle(&self) -> Duration {
        let lag = self.state.lock().expect("poisoned").lag;
        let inner = self.inner.listing_settle();
        if lag.is_zero() {
            inner
        } else {
            inner.max(lag + Duration::from_millis(50))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn faults_hit_the_calls_they_name_and_unhit_faults_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = FaultyBackend::new(Arc::new(LocalBackend::new(dir.path())));
        f.create().unwrap();
        f.fail_nth(Op::Write, 2, "injected");
        f.write("a", b"1").unwrap();
        assert!(f.write("b", b"2").is_err());
        f.write("c", b"3").unwrap();
        f.tear_nth(Op::Write, 1);
        assert!(f.write("d", b"4444").is_err());
        assert_eq!(
            f.inner.read("d").unwrap(),
            b"44",
            "a torn write leaves a truncated file"
        );
        f.assert_all_faults_hit();
        f.fail_nth(Op::Sync, 1, "never reached");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.assert_all_faults_hit()));
        assert!(r.is_err());
    }

    #[test]
    fn a_lagging_listing_hides_new_files_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let f = FaultyBackend::new(Arc::new(LocalBackend::new(dir.path())));
        f.create().unwrap();
        f.set_listing_lag(Duration::from_millis(100));
        f.write("locks/x", b"1").unwrap();
        assert!(f.list("locks").unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(f.list("locks").unwrap().len(), 1);
    }
}
