//! Key slot files are plain JSON read before anything is authenticated: parsing must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lifeboat_repo::keys::KeySlot::parse(data);
});
