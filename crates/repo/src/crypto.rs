//! Encryption, compression and ids.
//!
//! Every stored blob and metadata file is a *sealed envelope*:
//! `nonce (12 bytes) || AES-256-GCM ciphertext || tag (16 bytes)` of the plaintext
//! `flag (1 byte) || payload`, where flag 0 means the payload is stored as is and flag 1 means it is a
//! zstd frame (with its content size in the frame header). Nonces are random (96 bits).
use std::cell::RefCell;

use lifeboat_model::Id;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::{Zeroize, Zeroizing};

/// Largest plaintext a sealed envelope may decompress to (guards against hostile sizes). Writers
/// refuse to seal more (see [`check_plaintext_size`]), so whatever was written can be read back.
pub const MAX_PLAINTEXT: usize = 256 << 20;
const TAG_LEN: usize = 16;
/// Size of the sample that decides whether a large blob is worth compressing.
const SAMPLE: usize = 64 << 10;
/// Bytes a sealed envelope adds to its payload: nonce, flag and tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 1 + TAG_LEN;

/// Why a sealed envelope could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("too short to be encrypted data ({0} bytes)")]
    TooShort(usize),
    #[error("authentication failed (wrong key, or the data was modified)")]
    Authentication,
    #[error("unknown payload flag {0}")]
    UnknownFlag(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
}

/// The repository's master key: 32 bytes for AES-256-GCM and 32 bytes for keyed BLAKE3 ids.
///
/// It never leaves memory unencrypted; key slots store it wrapped with a password-derived key. Its
/// raw bytes are wiped (with writes the optimiser keeps) when it is dropped; the AES key schedule
/// inside ring's `LessSafeKey` is not (ring offers no way to).
pub struct MasterKey {
    raw: [u8; 64],
    aead: LessSafeKey,
}

impl Clone for MasterKey {
    fn clone(&self) -> Self {
        MasterKey::from_bytes(&self.raw)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut raw = Zeroizing::new([0u8; 64]);
        fill_random(&mut *raw);
        Self::from_bytes(&raw)
    }

    /// Rebuilds a key from its 64 raw bytes.
    pub fn from_bytes(raw: &[u8; 64]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &raw[..32]).expect("32-byte AES key");
        MasterKey {
            raw: *raw,
            aead: LessSafeKey::new(unbound),
        }
    }

    /// The raw bytes (only for wrapping into a key slot).
    pub fn bytes(&self) -> &[u8; 64] {
        &self.raw
    }

    /// The id of a blob: BLAKE3 keyed with the repository's id key, over the plaintext.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        let key: &[u8; 32] = self.raw[32..].try_into().expect("32 bytes");
        Id(*blake3::keyed_hash(key, data).as_bytes())
    }

    /// Compresses (when it helps and `compress` is set) and encrypts `data` into a sealed envelope.
    ///
    /// Large blobs whose first 64 KiB do not compress by at least 3% are stored uncompressed
    /// without compressing the rest (random data, media, already-compressed files).
    pub fn seal(&self, data: &[u8], compress: bool) -> Vec<u8> {
        let compressed = if compress && data.len() > 64 {
            COMPRESSOR.with(|c| {
                let mut c = c.borrow_mut();
                let c = c.get_or_insert_with(|| zstd::bulk::Compressor::new(1).expect("zstd compressor"));
                if data.len() > 4 * SAMPLE {
                    let sample = c.compress(&data[..SAMPLE]).ok()?;
                    if sample.len() * 100 > SAMPLE * 97 {
                        return None;
                    }
                }
                c.compress(data).ok().filter(|z| z.len() < data.len())
            })
        } else {
            None
        };
        let (flag, payload) = match &compressed {
            Some(z) => (1u8, z.as_slice()),
            None => (0u8, data),
        };
        seal_raw(&self.aead, flag, payload)
    }

    /// Decrypts and decompresses a sealed envelope.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        self.open_owned(sealed.to_vec())
    }

    /// Like [`MasterKey::open`], decrypting in the given buffer (no copy of the ciphertext; an
    /// uncompressed payload is moved to the front of the same buffer).
    pub fn open_owned(&self, sealed: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        self.open_owned_limited(sealed, MAX_PLAINTEXT)
    }

    /// Like [`MasterKey::open_owned`], refusing a compressed payload that declares more than `limit`
    /// bytes of plaintext.
    pub(crate) fn open_owned_limited(&self, mut sealed: Vec<u8>, limit: usize) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError::TooShort(sealed.len()));
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("nonce length");
        let plain_len = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed[NONCE_LEN..],
            )
            .map_err(|_| OpenError::Authentication)?
            .len();
        if plain_len == 0 {
            return Err(OpenError::TooShort(sealed.len()));
        }
        let plain = &sealed[NONCE_LEN..NONCE_LEN + plain_len];
        let flag = plain[0];
        match flag {
            0 => {
                sealed.copy_within(NONCE_LEN + 1..NONCE_LEN + plain_len, 0);
                sealed.truncate(plain_len - 1);
                Ok(sealed)
            }
            1 => {
                let frame = &plain[1..];
                let size = zstd::zstd_safe::get_frame_content_size(frame)
                    .map_err(|_| OpenError::Decompress("not a zstd frame".into()))?
                    .ok_or_else(|| OpenError::Decompress("zstd frame without content size".into()))?;
                if size > limit as u64 {
                    return Err(OpenError::Decompress(format!("declared size {size} is too large")));
                }
                DECOMPRESSOR.with(|d| {
                    let mut d = d.borrow_mut();
                    let d = d.get_or_insert_with(|| zstd::bulk::Decompressor::new().expect("zstd decompressor"));
                    d.decompress(frame, size as usize)
                        .map_err(|e| OpenError::Decompress(e.to_string()))
                })
            }
            other => Err(OpenError::UnknownFlag(other)),
        }
    }
}

