//! The HAProxy router: HAProxy's runtime API (the `stats socket ... level admin`), one command per
//! connection (HAProxy's non-interactive mode: it reads one line, answers, closes).
//!
//! `switch` first reads `show servers state BACKEND` (both servers must exist, else nothing is
//! touched), then puts the old side's server in `maint` and only then makes the new side's server
//! `ready`, so both never take traffic at once. If the new side cannot be made ready, the old side is
//! made ready again and the error says traffic is still there; if that fails too, the error says
//! plainly that no side takes traffic.
//!
//! Then `shutdown sessions server BACKEND/OLD` closes the connections still open to the old side
//! (keep-alive, websockets, TCP-mode database sessions): maintenance only stops new ones. Last,
//! when the plan names a `state_file`, the output of `show servers state` (all backends) is
//! written into it (a new file renamed over the old), so a reload of HAProxy with
//! `server-state-file FILE` and `load-server-state-from-file global` keeps traffic on the new side
//! instead of going back to what the configuration says.
//!
//! `current` reads the servers' administrative state: a server takes traffic unless it is in
//! maintenance (forced, inherited, DNS-resolution or health-check maintenance; admin state bits
//! 0x63) or draining (0x18). The configuration's `disabled` bit (0x04) stays set after `set server
//! ... state ready` and is ignored, as HAProxy does. Health-check results (the operational state) are
//! reported but do not change the route: they are not the router's to switch.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::net::{io_reason, is_timeout, resolve, split_host_port, TRY_TIMEOUT};
use crate::{Route, Router, Side, SwitchContext, TrafficAfter, TrafficError};

/// Admin state bits: FMAINT | IMAINT | RMAINT | HMAINT (HAProxy's SRV_ADMF_MAINT).
const ADMIN_MAINT: u32 = 0x63;
/// Admin state bits: FDRAIN | IDRAIN (SRV_ADMF_DRAIN).
const ADMIN_DRAIN: u32 = 0x18;
/// Longest answer read from HAProxy (a `show servers state` of a backend with thousands of servers).
const MAX_ANSWER: u64 = 16 << 20;

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String, u16),
}

pub(crate) struct HaproxyRouter {
    socket: String,
    endpoint: Endpoint,
    backend: String,
    primary: String,
    standby: String,
    /// Where `show servers state` goes after a switch.
    state_file: Option<PathBuf>,
    timeout: Duration,
}

/// One server of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerState {
    pub name: String,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    pub admin_state: u32,
}

impl ServerState {
    /// Whether HAProxy sends new traffic to it (as far as the administrative state goes).
    pub(crate) fn serving(&self) -> bool {
        self.admin_state & (ADMIN_MAINT | ADMIN_DRAIN) == 0
    }

    fn describe(&self) -> String {
        let admin = if self.admin_state & ADMIN_MAINT != 0 {
            "maint"
        } else if self.admin_state & ADMIN_DRAIN != 0 {
            "drain"
        } else {
            "ready"
        };
        let op = match self.op_state {
            0 => "down",
            1 => "starting",
            2 => "up",
            3 => "stopping",
            _ => "in an unknown state",
        };
        format!("{} {admin} ({op})", self.name)
    }
}

/// A name HAProxy accepts for a backend or server: letters, digits, `-`, `_`, `.`, `:` (and
/// nothing that could end a command or start another).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Parses `show servers state` output (format version 1). Columns are found by the header's names,
/// so added columns in later HAProxy versions do not matter. An answer that is not that format is
/// HAProxy's error message (`Can't find backend.`), returned as `Err(message)`.
pub(crate) fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines();
    let version = lines.next().unwrap_or("").trim();
    if version != "1" {
        let msg = text.trim();
        return Err(if msg.is_empty() {
            "an empty answer".to_string()
        } else {
            msg.to_string()
        });
    }
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or_else(|| "no `# be_id be_name ...` header line".to_string())?;
    let cols: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name} in the header"))
    };
    let (name_i, op_i, admin_i) = (col("srv_name")?, col("srv_op_state")?, col("srv_admin_state")?);
    let mut out = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let get = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("a line with {} fields", fields.len()))
        };
        let num = |i: usize| {
            get(i)?
                .parse::<u32>()
                .map_err(|_| format!("a state that is not a number in {line:?}"))
        };
        out.push(ServerState {
            name: get(name_i)?.to_string(),
            op_state: num(op_i)?,
            admin_state: num(admin_i)?,
        });
    }
    Ok(out)
}

