//! The config loader on any text: it answers a `Config` or a `ConfigError` naming the file, never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Certificate and CA paths are read while validating: a device file would only test the disk.
    if text.contains("/dev/") || text.contains("/proc/") || text.contains("/sys/") {
        return;
    }
    match fulcrum::Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            for warning in &config.warnings {
                let _ = warning.to_string();
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("fuzz.toml"),
                "an error names the file: {message}"
            );
        }
    }
});
