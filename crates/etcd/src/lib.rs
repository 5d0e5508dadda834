//! etcd snapshots: `backup etcd` streams a snapshot from etcd's maintenance API into the repository.
//!
//! The snapshot is read through etcd's gRPC gateway (`POST /v3/maintenance/snapshot`, a stream of
//! JSON messages with base64 pieces), which every etcd 3.4+ serves on its client URL, so no gRPC
//! stack or code generation is needed. etcd ends a snapshot with the SHA-256 of everything before
//! it; the backup checks that hash and fails without writing a snapshot when it does not match.
//!
//! [`coord`] is the other use of etcd: coordination of `serve` instances (a lease, leader
//! election, fencing tokens, published verdicts) through the same gateway.
//!
//! A snapshot of kind `etcd` holds `etcd.json` (the [`Manifest`]) and `etcd/snapshot.db`, the file
//! `etcdctl snapshot restore` takes; `restore SNAPSHOT --to files:DIR` writes it back.
#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub mod coord;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lifeboat_fs::archive::TreeAssembler;
use lifeboat_fs::chunk::Chunker;
use lifeboat_model::{FileName, Id, Node, NodeKind, Snapshot, SnapshotSummary};
use lifeboat_repo::Repository;
use serde::{Deserialize, Serialize};

/// Errors of the etcd snapshot engine.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A certificate or key file cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// etcd cannot be reached or answered with an error (retry when it is reachable).
    #[error("etcd at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The snapshot stream is malformed or its hash does not match: nothing was written.
    #[error("etcd at {endpoint}: the snapshot is not intact: {reason}")]
    Corrupt { endpoint: String, reason: String },
    #[error(transparent)]
    Repo(#[from] lifeboat_repo::RepoError),
}

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// Client URL: `http://HOST:2379` or `https://HOST:2379`.
    pub url: String,
    /// CA certificate (PEM) for an https endpoint.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (PEM), when etcd asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What an etcd snapshot records (`etcd.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub endpoint: String,
    /// etcd's version, cluster and member id, and revision when the snapshot was taken.
    pub version: String,
    pub cluster_id: String,
    pub member_id: String,
    pub revision: String,
    /// Bytes of the snapshot file (including its trailing 32-byte SHA-256).
    pub size: u64,
    /// The SHA-256 etcd appended, hex; checked against the content before the snapshot was written.
    pub sha256: String,
}

/// The result of a backup.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    pub manifest: Manifest,
}

/// An HTTP client for `ep` (TLS from its files), with an overall deadline per request when
/// `timeout` is given (a snapshot stream has none).
fn agent(ep: &Endpoint, timeout: Option<std::time::Duration>) -> Result<ureq::Agent, EtcdError> {
    agent_with(ep, std::time::Duration::from_secs(10), timeout)
}

