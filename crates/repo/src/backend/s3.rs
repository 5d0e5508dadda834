use std::io::Read;
use std::time::Duration;

use rusty_s3::actions::{ListObjectsV2, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use lifeboat_model::redact::redact;

use super::{Backend, BackendError, Listed};

const SIGN_FOR: Duration = Duration::from_secs(600);
const ATTEMPTS: u32 = 4;

/// A repository in an S3-compatible bucket, under a key prefix.
///
/// Requests are signed with AWS Signature V4 (rusty-s3) and sent with a blocking HTTP client (ureq),
/// path-style, so any S3-compatible server works. A PUT is atomic on S3, which gives the atomic-write
/// guarantee. Transient failures (connection errors, 5xx, 429) are retried with backoff.
pub struct S3Backend {
    location: String,
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    agent: ureq::Agent,
}

impl S3Backend {
    /// Parses `s3://BUCKET[/PREFIX]` or `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`.
    pub fn from_location(location: &str) -> Result<Self, BackendError> {
        let invalid = |reason: &str| BackendError::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        let (endpoint, rest) = if let Some(rest) = location.strip_prefix("s3://") {
            let ep = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "https://s3.amazonaws.com".into());
            (ep, rest.to_string())
        } else if let Some(url) = location.strip_prefix("s3:") {
            let u = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
            let ep = format!("{}://{}", u.scheme(), u.host_str().ok_or_else(|| invalid("no host"))?)
                + &u.port().map(|p| format!(":{p}")).unwrap_or_default();
            (ep, u.path().trim_start_matches('/').to_string())
        } else {
            return Err(invalid("not an s3: location"));
        };
        let rest = rest.trim_matches('/');
        let (bucket_name, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b.to_string(), format!("{}/", p.trim_matches('/'))),
            None => (rest.to_string(), String::new()),
        };
        if bucket_name.is_empty() {
            return Err(invalid("no bucket name"));
        }
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        let endpoint = url::Url::parse(&endpoint).map_err(|e| invalid(&format!("endpoint: {e}")))?;
        let bucket = Bucket::new(endpoint, UrlStyle::Path, bucket_name, region).map_err(|e| invalid(&e.to_string()))?;
        let credentials = Credentials::from_env();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build();
        Ok(S3Backend {
            location: location.to_string(),
            bucket,
            credentials,
            prefix,
            agent,
        })
    }

    fn key(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    fn err(&self, op: &'static str, path: &str, e: ureq::Error) -> BackendError {
        match e {
            ureq::Error::Status(404, _) => BackendError::NotFound {
                location: self.location.clone(),
                path: path.to_string(),
            },
            ureq::Error::Status(code, resp) => {
                let body = resp.into_string().unwrap_or_default();
                // Only the error's code and message: an S3 error document may also quote the
                // request (`CanonicalRequest`, `StringToSign`, the access key id).
                let msg = extract_xml(&body, "Message")
                    .or_else(|| extract_xml(&body, "Code"))
                    .unwrap_or_else(|| redact(&body.chars().take(200).collect::<String>()));
                BackendError::Io {
                    location: self.location.clone(),
                    op,
                    path: path.to_string(),
                    message: format!("HTTP {code}: {msg}"),
                    retryable: code >= 500 || code == 429,
                }
            }
            ureq::Error::Transport(t) => BackendError::Io {
                location: self.location.clone(),
                op,
                path: path.to_string(),
                message: transport_reason(&t),
                retryable: true,
            },
        }
    }

    /// Runs `f` until it succeeds, fails for good, or the attempts are used up.
    fn retry<T>(&self, mut f: impl FnMut() -> Result<T, BackendError>) -> Result<T, BackendError> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(BackendError::Io { retryable: true, .. }) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                other => return other,
            }
        }
    }

    fn get(&self, path: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, BackendError> {
        self.retry(|| {
            let key = self.key(path);
            let url = self.bucket.get_object(self.credentials.as_ref(), &key).sign(SIGN_FOR);
            let mut req = self.agent.get(url.as_str());
            if let Some((off, len)) = range {
                req = req.set("Range", &format!("bytes={}-{}", off, off + len - 1));
            }
            let resp = req.call().map_err(|e| self.err("read", path, e))?;
            let mut buf = Vec::new();
            resp.into_reader()
                .take(u64::MAX)
                .read_to_end(&mut buf)
                .map_err(|e| BackendError::Io {
                    location: self.location.clone(),
                    op: "read",
                    path: path.to_string(),
                    message: redact(&e.to_string()),
                    retryable: true,
                })?;
            Ok(buf)
        })
    }
}

/// What went wrong with a request that got no answer, without its URL: ureq's `Display` of a
/// transport error starts with the URL, and every URL here is presigned (`X-Amz-Credential` names
/// the access key id, `X-Amz-Security-Token` is the session token, `X-Amz-Signature` allows the
/// request for [`SIGN_FOR`]).
fn transport_reason(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    let mut reason = t.kind().to_string();
    if let Some(m) = t.message() {
        reason = format!("{reason}: {}", redact(m));
    }
    if let Some(io) = t.source().and_then(|s| s.downcast_ref::<std::io::Error>()) {
        reason = format!("{reason}: {}", redact(&io.to_string()));
    }
    reason
}

fn extract_xml(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].to_string())
}

impl Backend for S3Backend {
    fn location(&self) -> &str {
        &self.location
    }

