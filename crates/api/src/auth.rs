//! Bearer tokens: a file of named tokens in two roles, each stored as the SHA-256 of the token
//! (the tokens are 256 random bits, so a fast hash is enough: there is nothing to guess).
//!
//! The file (YAML):
//!
//! ```yaml
//! tokens:
//!   - name: grafana
//!     role: viewer
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! Guarantees: a token is compared by its hash in constant time; the token itself is never
//! stored, logged or returned (only the name is); a file that does not parse, names a role that
//! does not exist, holds a hash that is not 64 hex digits or two entries of one name is refused
//! whole. Breaks: the file is read at start; a change needs a restart.
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every GET.
    Viewer,
    /// Every GET and every POST (backup, drill, failover, failback).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    sha256: String,
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse or holds a bad entry.
    #[error("token file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The file cannot be written.
    #[error("token file {}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file can be read by others than its owner.
    #[error("token file {} can be read by group or others (mode {mode:o}); chmod 600 it", path.display())]
    Exposed { path: PathBuf, mode: u32 },
}

/// The tokens the server accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, Role, [u8; 32])>,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Equal, compared in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Parses a token file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokenError> {
        let invalid = |reason: String| TokenError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let f: File = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut entries = Vec::new();
        for e in f.tokens {
            if e.name.is_empty() || e.name.chars().any(|c| c.is_control()) {
                return Err(invalid(format!(
                    "token name {:?} is empty or holds control characters",
                    e.name
                )));
            }
            if entries.iter().any(|(n, _, _)| *n == e.name) {
                return Err(invalid(format!("two tokens are named {}", e.name)));
            }
            let h =
                unhex(&e.sha256).ok_or_else(|| invalid(format!("token {}: sha256 is not 64 hex digits", e.name)))?;
            entries.push((e.name, e.role, h));
        }
        Ok(Tokens { entries })
    }

    /// Reads a token file; refused when group or others can read it.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(TokenError::Exposed {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Tokens::parse(path, &text)
    }

    /// Who `token` is, if it is one of these.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let h = digest(token);
        // Every entry is compared, whatever matches, in constant time per entry.
        let mut found = None;
        for (name, role, want) in &self.entries {
            if same(want, &h) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A new token (`lbt_` and 256 random bits, base64url) and the file entry that admits it.
pub fn new_token(name: &str, role: Role) -> Result<(String, String), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(format!("{name:?} cannot name a token: use letters, digits and - _ . @"));
    }
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| "the system's random source failed".to_string())?;
    let token = format!("lbt_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let entry = format!(
        "  - name: {name}\n    role: {}\n    sha256: {}\n",
        role.as_str(),
        hex(&digest(&token))
    );
    Ok((token, entry))
}

/// Makes a token and adds its entry to the token file `path` (created mode 0600 if absent;
/// replaced whole, through a temporary file, never half written). An existing file must load as
/// it is first, and the result must load too (a second token of one name is refused). Returns the
/// token, which nothing keeps.
pub fn add_token(path: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(TokenError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if existing.is_some() {
        Tokens::load(path)?;
    }
    let (token, entry) = new_token(name, role).map_err(|reason| TokenError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;
    let text = match existing {
        Some(t) if !t.trim().is_empty() && t.trim() != "tokens: []" => {
            format!("{t}{}{entry}", if t.ends_with('\n') { "" } else { "\n" })
        }
        _ => format!("tokens:\n{entry}"),
    };
    Tokens::parse(path, &text)?;
    let write = |source| TokenError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write)?;
    std::fs::rename(&tmp, path).map_err(write)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_by_its_hash_and_its_role_comes_with_it() {
        let (t1, e1) = new_token("grafana", Role::Viewer).unwrap();
        let (t2, e2) = new_token("ops", Role::Operator).unwrap();
        let text = format!("tokens:\n{e1}{e2}");
        assert!(!text.contains(&t1) && !text.contains(&t2), "the file holds no token");
        let tokens = Tokens::parse(Path::new("t.yaml"), &text).unwrap();
        assert_eq!(tokens.caller(&t1).unwrap().role, Role::Viewer);
        assert_eq!(
            tokens.caller(&t2).unwrap(),
            Caller {
                name: "ops".into(),
                role: Role::Operator
            }
        );
        assert_eq!(tokens.caller("lbt_wrong"), None);
        assert_eq!(tokens.caller(""), None);
    }

    #[test]
    fn a_bad_token_file_is_refused_whole_with_what_is_wrong() {
        let p = Path::new("t.yaml");
        let h = "a".repeat(64);
        for (text, want) in [
            (format!("tokens:\n  - {{name: x, role: admin, sha256: {h}}}\n"), "admin"),
            ("tokens:\n  - {name: x, role: viewer, sha256: abc}\n".to_string(), "64 hex"),
            (
                format!("tokens:\n  - {{name: x, role: viewer, sha256: {h}}}\n  - {{name: x, role: operator, sha256: {h}}}\n"),
                "two tokens",
            ),
            (format!("tokens:\n  - {{name: x, role: viewer, sha256: {h}, token: t}}\n"), "token"),
        ] {
            let e = Tokens::parse(p, &text).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("t.yaml"), "{e}");
        }
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.yaml");
        std::fs::write(&p, "tokens: []\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Tokens::load(&p), Err(TokenError::Exposed { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Tokens::load(&p).unwrap().is_empty());
    }
}
