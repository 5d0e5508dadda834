//! TSIG key-file parser: any text gives a key or a problem, never a panic; a problem never quotes
//! the file (a long word of the input, which could be part of a secret, never appears in it); a
//! parsed key has a name, an algorithm and a non-empty secret, and its Debug form hides the secret.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match lifeboat_traffic::TsigKey::parse(text) {
        Ok(key) => {
            assert!(!key.name().is_empty());
            assert!(!key.algorithm().is_empty());
            assert!(!key.secret().is_empty());
            let shown = format!("{key:?}");
            assert!(shown.contains("hidden"));
        }
        Err(problem) => {
            let shown = problem.to_string();
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))) {
                if word.len() >= 16 {
                    assert!(!shown.contains(word), "{shown:?} quotes {word:?}");
                }
            }
        }
    }
});