/// Refuses a plaintext of `len` bytes when it is more than `limit`, the most a reader accepts
/// ([`MAX_PLAINTEXT`] outside tests): `Err` carries the limit.
pub(crate) fn check_plaintext_size(len: usize, limit: usize) -> Result<(), usize> {
    if len > limit {
        Err(limit)
    } else {
        Ok(())
    }
}

/// Fills `buf` with random bytes from the system CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random number generator failed");
}

/// Seals `flag || payload` with a random nonce.
fn seal_raw(key: &LessSafeKey, flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let mut buf = Vec::with_capacity(SEAL_OVERHEAD + payload.len());
    buf.extend_from_slice(&nonce);
    buf.push(flag);
    buf.extend_from_slice(payload);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf[NONCE_LEN..])
        .expect("AES-GCM seal cannot fail for sizes below 64 GiB");
    buf.extend_from_slice(tag.as_ref());
    buf
}

/// Opens a sealed buffer, returning `flag || payload` (wiped when dropped: it holds key material).
fn open_raw(key: &LessSafeKey, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(OpenError::TooShort(sealed.len()));
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("nonce length");
    let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let plain_len = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf[..])
        .map_err(|_| OpenError::Authentication)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// Seals with a one-off key (used to wrap the master key with a password-derived key).
pub(crate) fn seal_with(key: &[u8; 32], data: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key"));
    seal_raw(&k, 0, data)
}

/// Opens what [`seal_with`] sealed; the result is wiped when dropped.
pub(crate) fn open_with(key: &[u8; 32], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let k = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, key).expect("32-byte key"));
    let mut plain = open_raw(&k, sealed)?;
    plain.remove(0);
    Ok(plain)
}

/// The unkeyed BLAKE3 hash of stored bytes: the name of pack, index and snapshot files.
pub fn file_id(bytes: &[u8]) -> Id {
    Id(*blake3::hash(bytes).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), compress: bool) {
            let k = MasterKey::generate();
            let sealed = k.seal(&data, compress);
            prop_assert_eq!(k.open(&sealed).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_detected(data in proptest::collection::vec(any::<u8>(), 1..300), bit in any::<usize>()) {
            let k = MasterKey::generate();
            let mut sealed = k.seal(&data, true);
            let bit = bit % (sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(k.open(&sealed).is_err());
        }
    }

    #[test]
    fn compressible_data_shrinks() {
        let k = MasterKey::generate();
        let data = b"lifeboat ".repeat(1000);
        assert!(k.seal(&data, true).len() < data.len() / 10);
    }

    #[test]
    fn incompressible_large_blobs_are_stored_raw_and_still_round_trip() {
        let k = MasterKey::generate();
        let mut data = Vec::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        while data.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        let sealed = k.seal(&data, true);
        assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
        assert_eq!(k.open(&sealed).unwrap(), data);
    }

    /// What a writer may seal is exactly what a reader opens: at the limit it reads back, one byte
    /// over is refused by both (the writer before sealing).
    #[test]
    fn the_write_side_size_limit_matches_the_read_side() {
        let k = MasterKey::generate();
        let limit = 10_000;
        let at = b"lifeboat ".repeat(limit / 9 + 1)[..limit].to_vec();
        assert_eq!(check_plaintext_size(at.len(), limit), Ok(()));
        let sealed = k.seal(&at, true);
        assert!(sealed.len() < at.len(), "compressed");
        assert_eq!(k.open_owned_limited(sealed, limit).unwrap(), at);

        let over = b"lifeboat ".repeat(limit / 9 + 1)[..limit + 1].to_vec();
        assert_eq!(check_plaintext_size(over.len(), limit), Err(limit));
        match k.open_owned_limited(k.seal(&over, true), limit) {
            Err(OpenError::Decompress(m)) => assert!(m.contains("too large"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(check_plaintext_size(MAX_PLAINTEXT, MAX_PLAINTEXT), Ok(()));
        assert_eq!(
            check_plaintext_size(MAX_PLAINTEXT + 1, MAX_PLAINTEXT),
            Err(MAX_PLAINTEXT)
        );
    }

    #[test]
    fn other_key_cannot_open() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_eq!(b.open(&a.seal(b"secret", false)), Err(OpenError::Authentication));
    }

    #[test]
    fn blob_ids_are_keyed() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
    }
}
