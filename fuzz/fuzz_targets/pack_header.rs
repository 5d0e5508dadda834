//! Pack files come from storage that may be damaged or hostile: parsing must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_repo::crypto::MasterKey;

fuzz_target!(|data: &[u8]| {
    let key = MasterKey::from_bytes(&[7u8; 64]);
    let _ = lifeboat_repo::pack::parse_header(&key, data);
});