/// [`agent`] with its own connect timeout.
fn agent_with(
    ep: &Endpoint,
    connect: std::time::Duration,
    timeout: Option<std::time::Duration>,
) -> Result<ureq::Agent, EtcdError> {
    let mut b = ureq::AgentBuilder::new().timeout_connect(connect);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if ep.url.starts_with("https://") {
        let tls = |e: String| EtcdError::Tls(e);
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &ep.cacert {
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| tls(format!("{}: {e}", ca.display())))?
            {
                roots
                    .add(c.map_err(|e| tls(format!("{}: {e}", ca.display())))?)
                    .map_err(|e| tls(format!("{}: {e}", ca.display())))?;
            }
        } else {
            return Err(tls("an https endpoint needs --cacert".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&ep.cert, &ep.key) {
            (Some(cert), Some(key)) => {
                use rustls_pki_types::pem::PemObject;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                    .map_err(|e| tls(format!("{}: {e}", cert.display())))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls(format!("{}: {e}", cert.display())))?;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| tls(e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(tls("--cert and --key go together".into())),
        };
        b = b.tls_config(Arc::new(config));
    }
    Ok(b.build())
}

/// The decoded snapshot bytes from the gateway's stream of `{"result":{"blob": ...}}` messages,
/// hashing everything but the last 32 bytes as it goes.
struct SnapshotReader<R: Read> {
    messages: serde_json::StreamDeserializer<'static, serde_json::de::IoRead<R>, serde_json::Value>,
    pending: Vec<u8>,
    pos: usize,
    /// The last 32 bytes seen (the hash, once the stream ends).
    tail: Vec<u8>,
    hasher: ring::digest::Context,
    total: u64,
}

impl<R: Read> SnapshotReader<R> {
    fn new(r: R) -> Self {
        SnapshotReader {
            messages: serde_json::Deserializer::from_reader(r).into_iter(),
            pending: Vec::new(),
            pos: 0,
            tail: Vec::new(),
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            total: 0,
        }
    }

    /// Takes a decoded piece: everything but the newest 32 bytes goes into the hash.
    fn take(&mut self, blob: Vec<u8>) {
        self.tail.extend_from_slice(&blob);
        if self.tail.len() > 32 {
            let cut = self.tail.len() - 32;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
        self.total += blob.len() as u64;
        self.pending = blob;
        self.pos = 0;
    }
}

impl<R: Read> Read for SnapshotReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.pending.len() {
            let msg = match self.messages.next() {
                None => return Ok(0),
                Some(m) => m.map_err(|e| io::Error::other(format!("bad message in the snapshot stream: {e}")))?,
            };
            if let Some(err) = msg.get("error") {
                return Err(io::Error::other(format!("etcd reported: {err}")));
            }
            let blob = msg.pointer("/result/blob").and_then(|b| b.as_str()).unwrap_or_default();
            let blob = B64
                .decode(blob)
                .map_err(|e| io::Error::other(format!("bad base64 in the snapshot stream: {e}")))?;
            self.take(blob);
        }
        let n = (self.pending.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Takes a snapshot of the etcd at `ep` into a new repository snapshot.
pub fn backup(repo: &Repository, ep: &Endpoint, tags: &[String]) -> Result<BackupOutcome, EtcdError> {
    let started = Instant::now();
    let agent = agent(ep, None)?;
    let base = ep.url.trim_end_matches('/');
    let unreachable = |reason: String| EtcdError::Unreachable {
        endpoint: ep.url.clone(),
        reason,
    };
    let status: serde_json::Value = agent
        .post(&format!("{base}/v3/maintenance/status"))
        .send_string("{}")
        .map_err(|e| unreachable(e.to_string()))
        .and_then(|r| {
            serde_json::from_reader(r.into_reader()).map_err(|e| unreachable(format!("bad status answer: {e}")))
        })?;
    let s = |p: &str| {
        status
            .pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let resp = agent
        .post(&format!("{base}/v3/maintenance/snapshot"))
        .send_string("{}")
        .map_err(|e| unreachable(e.to_string()))?;
    let mut reader = SnapshotReader::new(resp.into_reader());
    let chunker = Chunker::new(repo);
    let content = chunker
        .save_stream(&mut reader, &|_| {})?
        .map_err(|e| EtcdError::Corrupt {
            endpoint: ep.url.clone(),
            reason: e.to_string(),
        })?;
    let corrupt = |reason: String| EtcdError::Corrupt {
        endpoint: ep.url.clone(),
        reason,
    };
    if reader.total < 32 {
        return Err(corrupt(format!("only {} bytes arrived", reader.total)));
    }
    let digest = reader.hasher.clone().finish();
    if digest.as_ref() != reader.tail.as_slice() {
        return Err(corrupt("its SHA-256 does not match the hash etcd appended".into()));
    }
    let manifest = Manifest {
        format: 1,
        endpoint: ep.url.clone(),
        version: s("/version"),
        cluster_id: s("/header/cluster_id"),
        member_id: s("/header/member_id"),
        revision: s("/header/revision"),
        size: reader.total,
        sha256: reader.tail.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let now_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    let mut asm = TreeAssembler::new();
    let mut node = Node::new(FileName::default(), NodeKind::File);
    node.mode = 0o600;
    node.size = reader.total;
    node.mtime_ns = now_ns;
    node.content = content;
    asm.add(b"etcd/snapshot.db", node);
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
    asm.add_bytes(&chunker, b"etcd.json", &json, now_ns)?;
    let root = asm.finish(repo)?;
    let mut snapshot = Snapshot {
        time: time::OffsetDateTime::now_utc(),
        kind: "etcd".into(),
        hostname: manifest.member_id.clone(),
        username: lifeboat_repo::username(),
        paths: vec![ep.url.clone()],
        tags: tags.to_vec(),
        tree: root.subtree.expect("finish stores the root"),
        parent: None,
        program_version: concat!("lifeboat ", env!("CARGO_PKG_VERSION")).into(),
        summary: SnapshotSummary {
            files: 2,
            dirs: 1,
            files_read: 1,
            bytes_total: reader.total,
            bytes_read: reader.total,
            ..Default::default()
        },
    };
    let snapshot_id = repo.commit_snapshot(&mut snapshot, started)?;
    Ok(BackupOutcome {
        snapshot_id,
        snapshot,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(data: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in data.chunks(piece) {
            out.extend_from_slice(
                format!(
                    "{{\"result\":{{\"remaining_bytes\":\"0\",\"blob\":\"{}\"}}}}\n",
                    B64.encode(c)
                )
                .as_bytes(),
            );
        }
        out
    }

    fn with_hash(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        v
    }

    #[test]
    fn reader_decodes_pieces_and_checks_the_trailing_hash() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let snap = with_hash(&body);
        let s = stream(&snap, 4096);
        let mut r = SnapshotReader::new(s.as_slice());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, snap);
        assert_eq!(r.hasher.clone().finish().as_ref(), r.tail.as_slice());
        // One flipped byte: the hash no longer matches.
        let mut bad = snap.clone();
        bad[500] ^= 1;
        let s = stream(&bad, 777);
        let mut r = SnapshotReader::new(s.as_slice());
        r.read_to_end(&mut Vec::new()).unwrap();
        assert_ne!(r.hasher.clone().finish().as_ref(), r.tail.as_slice());
    }

    #[test]
    fn an_error_message_in_the_stream_is_an_error() {
        let s = b"{\"error\":{\"grpc_code\":14,\"message\":\"unavailable\"}}".to_vec();
        let mut r = SnapshotReader::new(s.as_slice());
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }
}
