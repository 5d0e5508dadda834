//! DR plan parser: any text gives a plan or a `PlanError`, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lifeboat_plan::Plan::parse("fuzz.yaml", text);
    }
});
