//! Content-defined chunking of file data into repository blobs, shared by every engine that stores
//! file content (the file walker, tar streams of container volumes).
use std::io::{self, Read};

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
use lifeboat_model::Id;
use lifeboat_repo::{BlobKind, RepoError, Repository};
use rayon::prelude::*;

/// Chunks of a stream processed in parallel at once (bounds memory to this many chunks).
const CHUNKS_IN_FLIGHT: usize = 4;

/// Cuts data with the repository's chunker parameters and seed and stores the chunks as data blobs.
///
/// Guarantees: the same bytes give the same cut points whether they come as one slice
/// ([`Chunker::save_slice`]) or as a stream ([`Chunker::save_stream`]), so content deduplicates
/// across engines. Chunks are compressed and encrypted on all cores.
#[derive(Clone, Copy)]
pub struct Chunker<'a> {
    repo: &'a Repository,
    min: u32,
    avg: u32,
    max: u32,
    seed: u64,
}

impl<'a> Chunker<'a> {
    pub fn new(repo: &'a Repository) -> Self {
        let cfg = repo.config();
        Chunker {
            repo,
            min: cfg.chunk_min,
            avg: cfg.chunk_avg,
            max: cfg.chunk_max,
            seed: cfg.chunker_seed,
        }
    }

    /// The chunks of `buf` as slices, in order (no copies).
    pub fn cut<'b>(&self, buf: &'b [u8]) -> Vec<&'b [u8]> {
        if buf.is_empty() {
            Vec::new()
        } else if buf.len() < self.min as usize {
            vec![buf]
        } else {
            FastCDC::with_level_and_seed(buf, self.min, self.avg, self.max, Normalization::Level1, self.seed)
                .map(|c| &buf[c.offset..c.offset + c.length])
                .collect()
        }
    }

    /// Stores one chunk (as cut by [`Chunker::cut`]) and returns its id.
    pub fn save_chunk(&self, chunk: &[u8]) -> Result<Id, RepoError> {
        self.repo.save_blob(BlobKind::Data, chunk).map(|(id, _)| id)
    }

    /// Stores the chunks of `buf` (in parallel when there are several) and returns their ids in order.
    pub fn save_slice(&self, buf: &[u8]) -> Result<Vec<Id>, RepoError> {
        let chunks = self.cut(buf);
        if chunks.len() <= 1 {
            return chunks
                .iter()
                .map(|c| self.repo.save_blob(BlobKind::Data, c).map(|(id, _)| id))
                .collect();
        }
        chunks
            .par_iter()
            .map(|c| self.repo.save_blob(BlobKind::Data, c).map(|(id, _)| id))
            .collect()
    }

    /// Splits a stream into chunks and stores them, several in parallel. `on_read` is told how many
    /// bytes were consumed. The outer error is the repository's (fatal), the inner one the stream's.
    pub fn save_stream(
        &self,
        reader: impl Read,
        on_read: &(dyn Fn(u64) + Sync),
    ) -> Result<io::Result<Vec<Id>>, RepoError> {
        let chunker =
            StreamCDC::with_level_and_seed(reader, self.min, self.avg, self.max, Normalization::Level1, self.seed);
        let mut ids = Vec::new();
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(CHUNKS_IN_FLIGHT);
        let mut chunks = chunker.into_iter();
        loop {
            batch.clear();
            for c in chunks.by_ref() {
                match c {
                    Ok(c) => batch.push(c.data),
                    // The stream's own error as it was (its kind, e.g. TimedOut, and message),
                    // not fastcdc's debug rendering of it.
                    Err(fastcdc::v2020::Error::IoError(e)) => return Ok(Err(e)),
                    Err(e) => return Ok(Err(io::Error::other(e.to_string()))),
                }
                if batch.len() == CHUNKS_IN_FLIGHT {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            on_read(batch.iter().map(|b| b.len() as u64).sum());
            let saved: Vec<Id> = batch
                .par_iter()
                .map(|data| self.repo.save_blob(BlobKind::Data, data).map(|(id, _)| id))
                .collect::<Result<_, _>>()?;
            ids.extend(saved);
        }
        Ok(Ok(ids))
    }
}
