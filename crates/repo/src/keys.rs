//! Key slots: the master key wrapped with keys derived from passwords by Argon2id.
//!
//! A key slot file (`keys/ID`, plain JSON) holds the Argon2id parameters and salt, the master key
//! sealed with the derived key, and a BLAKE3 checksum of the other fields so that a damaged file is
//! told apart from a wrong password.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::crypto::{fill_random, open_with, seal_with, MasterKey};

/// Argon2id cost parameters, stored with each slot so they can change over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane (RFC 9106's second recommendation has 64 MiB and 3 passes): about
    /// 0.2 s on one core of a current x86 machine.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// The largest Argon2 parameters a key slot may ask for. Anyone who can write `keys/` could
/// otherwise make every `open` allocate terabytes or run for days; RFC 9106's first recommendation
/// (2 GiB, 1 pass, 4 lanes) is well inside these.
pub const MAX_KDF: KdfParams = KdfParams {
    memory_kib: 4 * 1024 * 1024,
    iterations: 16,
    parallelism: 16,
};

impl KdfParams {
    /// Refuses parameters outside `1..=MAX_KDF` (and Argon2's own minimum of 8 KiB per lane).
    pub fn check(&self) -> Result<(), String> {
        let ok = (1..=MAX_KDF.parallelism).contains(&self.parallelism)
            && (1..=MAX_KDF.iterations).contains(&self.iterations)
            && (8 * self.parallelism..=MAX_KDF.memory_kib).contains(&self.memory_kib);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "Argon2 parameters out of bounds (memory {} KiB, {} passes, {} lanes; at most {} KiB, {} passes, {} lanes): refused",
                self.memory_kib, self.iterations, self.parallelism, MAX_KDF.memory_kib, MAX_KDF.iterations, MAX_KDF.parallelism
            ))
        }
    }
}

/// The content of a key slot file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeySlot {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub hostname: String,
    pub username: String,
    pub kdf: String,
    pub params: KdfParams,
    /// Base64 salt (32 bytes).
    pub salt: String,
    pub cipher: String,
    /// Base64 of the sealed 64-byte master key.
    pub wrapped_key: String,
    /// Hex BLAKE3 of this JSON with `checksum` set to the empty string.
    #[serde(default)]
    pub checksum: String,
}

/// Why a key slot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("the key slot file is damaged: {0}")]
    Damaged(String),
    #[error("the password does not open this key slot")]
    WrongPassword,
}