    fn create(&self) -> Result<(), BackendError> {
        let Some(creds) = self.credentials.as_ref() else {
            return Err(BackendError::InvalidLocation {
                location: self.location.clone(),
                reason: "no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
            });
        };
        let head = self.bucket.head_bucket(Some(creds)).sign(SIGN_FOR);
        match self.agent.head(head.as_str()).call() {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(404, _)) => {
                let action = self.bucket.create_bucket(creds);
                let url = action.sign(SIGN_FOR);
                self.agent
                    .put(url.as_str())
                    .send_string(&action.body())
                    .map(|_| ())
                    .map_err(|e| self.err("create bucket", "", e))
            }
            Err(e) => Err(self.err("reach bucket", "", e)),
        }
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, BackendError> {
        self.get(path, None)
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let buf = self.get(path, Some((offset, len)))?;
        if buf.len() as u64 != len {
            return Err(BackendError::Io {
                location: self.location.clone(),
                op: "read",
                path: path.to_string(),
                message: format!(
                    "file is truncated (wanted {len} bytes at offset {offset}, got {})",
                    buf.len()
                ),
                retryable: false,
            });
        }
        Ok(buf)
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        self.retry(|| {
            let key = self.key(path);
            let url = self.bucket.put_object(self.credentials.as_ref(), &key).sign(SIGN_FOR);
            self.agent
                .put(url.as_str())
                .send_bytes(data)
                .map(|_| ())
                .map_err(|e| self.err("write", path, e))
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError> {
        let prefix = format!("{}{}/", self.prefix, dir.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.retry(|| {
                let mut action: ListObjectsV2 = self.bucket.list_objects_v2(self.credentials.as_ref());
                action.with_prefix(prefix.as_str());
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let url = action.sign(SIGN_FOR);
                let body = self
                    .agent
                    .get(url.as_str())
                    .call()
                    .map_err(|e| self.err("list", dir, e))?
                    .into_string()
                    .map_err(|e| BackendError::Io {
                        location: self.location.clone(),
                        op: "list",
                        path: dir.to_string(),
                        message: e.to_string(),
                        retryable: true,
                    })?;
                ListObjectsV2::parse_response(&body).map_err(|e| BackendError::Io {
                    location: self.location.clone(),
                    op: "list",
                    path: dir.to_string(),
                    message: format!("unreadable listing: {e}"),
                    retryable: false,
                })
            })?;
            for c in page.contents {
                if let Some(name) = c.key.strip_prefix(&prefix) {
                    out.push(Listed {
                        name: name.to_string(),
                        size: c.size.unwrap_or(0),
                        modified: c
                            .last_modified
                            .as_deref()
                            .and_then(|t| {
                                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                            })
                            .map(std::time::SystemTime::from),
                    });
                }
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, path: &str) -> Result<(), BackendError> {
        self.retry(|| {
            let key = self.key(path);
            let url = self
                .bucket
                .delete_object(self.credentials.as_ref(), &key)
                .sign(SIGN_FOR);
            match self.agent.delete(url.as_str()).call() {
                Ok(_) | Err(ureq::Error::Status(404, _)) => Ok(()),
                Err(e) => Err(self.err("remove", path, e)),
            }
        })
    }

    fn exists(&self, path: &str) -> Result<bool, BackendError> {
        self.retry(|| {
            let key = self.key(path);
            let url = self.bucket.head_object(self.credentials.as_ref(), &key).sign(SIGN_FOR);
            match self.agent.head(url.as_str()).call() {
                Ok(_) => Ok(true),
                Err(ureq::Error::Status(404, _)) => Ok(false),
                Err(e) => Err(self.err("stat", path, e)),
            }
        })
    }

    /// S3 listings are strongly consistent on AWS since 2020, but not on every S3-compatible store;
    /// restic waits 200 ms before it checks for other locks, and so do we.
    fn listing_settle(&self) -> Duration {
        Duration::from_millis(200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint nothing listens on (port 9, discard): every request fails in transport, after
    /// the retries; the error must say what failed without the presigned URL's credentials.
    #[test]
    fn an_unreachable_s3_endpoint_error_names_no_credential() {
        let mut b = S3Backend::from_location("s3:http://127.0.0.1:9/bucket/prefix").unwrap();
        b.credentials = Some(Credentials::new_with_token(
            "AKIAMARKERKEYID",
            "MARKERSECRETKEY",
            "MARKERSESSIONTOKEN",
        ));
        let e = b.read("keys/abc").unwrap_err();
        let text = format!("{e} {e:?}");
        for secret in [
            "AKIAMARKERKEYID",
            "MARKERSECRETKEY",
            "MARKERSESSIONTOKEN",
            "X-Amz-",
            "Signature",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // Still clear: where, what, and why.
        assert!(text.contains("127.0.0.1:9"), "{text}");
        assert!(text.contains("keys/abc"), "{text}");
        assert!(text.to_lowercase().contains("connect"), "{text}");
    }

    #[test]
    fn error_documents_are_cut_to_their_message() {
        let b = S3Backend::from_location("s3:http://127.0.0.1:9/bucket").unwrap();
        let body = "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature does not match</Message>\
                    <AWSAccessKeyId>AKIAMARKER</AWSAccessKeyId><CanonicalRequest>X-Amz-Security-Token=MARKER</CanonicalRequest></Error>";
        let resp = ureq::Response::new(403, "Forbidden", body).unwrap();
        let e = b.err("read", "keys/x", ureq::Error::Status(403, resp));
        let text = e.to_string();
        assert!(
            text.contains("HTTP 403: The request signature does not match"),
            "{text}"
        );
        assert!(!text.contains("MARKER"), "{text}");
        // A body that is not an S3 error document is shown redacted.
        let resp =
            ureq::Response::new(502, "Bad Gateway", "proxy: GET http://u:MARKER@x/y?token=MARKER failed").unwrap();
        let text = b.err("read", "keys/x", ureq::Error::Status(502, resp)).to_string();
        assert!(text.contains("proxy: GET http://x/y failed"), "{text}");
        assert!(!text.contains("MARKER"), "{text}");
    }
}
