//! Opening sealed envelopes (nonce, ciphertext, tag, compression flag, zstd frame) must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_repo::crypto::MasterKey;

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_bytes(&[9u8; 64]);
    let _ = key.open(data);
    // Also through a valid seal, so the decompression path sees fuzzed payloads.
    if let Ok(opened) = key.open(&key.seal(data, false)) {
        assert_eq!(opened, data);
    }
});
