//! Keeping secrets out of messages: every crate that puts a URL or someone else's output into an
//! error, a log line, a journal step, a report or a runbook passes it through here first.
//!
//! - [`shown_url`]: a URL without user info, query and fragment, where tokens, passwords, presigned
//!   signatures (`X-Amz-Credential`, `X-Amz-Security-Token`, `X-Amz-Signature`) and API keys hide.
//! - [`redact`]: free text (a hook's stderr, a server's error body) with every URL shown as
//!   [`shown_url`] shows it, and the value of every `NAME=VALUE` / `NAME: VALUE` whose name looks
//!   like a secret (password, secret, token, key, credential, auth, signature) and of every
//!   `Bearer`/`Basic` credential replaced by `***`.
//!
//! [`redact`] is a safety net for text Lifeboat does not control, not a guarantee: a program that
//! prints a bare secret with no telling name around it cannot be recognised.

/// What a redacted value is replaced with.
pub const REDACTED: &str = "***";

/// `url` without user info, query and fragment. Text that does not parse as a URL is cut at the
/// first `?` or `#`, and anything up to an `@` after the scheme is removed.
pub fn shown_url(url: &str) -> String {
    if let Ok(u) = url::Url::parse(url) {
        return shown_parsed_url(&u);
    }
    let mut s = url;
    if let Some(i) = s.find(['?', '#']) {
        s = &s[..i];
    }
    match s.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let rest = match rest[..authority_end].rfind('@') {
                Some(at) => &rest[at + 1..],
                None => rest,
            };
            format!("{scheme}://{rest}")
        }
        None => s.to_string(),
    }
}

/// A parsed URL without user info, query and fragment.
pub fn shown_parsed_url(u: &url::Url) -> String {
    let mut s = u.clone();
    let _ = s.set_username("");
    let _ = s.set_password(None);
    s.set_query(None);
    s.set_fragment(None);
    s.to_string()
}

/// Words in a name that make its value a secret (compared in lower case).
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "access-key",
    "accesskey",
    "private_key",
    "credential",
    "auth",
    "signature",
    "session",
    "cookie",
];

fn secret_name(name: &str) -> bool {
    let n = name
        .trim_start_matches('-')
        .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-')
        .to_ascii_lowercase();
    !n.is_empty() && SECRET_NAMES.iter().any(|w| n.contains(w))
}

/// Characters that end a URL inside text.
fn url_end(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')' | ']' | '}' | ',' | ';')
}

/// `text` with URLs shown without their secrets and secret-looking values replaced (see the module
/// documentation).
pub fn redact(text: &str) -> String {
    let urls = redact_urls(text);
    redact_values(&urls)
}

fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` before `://`.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        if start == i {
            out.push_str(&rest[..i + 3]);
            rest = &rest[i + 3..];
            continue;
        }
        let end = rest[i..].find(url_end).map_or(rest.len(), |e| i + e);
        out.push_str(&rest[..start]);
        out.push_str(&shown_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn redact_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Whether the next word is a value to hide (after `password:` or `Bearer`).
    let mut hide_next = false;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, hide_next: &mut bool| {
        if word.is_empty() {
            return;
        }
        let lower = word.to_ascii_lowercase();
        let scheme = matches!(lower.as_str(), "bearer" | "basic" | "token");
        if *hide_next {
            out.push_str(REDACTED);
            // `Authorization: Bearer X`: X too.
            *hide_next = scheme;
        } else if let Some((name, _)) = word.split_once('=').filter(|(n, _)| secret_name(n)) {
            out.push_str(name);
            out.push('=');
            out.push_str(REDACTED);
        } else if let Some((name, value)) = word.split_once(':').filter(|(n, _)| secret_name(n)) {
            out.push_str(name);
            out.push(':');
            if value.is_empty() {
                *hide_next = true;
            } else {
                out.push_str(REDACTED);
            }
        } else {
            *hide_next = scheme;
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out, &mut hide_next);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out, &mut hide_next);
    out
}

/// A warning when the secret file `path` can be read by its group or by everyone (as OpenSSH
/// warns of a private key), naming the file and its mode; `None` when only its owner can read it
/// or it cannot be examined (reading it then fails with its own error).
pub fn loose_permissions(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by {} (mode {mode:04o}); a secret file should be readable by its owner only: chmod 600 {}",
            path.display(),
            if mode & 0o007 != 0 {
                "every local user"
            } else {
                "its group"
            },
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_readable_secret_files_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("lifeboat-redact-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("pw");
        std::fs::write(&f, "x").unwrap();
        for (mode, want) in [
            (0o600, None),
            (0o400, None),
            (0o640, Some("its group")),
            (0o644, Some("every local user")),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = loose_permissions(&f);
            match want {
                None => assert_eq!(w, None, "{mode:o}"),
                Some(who) => {
                    let w = w.unwrap();
                    assert!(
                        w.contains(who) && w.contains(&format!("{mode:04o}")) && w.contains("chmod 600"),
                        "{w}"
                    );
                }
            }
        }
        assert_eq!(loose_permissions(&d.join("missing")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn urls_lose_user_info_query_and_fragment() {
        assert_eq!(
            shown_url("https://user:pw@hooks.example.test/lifeboat?token=abc#x"),
            "https://hooks.example.test/lifeboat"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:9/bucket/p/keys/x?X-Amz-Credential=AKIA%2F&X-Amz-Signature=ff"),
            "http://127.0.0.1:9/bucket/p/keys/x"
        );
        // Not parseable (a template): cut by hand.
        assert_eq!(shown_url("http://u:p@{site}:8080/x?k=v"), "http://{site}:8080/x");
        assert_eq!(shown_url("no url here?x"), "no url here");
    }

    #[test]
    fn text_keeps_its_words_and_loses_its_secrets() {
        let t = "connect failed: psql postgresql://app:MARKER1@db:5432/x?sslpassword=MARKER2 \
                 PGPASSWORD=MARKER3 --token=MARKER4 password: MARKER5 Authorization: Bearer MARKER6 \
                 (see https://example.test/doc), exit 2";
        let r = redact(t);
        for m in ["MARKER1", "MARKER2", "MARKER3", "MARKER4", "MARKER5", "MARKER6"] {
            assert!(!r.contains(m), "{m} in {r}");
        }
        assert!(
            r.starts_with("connect failed: psql postgresql://db:5432/x PGPASSWORD=*** --token=***"),
            "{r}"
        );
        assert!(r.contains("(see https://example.test/doc), exit 2"), "{r}");
        // Ordinary text stays as it is.
        let plain = "ERROR:  relation \"items\" does not exist\nLINE 1: select * from items";
        assert_eq!(redact(plain), plain);
        assert_eq!(redact(""), "");
    }
}
