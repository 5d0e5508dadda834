//! A headless Chromium driven through the DevTools protocol (one page, over its WebSocket):
//! navigate, evaluate, screenshot, and every console error and uncaught exception the page had.
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    /// Console errors and exceptions seen so far.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Debian's `chromium` is installed (a line saying so when not).
pub fn available() -> bool {
    let ok = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: chromium is not installed (apt-get install chromium; scripts/test.sh does it)");
    }
    ok
}

impl Browser {
    /// Starts Chromium headless on a blank page. It accepts the server's self-signed certificate
    /// (the tests pin it for their own clients; the page is what is tested here).
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = lifeboat_lab_support::etcd::free_port();
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--ignore-certificate-errors",
                "--window-size=1280,800",
                &format!("--remote-debugging-port={port}"),
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let ws_url = loop {
            let list = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if let Some(u) = list.as_ref().and_then(|l| {
                l.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_string)
            }) {
                break u;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "chromium did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(ws_url.as_str()).unwrap();
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let mut b = Browser {
            child,
            ws,
            next: 0,
            errors: Vec::new(),
            _profile: profile,
        };
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.send(m, json!({}));
        }
        b
    }

    /// Sends a command and returns its result, noting the events that come meanwhile.
    pub fn send(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .unwrap();
        loop {
            let msg = self.ws.read().unwrap();
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    fn note(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .errors
                .push(format!("exception: {}", v["params"]["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors.push(format!("console.error: {}", v["params"]["args"]))
            }
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", v["params"]["entry"]))
            }
            _ => {}
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.send("Page.navigate", json!({"url": url}));
    }

    /// The value of a JavaScript expression (awaited when it is a promise).
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.send(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (its value), within `limit`.
    pub fn until(&mut self, what: &str, limit: Duration, expr: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "{what} within {limit:?} (errors: {:?})",
                self.errors
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self.send("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

/// Where tests keep what they show (screenshots): `$LIFEBOAT_ARTIFACTS`, else
/// `target/test-artifacts` under the cargo target directory.
pub fn artifacts() -> std::path::PathBuf {
    std::env::var_os("LIFEBOAT_ARTIFACTS")
        .map(Into::into)
        .unwrap_or_else(|| {
            let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_lifeboat"));
            exe.parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .join("test-artifacts")
        })
}
