//! Test support: a real repository in a temporary directory, and snapshots with chosen tags,
//! times and error counts.
use lifeboat_model::{FileName, Id, Node, NodeKind, Snapshot, SnapshotSummary, Tree};
use lifeboat_repo::{BlobKind, Repository};
use time::OffsetDateTime;

pub fn repo(dir: &std::path::Path) -> Repository {
    let backend = lifeboat_repo::open_location(dir.to_str().unwrap()).unwrap();
    let kdf = lifeboat_repo::keys::KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    Repository::init(backend, b"pw", kdf).unwrap()
}

/// Stores a snapshot of one file holding `content`, taken `age_secs` before a fixed time.
pub fn snapshot(repo: &Repository, content: &[u8], age_secs: i64, tags: &[&str], errors: u64) -> Id {
    let (blob, _) = repo.save_blob(BlobKind::Data, content).unwrap();
    let mut file = Node::new(FileName(b"f".to_vec()), NodeKind::File);
    file.size = content.len() as u64;
    file.content = vec![blob];
    let (tree, _) = repo.save_tree(&Tree { nodes: vec![file] }).unwrap();
    let snap = Snapshot {
        time: OffsetDateTime::from_unix_timestamp(1_800_000_000 - age_secs).unwrap(),
        kind: "docker".into(),
        hostname: "h".into(),
        username: String::new(),
        paths: vec![],
        tags: tags.iter().map(|t| t.to_string()).collect(),
        tree,
        parent: None,
        program_version: String::new(),
        summary: SnapshotSummary {
            errors,
            ..Default::default()
        },
    };
    repo.save_snapshot(&snap).unwrap()
}

/// Flips one bit in the middle of every pack file that holds `blob`.
pub fn damage(repo: &Repository, dir: &std::path::Path, blob: &Id) {
    let loc = repo.locate(blob).expect("the blob is indexed");
    let hex = loc.pack.to_hex();
    let path = dir.join("data").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (loc.offset + loc.length as u64 / 2) as usize;
    bytes[at] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
}
