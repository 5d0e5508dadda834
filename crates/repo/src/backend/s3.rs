use std::io::Read;
use std::time::Duration;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rusty_s3::actions::{ListObjectsV2, ListObjectsV2Response, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use lifeboat_model::redact::redact;

use super::{Backend, BackendError, CaBundleError, Listed};
use crate::crypto::{MAX_PLAINTEXT, SEAL_OVERHEAD};

const CHECKSUM_HEADER: &str = "x-amz-checksum-sha256";
const SIGN_FOR: Duration = Duration::from_secs(600);
const ATTEMPTS: u32 = 4;
/// The most a whole-file read accepts when the caller does not know the file's size: no repository
/// file but a pack (read with [`Backend::read_sized`]) is larger than the largest sealed envelope.
const MAX_READ: u64 = (MAX_PLAINTEXT + SEAL_OVERHEAD) as u64;

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
    /// Parses `s3://BUCKET[/PREFIX]` or `s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]`. An https
    /// endpoint also trusts the CA certificates of the PEM file `AWS_CA_BUNDLE` names (as the AWS
    /// SDKs and CLI do), for servers with a private CA (MinIO, Ceph, Garage behind a proxy).
    pub fn from_location(location: &str) -> Result<Self, BackendError> {
        let bundle = std::env::var_os("AWS_CA_BUNDLE").filter(|b| !b.is_empty());
        Self::from_location_with_ca(location, bundle.as_deref().map(Path::new))
    }

    /// Like [`S3Backend::from_location`], with the CA bundle given instead of taken from
    /// `AWS_CA_BUNDLE`: `None` trusts the built-in web roots only.
    pub fn from_location_with_ca(location: &str, ca_bundle: Option<&Path>) -> Result<Self, BackendError> {
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
        let https = endpoint.scheme() == "https";
        let bucket = Bucket::new(endpoint, UrlStyle::Path, bucket_name, region).map_err(|e| invalid(&e.to_string()))?;
        let credentials = Credentials::from_env();
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout(Duration::from_secs(300));
        if let Some(path) = ca_bundle.filter(|_| https) {
            let config = tls_config(path).map_err(|source| BackendError::CaBundle {
                location: location.to_string(),
                path: path.display().to_string(),
                source,
            })?;
            agent = agent.tls_config(config);
        }
        let agent = agent.build();
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

    /// GETs `path` (or a range of it), refusing a body longer than `max` bytes: the server's
    /// `Content-Length` is checked first and the body is read no further than `max + 1` bytes, so a
    /// damaged or hostile endpoint cannot make this process allocate more than it expects.
    fn get(&self, path: &str, range: Option<(u64, u64)>, max: u64) -> Result<Vec<u8>, BackendError> {
        self.retry(|| {
            let key = self.key(path);
            let url = self.bucket.get_object(self.credentials.as_ref(), &key).sign(SIGN_FOR);
            let mut req = self.agent.get(url.as_str());
            if let Some((off, len)) = range {
                req = req.set("Range", &format!("bytes={}-{}", off, off + len - 1));
            }
            let resp = req.call().map_err(|e| self.err("read", path, e))?;
            let too_long = |sent: String| BackendError::Io {
                location: self.location.clone(),
                op: "read",
                path: path.to_string(),
                message: format!("the server sends {sent} bytes, more than the {max} expected"),
                retryable: false,
            };
            let declared = resp.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(n) = declared.filter(|&n| n > max) {
                return Err(too_long(n.to_string()));
            }
            let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(max) as usize);
            resp.into_reader()
                .take(max + 1)
                .read_to_end(&mut buf)
                .map_err(|e| BackendError::Io {
                    location: self.location.clone(),
                    op: "read",
                    path: path.to_string(),
                    message: redact(&e.to_string()),
                    retryable: true,
                })?;
            if buf.len() as u64 > max {
                return Err(too_long("at least ".to_string() + &buf.len().to_string()));
            }
            Ok(buf)
        })
    }

    /// Lists one page of `prefix` from `token` on. A page that says it is truncated but has no
    /// continuation token is unreadable (rusty-s3 refuses it).
    fn list_page(&self, dir: &str, prefix: &str, token: Option<&str>) -> Result<ListObjectsV2Response, BackendError> {
        self.retry(|| {
            let mut action: ListObjectsV2 = self.bucket.list_objects_v2(self.credentials.as_ref());
            action.with_prefix(prefix);
            if let Some(t) = token {
                action.with_continuation_token(t);
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
        })
    }
}

/// TLS settings trusting the built-in web roots (those ureq uses by default) and the CA
/// certificates of the PEM file `bundle`.
fn tls_config(bundle: &Path) -> Result<Arc<rustls::ClientConfig>, CaBundleError> {
    use rustls_pki_types::pem::{self, PemObject};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Read first, so that a missing file is told apart from a malformed one.
    let text = std::fs::read(bundle).map_err(CaBundleError::Read)?;
    let mut added = 0;
    for (i, cert) in rustls_pki_types::CertificateDer::pem_slice_iter(&text).enumerate() {
        // The PEM errors quote the offending line: only their kind is kept.
        let cert = cert.map_err(|e| {
            CaBundleError::Malformed(match e {
                pem::Error::MissingSectionEnd { .. } => "a section has no END line",
                pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
                pem::Error::Base64Decode(_) => "a section is not base64",
                pem::Error::SectionTooLarge => "a section is too large",
                _ => "unreadable",
            })
        })?;
        roots
            .add(cert)
            .map_err(|source| CaBundleError::Unusable { index: i + 1, source })?;
        added += 1;
    }
    if added == 0 {
        return Err(CaBundleError::Empty);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The base64 SHA-256 of `data`, as the `x-amz-checksum-sha256` header carries it.
fn checksum_sha256(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, data))
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
        self.get(path, None, MAX_READ)
    }

    fn read_sized(&self, path: &str, size: u64) -> Result<Vec<u8>, BackendError> {
        self.get(path, None, size)
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let buf = self.get(path, Some((offset, len)), len)?;
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

    /// Sends the body's SHA-256 as `x-amz-checksum-sha256` (signed, as SigV4 requires of every
    /// `x-amz-*` header): the server refuses an upload damaged on the way instead of storing it.
    fn write(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        let checksum = checksum_sha256(data);
        self.retry(|| {
            let key = self.key(path);
            let mut action = self.bucket.put_object(self.credentials.as_ref(), &key);
            action.headers_mut().insert(CHECKSUM_HEADER, checksum.as_str());
            let url = action.sign(SIGN_FOR);
            self.agent
                .put(url.as_str())
                .set(CHECKSUM_HEADER, &checksum)
                .send_bytes(data)
                .map(|_| ())
                .map_err(|e| self.err("write", path, e))
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<Listed>, BackendError> {
        let prefix = format!("{}{}/", self.prefix, dir.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let page = self.list_page(dir, &prefix, token.as_deref())?;
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
                // A listing that would never end is refused rather than looped over.
                Some(t) if !seen.insert(t.clone()) => {
                    return Err(BackendError::Io {
                        location: self.location.clone(),
                        op: "list",
                        path: dir.to_string(),
                        message: format!(
                            "the server gave the same continuation token twice (after {} pages): the listing would never end",
                            seen.len()
                        ),
                        retryable: false,
                    })
                }
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
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// One request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Request {
        line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1: every request (one per connection) is recorded and
    /// answered with the raw response bytes `answer` returns for it.
    fn serve(answer: impl Fn(&Request, usize) -> Vec<u8> + Send + 'static) -> (u16, Arc<Mutex<Vec<Request>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let mut req = Request {
                    line: line.trim_end().to_string(),
                    headers,
                    body: Vec::new(),
                };
                let len: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                req.body.resize(len, 0);
                if reader.read_exact(&mut req.body).is_err() {
                    continue;
                }
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(req.clone());
                    log.len()
                };
                let _ = conn.write_all(&answer(&req, n));
            }
        });
        (port, seen)
    }

    fn response(headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{headers}\r\n").into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn with_length(body: &[u8]) -> Vec<u8> {
        response(&format!("Content-Length: {}\r\n", body.len()), body)
    }

    fn listing(keys: &[&str], truncated: bool, token: Option<&str>) -> Vec<u8> {
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name><Prefix>p/d/</Prefix>",
        );
        xml += &format!(
            "<KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
            keys.len()
        );
        for k in keys {
            xml += &format!(
                "<Contents><Key>p/d/{k}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>\
                 <ETag>\"x\"</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>"
            );
        }
        if let Some(t) = token {
            xml += &format!("<NextContinuationToken>{t}</NextContinuationToken>");
        }
        xml += "</ListBucketResult>";
        with_length(xml.as_bytes())
    }

    fn backend(port: u16) -> S3Backend {
        let mut b = S3Backend::from_location(&format!("s3:http://127.0.0.1:{port}/bucket/p")).unwrap();
        b.credentials = Some(Credentials::new("AKIATESTKEYID", "TESTSECRETKEY"));
        b
    }

    fn token_of(req: &Request) -> Option<String> {
        let url = url::Url::parse(&format!("http://x{}", req.line.split(' ').nth(1).unwrap())).unwrap();
        let token = url.query_pairs().find(|(k, _)| k == "continuation-token");
        token.map(|(_, v)| v.into_owned())
    }

    #[test]
    fn a_listing_in_several_pages_is_followed_to_its_end() {
        let (port, seen) = serve(|req, _| match token_of(req).as_deref() {
            None => listing(&["a"], true, Some("t1")),
            Some("t1") => listing(&["b"], true, Some("t2")),
            _ => listing(&["c"], false, None),
        });
        let names: Vec<String> = backend(port).list("d").unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    /// Finding 19: a server that hands out the same continuation token again would keep the
    /// listing going for ever; it is refused. (After ten pages this server ends the listing, so
    /// without the guard the listing would succeed and the test fail.)
    #[test]
    fn a_listing_whose_continuation_token_repeats_is_an_error() {
        let (port, seen) = serve(|_, n| {
            if n < 10 {
                listing(&[&format!("k{n}")], true, Some("again"))
            } else {
                listing(&[], false, None)
            }
        });
        let e = backend(port).list("d").unwrap_err().to_string();
        assert!(e.contains("same continuation token twice"), "{e}");
        assert!(e.contains("cannot list d"), "{e}");
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "refused at the first repeat, not retried"
        );
    }

    /// A page that says it is truncated but gives no token cannot be continued: an error, not a
    /// listing taken as complete.
    #[test]
    fn a_truncated_listing_without_a_token_is_an_error() {
        let (port, seen) = serve(|_, _| listing(&["a"], true, None));
        let e = backend(port).list("d").unwrap_err().to_string();
        assert!(e.contains("unreadable listing"), "{e}");
        assert!(e.contains("continuation_token"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1, "not retried");
    }

    /// Finding 19: a GET body is read no further than what the caller expects (a range's length,
    /// a pack's size from the index or the listing), with or without a `Content-Length`.
    #[test]
    fn a_get_body_longer_than_expected_is_refused() {
        let body = vec![b'x'; 1000];
        let (port, _) = serve(move |req, _| {
            if req.line.contains("nolength") {
                response("", &body)
            } else {
                with_length(&body)
            }
        });
        let b = backend(port);
        for path in ["data/withlength", "data/nolength"] {
            let e = b.read_range(path, 0, 10).unwrap_err().to_string();
            assert!(e.contains("more than the 10 expected"), "{path}: {e}");
            let e = b.read_sized(path, 999).unwrap_err().to_string();
            assert!(e.contains("more than the 999 expected"), "{path}: {e}");
            assert!(e.contains(path), "{e}");
            assert_eq!(b.read_sized(path, 1000).unwrap().len(), 1000, "{path}");
            assert_eq!(b.read(path).unwrap().len(), 1000, "{path}");
        }
        // The fixed cap of a read of unknown size: whatever a reader would accept, no more.
        assert_eq!(MAX_READ, (MAX_PLAINTEXT + SEAL_OVERHEAD) as u64);
    }

    /// Finding 19: every PUT carries the body's SHA-256, signed, so the server refuses a body
    /// damaged on the way.
    #[test]
    fn puts_carry_a_signed_sha256_checksum_of_their_body() {
        let (port, seen) = serve(|_, _| with_length(b""));
        backend(port).write("snapshots/x", b"lifeboat").unwrap();
        let reqs = seen.lock().unwrap();
        let put = &reqs[0];
        assert!(put.line.starts_with("PUT /bucket/p/snapshots/x?"), "{}", put.line);
        assert_eq!(put.body, b"lifeboat");
        // base64 of SHA-256("lifeboat"), computed independently.
        assert_eq!(
            put.header("x-amz-checksum-sha256"),
            Some("VbJ4RQDITyrUYRcl08FHggr/lwo8QKubyAZCKUz534g=")
        );
        let url = url::Url::parse(&format!("http://x{}", put.line.split(' ').nth(1).unwrap())).unwrap();
        let signed: String = url
            .query_pairs()
            .find(|(k, _)| k == "X-Amz-SignedHeaders")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        assert_eq!(signed, "host;x-amz-checksum-sha256");
    }

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

    /// The error and its causes, as `lifeboat` prints them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text += &format!(": {c}");
            cause = c.source();
        }
        text
    }

    fn bundle_error(bundle: &Path) -> String {
        match S3Backend::from_location_with_ca("s3:https://127.0.0.1:9/bucket", Some(bundle)) {
            Err(e @ BackendError::CaBundle { .. }) => chain(&e),
            Err(e) => panic!("expected a CA bundle error, got {e}"),
            Ok(_) => panic!("expected a CA bundle error for {}", bundle.display()),
        }
    }

    /// Finding 19: a CA bundle that is missing or unusable is one clear error naming the file and
    /// why, never quoting what is in it.
    #[test]
    fn a_missing_or_unparsable_ca_bundle_is_an_error_naming_the_file_not_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = bundle_error(&missing);
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("AWS_CA_BUNDLE") && e.contains("cannot read it"), "{e}");

        let cases = [
            (
                "garbage.pem",
                "MARKER not a certificate\n".to_string(),
                "holds no PEM certificate",
            ),
            (
                "bad-base64.pem",
                "-----BEGIN CERTIFICATE-----\nMARKER!!!\n-----END CERTIFICATE-----\n".to_string(),
                "not a PEM file of certificates",
            ),
            (
                "no-end.pem",
                "-----BEGIN CERTIFICATE-----\nTUFSS0VS\n".to_string(),
                "not a PEM file of certificates",
            ),
            (
                "not-der.pem",
                // base64 of "MARKER MARKER MARKER": PEM, but not a certificate.
                "-----BEGIN CERTIFICATE-----\nTUFSS0VSIE1BUktFUiBNQVJLRVI=\n-----END CERTIFICATE-----\n".to_string(),
                "certificate 1 in it is not a usable CA certificate",
            ),
        ];
        for (name, content, why) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let e = bundle_error(&path);
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(why), "{name}: {e}");
            assert!(!e.contains("MARKER") && !e.contains("TUFSS0VS"), "{name}: {e}");
        }
        // An http endpoint has no use for it.
        assert!(S3Backend::from_location_with_ca("s3:http://127.0.0.1:9/bucket", Some(&missing)).is_ok());
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("this test needs the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An https server on 127.0.0.1 with a certificate for 127.0.0.1 signed by a CA of its own
    /// (made with the openssl command in `dir`): returns the port and the CA's PEM file. It answers
    /// every request with `body`.
    fn tls_server(dir: &Path, body: &'static [u8]) -> (u16, std::path::PathBuf) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            dir,
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=lifeboat test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                &["req"],
                &ec[..],
                &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config.clone()).unwrap(), tcp);
                // Read the request head; a client that refuses the certificate ends here.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if !head.ends_with(b"\r\n\r\n") {
                    continue;
                }
                let _ = tls.write_all(&with_length(body));
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (port, dir.join("ca.pem"))
    }

    /// Finding 19: with the CA bundle the server's certificate verifies; without it (web roots
    /// only) the same request fails in TLS verification.
    #[test]
    fn an_https_endpoint_with_a_private_ca_verifies_only_with_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let (port, ca) = tls_server(dir.path(), b"sealed bytes");
        let location = format!("s3:https://127.0.0.1:{port}/bucket/p");

        let with = S3Backend::from_location_with_ca(&location, Some(&ca)).unwrap();
        assert_eq!(with.read("config").unwrap(), b"sealed bytes");

        let without = S3Backend::from_location_with_ca(&location, None).unwrap();
        let e = without.read("config").unwrap_err().to_string();
        assert!(e.contains("certificate") && e.contains("UnknownIssuer"), "{e}");
    }
}