/// The key-encryption key for `password` (wiped when dropped).
fn derive(password: &[u8], salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; 32]>, SlotError> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| SlotError::Damaged(format!("invalid Argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(password, salt, &mut *out)
        .map_err(|e| SlotError::Damaged(format!("key derivation failed: {e}")))?;
    Ok(out)
}

impl KeySlot {
    /// Wraps `key` with a key derived from `password`.
    pub fn create(key: &MasterKey, password: &[u8], params: KdfParams) -> KeySlot {
        let mut salt = [0u8; 32];
        fill_random(&mut salt);
        let kek = derive(password, &salt, params).expect("default parameters are valid");
        let wrapped = seal_with(&kek, key.bytes());
        let mut slot = KeySlot {
            version: 1,
            created: OffsetDateTime::now_utc(),
            hostname: crate::hostname(),
            username: crate::username(),
            kdf: "argon2id".into(),
            params,
            salt: B64.encode(salt),
            cipher: "aes-256-gcm".into(),
            wrapped_key: B64.encode(wrapped),
            checksum: String::new(),
        };
        slot.checksum = slot.compute_checksum();
        slot
    }

    fn compute_checksum(&self) -> String {
        let mut copy = self.clone();
        copy.checksum.clear();
        blake3::hash(&serde_json::to_vec(&copy).expect("serialisable"))
            .to_hex()
            .to_string()
    }

    /// Parses a key slot file and verifies its checksum.
    pub fn parse(bytes: &[u8]) -> Result<KeySlot, SlotError> {
        let slot: KeySlot = serde_json::from_slice(bytes).map_err(|e| SlotError::Damaged(e.to_string()))?;
        if slot.checksum != slot.compute_checksum() {
            return Err(SlotError::Damaged("checksum mismatch".into()));
        }
        if slot.version != 1 || slot.kdf != "argon2id" || slot.cipher != "aes-256-gcm" {
            return Err(SlotError::Damaged(format!(
                "unsupported key slot (version {}, kdf {}, cipher {})",
                slot.version, slot.kdf, slot.cipher
            )));
        }
        slot.params.check().map_err(SlotError::Damaged)?;
        Ok(slot)
    }

    /// Unwraps the master key with `password`.
    pub fn unwrap(&self, password: &[u8]) -> Result<MasterKey, SlotError> {
        let salt = B64.decode(&self.salt).map_err(|e| SlotError::Damaged(e.to_string()))?;
        let wrapped = B64
            .decode(&self.wrapped_key)
            .map_err(|e| SlotError::Damaged(e.to_string()))?;
        self.params.check().map_err(SlotError::Damaged)?;
        let kek = derive(password, &salt, self.params)?;
        let unwrapped = open_with(&kek, &wrapped).map_err(|_| SlotError::WrongPassword)?;
        let mut raw = Zeroizing::new([0u8; 64]);
        if unwrapped.len() != raw.len() {
            return Err(SlotError::Damaged("wrapped key has the wrong length".into()));
        }
        raw.copy_from_slice(&unwrapped);
        Ok(MasterKey::from_bytes(&raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn right_password_opens_wrong_does_not() {
        let k = MasterKey::generate();
        let slot = KeySlot::create(&k, b"correct horse", FAST);
        let bytes = serde_json::to_vec(&slot).unwrap();
        let parsed = KeySlot::parse(&bytes).unwrap();
        assert_eq!(parsed.unwrap(b"correct horse").unwrap().bytes(), k.bytes());
        assert!(matches!(parsed.unwrap(b"wrong"), Err(SlotError::WrongPassword)));
    }

    /// Finding 14: a slot written by anyone with write access to `keys/` asking for 4 TiB of memory
    /// or 2^32 passes is refused before any derivation, not obeyed.
    #[test]
    fn a_key_slot_with_absurd_argon2_parameters_is_refused_quickly() {
        let k = MasterKey::generate();
        for params in [
            KdfParams {
                memory_kib: u32::MAX,
                ..FAST
            },
            KdfParams {
                iterations: u32::MAX,
                ..FAST
            },
            KdfParams { parallelism: 0, ..FAST },
        ] {
            let mut slot = KeySlot::create(&k, b"pw", FAST);
            slot.params = params;
            slot.checksum = slot.compute_checksum();
            let bytes = serde_json::to_vec(&slot).unwrap();
            match KeySlot::parse(&bytes) {
                Err(SlotError::Damaged(m)) => assert!(m.contains("out of bounds"), "{m}"),
                other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
            }
            assert!(slot.unwrap(b"pw").is_err());
        }
    }

    /// The unwrapped key is copied into a wiped buffer only when it has the master key's length;
    /// a slot that wraps anything else (with the right password) is damaged, not a wrong password.
    #[test]
    fn a_slot_wrapping_a_key_of_the_wrong_length_is_damaged() {
        let k = MasterKey::generate();
        let mut slot = KeySlot::create(&k, b"pw", FAST);
        let salt = B64.decode(&slot.salt).unwrap();
        let kek = derive(b"pw", &salt, FAST).unwrap();
        slot.wrapped_key = B64.encode(seal_with(&kek, &k.bytes()[..63]));
        slot.checksum = slot.compute_checksum();
        let parsed = KeySlot::parse(&serde_json::to_vec(&slot).unwrap()).unwrap();
        match parsed.unwrap(b"pw") {
            Err(SlotError::Damaged(m)) => assert!(m.contains("wrong length"), "{m}"),
            other => panic!("expected a damaged slot, got {:?}", other.map(|_| ())),
        }
        assert!(matches!(parsed.unwrap(b"other"), Err(SlotError::WrongPassword)));
    }

    #[test]
    fn damage_is_not_reported_as_wrong_password() {
        let k = MasterKey::generate();
        let slot = KeySlot::create(&k, b"pw", FAST);
        let mut bytes = serde_json::to_vec(&slot).unwrap();
        // Flip one character inside the wrapped key.
        let pos = bytes.windows(13).position(|w| w == b"\"wrapped_key\"").unwrap() + 20;
        bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
        assert!(matches!(KeySlot::parse(&bytes), Err(SlotError::Damaged(_))));
    }
}
