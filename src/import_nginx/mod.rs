//! `fulcrum import-nginx`: an nginx config (its `include`s followed) translated into fulcrum's TOML, with
//! a report of every directive that was not translated exactly.
//!
//! [`parse`] reads nginx's syntax into a tree; the translator walks it with nginx's inheritance rules
//! (`translate`, `directives`, `upstream`) and writes tables (`output`); the `report` counts each
//! directive once, with the worst of what became of it.

mod cache;
mod directives;
mod gzip;
mod listen;
mod location;
mod output;
pub mod parse;
mod report;
mod server_block;
mod translate;
mod upstream;
mod write;

use std::path::Path;

pub use parse::SyntaxError;
pub use report::Outcome;

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    /// The TOML text.
    pub toml: String,
    /// The report lines (one per directive not translated exactly), then the summary line.
    pub report: Vec<String>,
    /// Whether something that changes behaviour was not translated (exit status 3).
    pub incomplete: bool,
}

/// Reads the nginx config at `path` (and what it includes) and translates it.
pub fn import(path: &Path) -> Result<Imported, SyntaxError> {
    let tree = parse::parse_file(path)?;
    translate_tree(&tree, path)
}

/// Translates nginx config `text` as if read from `path` (includes are read relative to its directory).
pub fn import_text(text: &str, path: &Path) -> Result<Imported, SyntaxError> {
    let tree = parse::parse_text(text, path, 0)?;
    translate_tree(&tree, path)
}

fn translate_tree(tree: &[parse::Directive], path: &Path) -> Result<Imported, SyntaxError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut translator = translate::Translator::new(base);
    translator.run(tree);
    if let Some((origin, why)) = translator.invalid.take() {
        return Err(SyntaxError {
            file: origin.file.to_path_buf(),
            line: origin.line,
            why,
        });
    }
    Ok(Imported {
        toml: translator.toml(path),
        report: translator.report.lines(),
        incomplete: translator.report.has_unsupported(),
    })
}