/// HAProxy's answer to a `set` command: empty (only newlines) means done; anything else is its
/// error message.
pub(crate) fn command_succeeded(answer: &str) -> Result<(), String> {
    let msg = answer.trim();
    if msg.is_empty() {
        Ok(())
    } else {
        Err(msg.to_string())
    }
}

impl HaproxyRouter {
    pub(crate) fn new(
        socket: &str,
        backend: &str,
        primary: &str,
        standby: &str,
        state_file: Option<PathBuf>,
    ) -> Result<HaproxyRouter, TrafficError> {
        let router = format!("haproxy backend {backend} at {socket}");
        let config = |reason: String| TrafficError::Config {
            router: router.clone(),
            reason,
        };
        let endpoint = if let Some(path) = socket.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(config(format!(
                    "socket {socket:?}: a unix socket needs an absolute path (unix:///PATH)"
                )));
            }
            Endpoint::Unix(PathBuf::from(path))
        } else if let Some(hp) = socket.strip_prefix("tcp://") {
            let (host, port) =
                split_host_port(hp.trim_end_matches('/'), 0).map_err(|r| config(format!("socket: {r}")))?;
            if port == 0 {
                return Err(config(format!("socket {socket:?} has no port (tcp://HOST:PORT)")));
            }
            Endpoint::Tcp(host, port)
        } else {
            return Err(config(format!(
                "socket {socket:?} is neither unix:///PATH nor tcp://HOST:PORT"
            )));
        };
        for (what, v) in [("backend", backend), ("primary", primary), ("standby", standby)] {
            if !valid_name(v) {
                return Err(config(format!(
                    "{what} {v:?} is not a HAProxy name (letters, digits, '-', '_', '.', ':')"
                )));
            }
        }
        if primary == standby {
            return Err(config(format!("primary and standby are the same server {primary}")));
        }
        if let Some(f) = &state_file {
            if f.file_name().is_none() {
                return Err(config(format!(
                    "state_file {}: needs the path of a file (the one HAProxy's server-state-file names)",
                    f.display()
                )));
            }
        }
        Ok(HaproxyRouter {
            socket: socket.to_string(),
            endpoint,
            backend: backend.to_string(),
            primary: primary.to_string(),
            standby: standby.to_string(),
            state_file,
            timeout: TRY_TIMEOUT,
        })
    }

    /// After a switch to `to`: closes the old server's sessions, then saves the server state.
    fn after_switch(&self, to: Side) -> Result<(), TrafficError> {
        let old = self.server(to.other());
        let command = format!("shutdown sessions server {}/{old}", self.backend);
        let closed = self
            .command(&command, true)
            .and_then(|answer| {
                command_succeeded(&answer).map_err(|answer| TrafficError::Haproxy {
                    router: self.describe(),
                    server: self.socket.clone(),
                    command: command.clone(),
                    answer,
                })
            })
            .map_err(|e| TrafficError::AfterSwitch {
                router: self.describe(),
                to,
                what: format!("the sessions still open to the old server {old} could not be closed"),
                reason: e.without_router(&self.describe()),
            });
        // The state is saved even when closing failed: traffic is on the new side either way.
        let saved = self.save_state().map_err(|reason| TrafficError::AfterSwitch {
            router: self.describe(),
            to,
            what: format!(
                "the server state could not be saved to {} (a reload of HAProxy would send traffic back)",
                self.state_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"))
                    .display()
            ),
            reason,
        });
        closed.and(saved)
    }

    /// Writes `show servers state` (every backend: the file is HAProxy's, for all of them) into the
    /// state file, through a new file renamed over the old one.
    fn save_state(&self) -> Result<(), String> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let answer = self
            .command("show servers state", false)
            .map_err(|e| e.without_router(&self.describe()))?;
        parse_servers_state(&answer).map_err(|m| format!("`show servers state`: {m}"))?;
        let tmp = path.with_file_name(format!(
            ".{}.lifeboat-{}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(answer.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_reason(&e)
        })
    }

    fn server(&self, side: Side) -> &str {
        match side {
            Side::Primary => &self.primary,
            Side::Standby => &self.standby,
        }
    }

    /// Sends one command, returns HAProxy's whole answer. `change`: the command changes state (for
    /// the error of a timeout).
    fn command(&self, command: &str, change: bool) -> Result<String, TrafficError> {
        let unreachable = |reason: String| TrafficError::Unreachable {
            router: self.describe(),
            server: self.socket.clone(),
            reason,
        };
        let io_err = |e: std::io::Error, sent: bool| {
            if is_timeout(&e) {
                TrafficError::Timeout {
                    router: self.describe(),
                    server: self.socket.clone(),
                    waited: self.timeout,
                    tries: 1,
                    change_sent: change && sent,
                }
            } else if sent {
                TrafficError::BadAnswer {
                    router: self.describe(),
                    server: self.socket.clone(),
                    reason: format!("reading the answer to `{command}` failed: {}", io_reason(&e)),
                    change_sent: change,
                }
            } else {
                unreachable(io_reason(&e))
            }
        };
        let line = format!("{command}\n");
        let mut answer = Vec::new();
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let mut s = UnixStream::connect(path).map_err(|e| io_err(e, false))?;
                s.set_read_timeout(Some(self.timeout)).map_err(|e| io_err(e, false))?;
                s.set_write_timeout(Some(self.timeout)).map_err(|e| io_err(e, false))?;
                s.write_all(line.as_bytes()).map_err(|e| io_err(e, false))?;
                s.take(MAX_ANSWER)
                    .read_to_end(&mut answer)
                    .map_err(|e| io_err(e, true))?;
            }
            Endpoint::Tcp(host, port) => {
                let addr = resolve(host, *port).map_err(unreachable)?;
                let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| io_err(e, false))?;
                s.set_read_timeout(Some(self.timeout)).map_err(|e| io_err(e, false))?;
                s.set_write_timeout(Some(self.timeout)).map_err(|e| io_err(e, false))?;
                s.write_all(line.as_bytes()).map_err(|e| io_err(e, false))?;
                s.take(MAX_ANSWER)
                    .read_to_end(&mut answer)
                    .map_err(|e| io_err(e, true))?;
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// `set server BACKEND/SERVER state STATE`.
    fn set_state(&self, server: &str, state: &str) -> Result<(), TrafficError> {
        let command = format!("set server {}/{server} state {state}", self.backend);
        let answer = self.command(&command, true)?;
        command_succeeded(&answer).map_err(|answer| TrafficError::Haproxy {
            router: self.describe(),
            server: self.socket.clone(),
            command,
            answer,
        })
    }

    /// The backend's servers by name.
    fn states(&self) -> Result<BTreeMap<String, ServerState>, TrafficError> {
        let command = format!("show servers state {}", self.backend);
        let answer = self.command(&command, false)?;
        let list = parse_servers_state(&answer).map_err(|message| {
            if answer.trim_start().starts_with('1') {
                TrafficError::BadAnswer {
                    router: self.describe(),
                    server: self.socket.clone(),
                    reason: format!("`{command}`: {message}"),
                    change_sent: false,
                }
            } else {
                TrafficError::Haproxy {
                    router: self.describe(),
                    server: self.socket.clone(),
                    command: command.clone(),
                    answer: message,
                }
            }
        })?;
        Ok(list.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    fn require(&self, states: &BTreeMap<String, ServerState>, side: Side) -> Result<(), TrafficError> {
        let name = self.server(side);
        if states.contains_key(name) {
            return Ok(());
        }
        Err(TrafficError::NoSuchServer {
            router: self.describe(),
            backend: self.backend.clone(),
            name: name.to_string(),
            side,
            known: if states.is_empty() {
                "none".to_string()
            } else {
                states.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    fn route(&self, states: &BTreeMap<String, ServerState>) -> Route {
        let (p, s) = (&states[&self.primary], &states[&self.standby]);
        match (p.serving(), s.serving()) {
            (true, false) => Route::On(Side::Primary),
            (false, true) => Route::On(Side::Standby),
            (true, true) => Route::Unknown(format!(
                "both servers take traffic ({}, {}): traffic is split",
                p.describe(),
                s.describe()
            )),
            (false, false) => Route::Unknown(format!(
                "neither server takes traffic ({}, {})",
                p.describe(),
                s.describe()
            )),
        }
    }
}

impl Router for HaproxyRouter {
    fn describe(&self) -> String {
        format!("haproxy backend {} at {}", self.backend, self.socket)
    }

    fn current(&self) -> Result<Route, TrafficError> {
        let states = self.states()?;
        self.require(&states, Side::Primary)?;
        self.require(&states, Side::Standby)?;
        Ok(self.route(&states))
    }

    fn switch(&self, to: Side, _context: &SwitchContext) -> Result<(), TrafficError> {
        let from = to.other();
        let (new, old) = (self.server(to), self.server(from));
        // Both must exist before anything changes.
        let states = self.states()?;
        self.require(&states, Side::Primary)?;
        self.require(&states, Side::Standby)?;
        // 1. The old side stops taking traffic (if this fails, nothing changed).
        self.set_state(old, "maint")?;
        // 2. The new side starts.
        let failed = match self.set_state(new, "ready") {
            // 3. The old side's open sessions are closed, the state saved.
            Ok(()) => return self.after_switch(to),
            Err(e) => e,
        };
        let router = self.describe();
        if matches!(failed, TrafficError::Timeout { .. }) {
            // The command may have been applied after all: if so, the switch is done.
            if let Ok(states) = self.states() {
                if self.route(&states) == Route::On(to) {
                    return self.after_switch(to);
                }
            }
        }
        // It did not: the old side takes traffic again.
        let (traffic, rollback) = match self.set_state(old, "ready") {
            Ok(()) => (TrafficAfter::On(from), None),
            Err(e @ TrafficError::Timeout { .. }) => (TrafficAfter::Unknown, Some(e.without_router(&router))),
            Err(e) => (TrafficAfter::Nowhere, Some(e.without_router(&router))),
        };
        Err(TrafficError::SwitchFailed {
            cause: failed.without_router(&router),
            router,
            to,
            traffic,
            rollback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    const HEADER: &str =
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
        srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state \
        bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr \
        srv_agent_addr srv_agent_port\n";

    /// Real HAProxy 2.6 output (lab backend app: a ready, b `disabled` in the configuration).
    fn lab_output(a: (u32, u32), b: (u32, u32)) -> String {
        format!(
            "{HEADER}3 app 1 a 10.77.1.2 {} {} 1 1 5 1 0 2 0 0 0 0 - 8080 - 0 0 - - 0\n\
             3 app 2 b 10.77.2.2 {} {} 1 1 5 1 0 0 8 0 0 0 - 8080 - 0 0 - - 0\n\n",
            a.0, a.1, b.0, b.1
        )
    }

    #[test]
    fn parses_show_servers_state() {
        let s = parse_servers_state(&lab_output((2, 0), (0, 5))).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            ServerState {
                name: "b".into(),
                op_state: 0,
                admin_state: 5
            }
        );
        assert!(s[0].serving());
        assert!(!s[1].serving());
        // `disabled` in the configuration, then `state ready`: admin state 4 (CMAINT only) serves.
        let s = parse_servers_state(&lab_output((2, 0), (2, 4))).unwrap();
        assert!(s[1].serving());
        // drain does not take new traffic
        let s = parse_servers_state(&lab_output((2, 8), (2, 0))).unwrap();
        assert!(!s[0].serving());
    }

    #[test]
    fn error_answers_and_odd_formats() {
        assert_eq!(
            parse_servers_state("Can't find backend.\n\n").unwrap_err(),
            "Can't find backend."
        );
        assert_eq!(parse_servers_state("").unwrap_err(), "an empty answer");
        assert!(parse_servers_state("1\nno header\n").is_err());
        assert!(parse_servers_state("1\n# be_id srv_name\n3 a\n")
            .unwrap_err()
            .contains("srv_op_state"));
        assert!(parse_servers_state(&format!("{HEADER}3 app 1 a\n")).is_err());
        assert!(parse_servers_state(&format!("{HEADER}3 app 1 a 10.77.1.2 x 0 1 1\n")).is_err());
        // extra columns of a later version
        let s = parse_servers_state("1\n# srv_name srv_admin_state new_col srv_op_state\na 1 zz 0\n").unwrap();
        assert_eq!(s[0].admin_state, 1);
    }

    #[test]
    fn command_answers() {
        assert!(command_succeeded("\n").is_ok());
        assert!(command_succeeded("").is_ok());
        assert_eq!(command_succeeded("No such server.\n\n").unwrap_err(), "No such server.");
    }

    #[test]
    fn settings_are_checked() {
        let ok = HaproxyRouter::new("unix:///run/haproxy/admin.sock", "app", "a", "b", None).unwrap();
        assert_eq!(ok.describe(), "haproxy backend app at unix:///run/haproxy/admin.sock");
        assert!(HaproxyRouter::new("tcp://127.0.0.1:9999", "app", "a", "b", None).is_ok());
        for (sock, be, p, s) in [
            ("unix://relative.sock", "app", "a", "b"),
            ("tcp://127.0.0.1", "app", "a", "b"),
            ("http://127.0.0.1:9999", "app", "a", "b"),
            ("unix:///x.sock", "app", "a\nshutdown sessions", "b"),
            ("unix:///x.sock", "app", "a b", "b"),
            ("unix:///x.sock", "", "a", "b"),
            ("unix:///x.sock", "app", "a", "a"),
        ] {
            assert!(
                matches!(
                    HaproxyRouter::new(sock, be, p, s, None),
                    Err(TrafficError::Config { .. })
                ),
                "{sock} {be} {p} {s}"
            );
        }
    }

    /// A fake runtime API: answers each command with the first matching scripted answer, records
    /// the commands.
    fn fake(script: Vec<(&'static str, String)>) -> (tempfile::TempDir, String, Arc<Mutex<Vec<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while conn.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                    buf.push(byte[0]);
                }
                let cmd = String::from_utf8_lossy(&buf).into_owned();
                log2.lock().unwrap().push(cmd.clone());
                let answer = script
                    .iter()
                    .find(|(prefix, _)| cmd.starts_with(prefix))
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| "Unknown command.\n".into());
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        (dir, format!("unix://{}", path.display()), log)
    }

    #[test]
    fn failed_ready_puts_the_old_side_back() {
        let (_d, sock, log) = fake(vec![
            ("show servers state app", lab_output((2, 0), (0, 5))),
            ("set server app/a state maint", "\n".into()),
            ("set server app/b state ready", "Server b is being deleted.\n".into()),
            ("set server app/a state ready", "\n".into()),
        ]);
        let r = HaproxyRouter::new(&sock, "app", "a", "b", None).unwrap();
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert_eq!(e.traffic_after(), TrafficAfter::On(Side::Primary));
        let text = e.to_string();
        assert!(text.contains("Server b is being deleted."), "{text}");
        assert!(text.contains("traffic is still entirely on the primary"), "{text}");
        assert_eq!(
            *log.lock().unwrap(),
            [
                "show servers state app",
                "set server app/a state maint",
                "set server app/b state ready",
                "set server app/a state ready"
            ]
        );
    }

    #[test]
    fn failed_rollback_says_no_side_takes_traffic() {
        let (_d, sock, _log) = fake(vec![
            ("show servers state app", lab_output((2, 0), (0, 5))),
            ("set server app/a state maint", "\n".into()),
            ("set server app/b state ready", "Permission denied.\n".into()),
            ("set server app/a state ready", "Permission denied.\n".into()),
        ]);
        let r = HaproxyRouter::new(&sock, "app", "a", "b", None).unwrap();
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert_eq!(e.traffic_after(), TrafficAfter::Nowhere);
        assert!(e.to_string().contains("NO SIDE TAKES TRAFFIC NOW"), "{e}");
        assert!(!e.retry_may_help());
    }

    #[test]
    fn failed_maint_changes_nothing() {
        let (_d, sock, log) = fake(vec![
            ("show servers state app", lab_output((2, 0), (0, 5))),
            ("set server app/a state maint", "Permission denied.\n".into()),
        ]);
        let r = HaproxyRouter::new(&sock, "app", "a", "b", None).unwrap();
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert!(matches!(e, TrafficError::Haproxy { .. }), "{e}");
        assert_eq!(e.traffic_after(), TrafficAfter::Unchanged);
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_switch_closes_the_old_sides_sessions_and_saves_the_state() {
        let (d, sock, log) = fake(vec![
            ("show servers state", lab_output((2, 0), (0, 5))),
            ("set server app/a state maint", "\n".into()),
            ("set server app/b state ready", "\n".into()),
            ("shutdown sessions server app/a", "\n".into()),
        ]);
        let file = d.path().join("server-state");
        let r = HaproxyRouter::new(&sock, "app", "a", "b", Some(file.clone())).unwrap();
        r.switch(Side::Standby, &SwitchContext::default()).unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "show servers state app",
                "set server app/a state maint",
                "set server app/b state ready",
                "shutdown sessions server app/a",
                "show servers state"
            ]
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), lab_output((2, 0), (0, 5)));
        assert!(HaproxyRouter::new(&sock, "app", "a", "b", Some("/".into())).is_err());
    }

    #[test]
    fn sessions_that_cannot_be_closed_fail_the_switch_with_traffic_on_the_new_side() {
        let (_d, sock, _log) = fake(vec![
            ("show servers state app", lab_output((2, 0), (0, 5))),
            ("set server app/a state maint", "\n".into()),
            ("set server app/b state ready", "\n".into()),
            ("shutdown sessions server app/a", "Permission denied.\n".into()),
        ]);
        let r = HaproxyRouter::new(&sock, "app", "a", "b", None).unwrap();
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert_eq!(e.traffic_after(), TrafficAfter::On(Side::Standby));
        assert!(e.to_string().contains("sessions still open to the old server a"), "{e}");
        assert!(e.to_string().contains("Permission denied."), "{e}");
        assert!(e.retry_may_help());
    }

    #[test]
    fn routes() {
        for (a, b, want) in [
            ((2, 0), (0, 5), Some(Side::Primary)),
            ((0, 1), (2, 4), Some(Side::Standby)),
            ((2, 0), (2, 4), None),
            ((0, 1), (0, 5), None),
        ] {
            let (_d, sock, _log) = fake(vec![("show servers state app", lab_output(a, b))]);
            let r = HaproxyRouter::new(&sock, "app", "a", "b", None).unwrap();
            let route = r.current().unwrap();
            match want {
                Some(side) => assert_eq!(route, Route::On(side)),
                None => assert!(matches!(route, Route::Unknown(_)), "{route:?}"),
            }
        }
        let (_d, sock, _log) = fake(vec![("show servers state app", lab_output((2, 0), (0, 5)))]);
        let r = HaproxyRouter::new(&sock, "app", "a", "c", None).unwrap();
        let e = r.current().unwrap_err();
        assert!(
            matches!(&e, TrafficError::NoSuchServer { name, known, .. } if name == "c" && known == "a, b"),
            "{e}"
        );
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let r = HaproxyRouter::new("unix:///nonexistent/admin.sock", "app", "a", "b", None).unwrap();
        let e = r.current().unwrap_err();
        assert!(matches!(e, TrafficError::Unreachable { .. }), "{e}");
        assert!(e.retry_may_help());
    }
}
