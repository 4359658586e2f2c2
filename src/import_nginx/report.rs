//! The import report: one line per directive not translated exactly, and the summary.

use std::collections::HashMap;

use super::parse::{Directive, Origin};

/// What became of a directive, from best to worst (a directive noted twice keeps the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Translated with the same behaviour.
    Exact,
    /// Has no effect on what fulcrum does (logging details, static-file settings).
    Ignored,
    /// Translated; the behaviour differs as the reason says.
    Difference,
    /// Not translated: behaviour changes.
    Unsupported,
}

#[derive(Debug)]
struct Entry {
    origin: Origin,
    name: String,
    outcome: Outcome,
    reasons: Vec<String>,
}

/// Every directive read, with its outcome.
#[derive(Debug, Default)]
pub struct Report {
    entries: Vec<Entry>,
    index: HashMap<(String, usize, String), usize>,
}

impl Report {
    /// Notes `outcome` for `d` (with `why` unless exact).
    pub fn note(&mut self, d: &Directive, outcome: Outcome, why: impl Into<String>) {
        self.note_at(&d.origin, &d.name, outcome, why.into());
    }

    /// Notes `outcome` for the directive `name` at `origin`.
    pub fn note_at(&mut self, origin: &Origin, name: &str, outcome: Outcome, why: String) {
        let key = (
            origin.file.display().to_string(),
            origin.line,
            name.to_string(),
        );
        let at = *self.index.entry(key).or_insert_with(|| {
            self.entries.push(Entry {
                origin: origin.clone(),
                name: name.to_string(),
                outcome,
                reasons: Vec::new(),
            });
            self.entries.len() - 1
        });
        let entry = &mut self.entries[at];
        entry.outcome = entry.outcome.max(outcome);
        if outcome != Outcome::Exact && !why.is_empty() && !entry.reasons.contains(&why) {
            entry.reasons.push(why);
        }
    }

    /// Exact.
    pub fn exact(&mut self, d: &Directive) {
        self.note(d, Outcome::Exact, "");
    }

    /// Translated with a difference.
    pub fn differ(&mut self, d: &Directive, why: impl Into<String>) {
        self.note(d, Outcome::Difference, why);
    }

    /// Not translated.
    pub fn unsupported(&mut self, d: &Directive, why: impl Into<String>) {
        self.note(d, Outcome::Unsupported, why);
    }

    /// No effect here.
    pub fn ignored(&mut self, d: &Directive, why: impl Into<String>) {
        self.note(d, Outcome::Ignored, why);
    }

    /// Whether something that changes behaviour was not translated.
    pub fn has_unsupported(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.outcome == Outcome::Unsupported)
    }

    /// How many directives ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.entries.iter().filter(|e| e.outcome == outcome).count()
    }

    /// The report lines, in the order the directives were met, then the summary line.
    pub fn lines(&self) -> Vec<String> {
        // In file order (a file's lines in order, files in the order they were first met).
        let mut files: Vec<&std::path::Path> = Vec::new();
        for entry in &self.entries {
            if !files.contains(&&*entry.origin.file) {
                files.push(&entry.origin.file);
            }
        }
        let mut sorted: Vec<&Entry> = self.entries.iter().collect();
        sorted.sort_by_key(|e| {
            (
                files.iter().position(|f| *f == &*e.origin.file),
                e.origin.line,
            )
        });
        let mut out: Vec<String> = sorted
            .into_iter()
            .filter(|e| e.outcome != Outcome::Exact)
            .map(|e| {
                let why = e.reasons.join("; ");
                match e.outcome {
                    Outcome::Difference => {
                        format!(
                            "{}: {}: translated with a difference: {why}",
                            e.origin, e.name
                        )
                    }
                    Outcome::Unsupported => {
                        format!("{}: {}: not supported: {why}", e.origin, e.name)
                    }
                    Outcome::Ignored | Outcome::Exact => {
                        format!("{}: {}: ignored: {why} (no effect here)", e.origin, e.name)
                    }
                }
            })
            .collect();
        out.push(format!(
            "{} directives read: {} translated exactly, {} with differences, {} not supported, {} ignored",
            self.entries.len(),
            self.count(Outcome::Exact),
            self.count(Outcome::Difference),
            self.count(Outcome::Unsupported),
            self.count(Outcome::Ignored),
        ));
        out
    }
}
