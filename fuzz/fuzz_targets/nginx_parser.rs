//! `fulcrum import-nginx` on any text: parsing and translating never panic, a syntax error names a line
//! within the input, and a translation that succeeds is TOML that parses.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A path in a directory that does not exist: `include` fails as a syntax error, never reads files.
    let path = Path::new("/nonexistent-fuzz-dir/nginx.conf");
    match fulcrum::import_nginx::import_text(text, path) {
        Ok(imported) => {
            assert!(
                imported.toml.parse::<toml::Table>().is_ok(),
                "the import is not TOML:\n{}",
                imported.toml
            );
            assert!(imported
                .report
                .last()
                .is_some_and(|l| l.contains("directives read")));
        }
        Err(error) => {
            let lines = text.matches('\n').count() + 1;
            assert!(
                error.line <= lines,
                "error line {} past the input's {lines} lines",
                error.line
            );
        }
    }
});
