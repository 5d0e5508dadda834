//! The lab as tests see it: what `lab/lab env --json` says is up (sites, engines, clusters, DNS,
//! HAProxy), read in one place for every test crate.
//!
//! Guarantees: [`env`] runs the lab script each time it is called (the lab may change under a
//! test: `lab/lab kill`, `up`), and fails the calling test with the script's own error when the
//! script cannot run. Assumes the workspace layout: `lab/lab` in a directory above the test's
//! package (found at run time: a target directory shared by clones at other paths keeps this
//! crate built with another clone's path).
#![forbid(unsafe_code)]

pub mod etcd;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The lab script, `lab/lab` at the workspace's top: the first above the running test's package
/// directory (`cargo test` sets `CARGO_MANIFEST_DIR` and the working directory to it).
pub fn script() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    start
        .ancestors()
        .map(|d| d.join("lab/lab"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no lab/lab above {}", start.display()))
}

/// Every variable `lab/lab env` describes (`LAB_SITES`, `LAB_A_ADDR`, ...), by name.
pub fn env() -> BTreeMap<String, String> {
    let out = Command::new(script())
        .args(["env", "--json"])
        .output()
        .expect("run lab/lab env --json");
    assert!(
        out.status.success(),
        "lab/lab env --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lab/lab env --json prints one JSON object of strings")
}

/// One variable of [`env`], if the lab describes it.
pub fn var(name: &str) -> Option<String> {
    env().remove(name)
}
