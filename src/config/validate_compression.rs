//! Checks `[compression]` and a route's `compress`: algorithm names, media type patterns, the size floor.

use toml::Spanned;

use super::error::ConfigError;
use super::file::{CompressionFile, RouteFile};
use super::validate::Validator;
use super::{Algorithm, CompressionConfig};

impl Validator<'_> {
    /// `[compression]`; absent, compression is off (as nginx's `gzip` is).
    pub(super) fn compression(
        &self,
        file: Option<&CompressionFile>,
    ) -> Result<CompressionConfig, ConfigError> {
        let mut config = CompressionConfig::default();
        let Some(file) = file else {
            return Ok(config);
        };
        // Writing the section is asking for compression; `enabled = false` keeps it written but off.
        config.enabled = file.enabled.unwrap_or(true);
        if let Some(names) = &file.algorithms {
            config.algorithms = self.algorithms(names)?;
        }
        if let Some(types) = &file.types {
            config.types = self.media_types(types)?;
        }
        if let Some(size) = &file.min_size {
            config.min_size = size.get_ref().0;
        }
        for (algorithm, level) in [
            (Algorithm::Gzip, &file.gzip_level),
            (Algorithm::Brotli, &file.br_level),
            (Algorithm::Zstd, &file.zstd_level),
        ] {
            let Some(level) = level else { continue };
            let (range, _) = algorithm.levels();
            if !range.contains(level.get_ref()) {
                return Err(self.err(
                    Some(level.span()),
                    format!("compression.{}_level", algorithm.token()),
                    format!("must be from {} to {}", range.start(), range.end()),
                ));
            }
            config.levels[algorithm.index()] = *level.get_ref();
        }
        Ok(config)
    }

    fn algorithms(&self, names: &Spanned<Vec<String>>) -> Result<Vec<Algorithm>, ConfigError> {
        let key = "compression.algorithms";
        if names.get_ref().is_empty() {
            return Err(self.err(
                Some(names.span()),
                key,
                "is empty; name at least one of \"zstd\", \"br\", \"gzip\" (or set enabled = false)",
            ));
        }
        let mut out = Vec::with_capacity(names.get_ref().len());
        for name in names.get_ref() {
            // Exact config names only: `x-gzip` is a client's spelling, not ours.
            let Some(algorithm) = Algorithm::ALL.into_iter().find(|a| a.token() == name) else {
                return Err(self.err(
                    Some(names.span()),
                    key,
                    format!("unknown algorithm `{name}`; expected \"zstd\", \"br\" or \"gzip\""),
                ));
            };
            if out.contains(&algorithm) {
                return Err(self.err(Some(names.span()), key, format!("`{name}` is listed twice")));
            }
            out.push(algorithm);
        }
        Ok(out)
    }

    fn media_types(&self, types: &Spanned<Vec<String>>) -> Result<Vec<String>, ConfigError> {
        types
            .get_ref()
            .iter()
            .map(|pattern| {
                let lower = pattern.trim().to_ascii_lowercase();
                if lower == "*" || media_type_pattern(&lower) {
                    Ok(lower)
                } else {
                    Err(self.err(
                        Some(types.span()),
                        "compression.types",
                        format!(
                            "`{pattern}` is not a media type; write \"text/html\", \"text/*\" or \"*\" (no parameters)"
                        ),
                    ))
                }
            })
            .collect()
    }

    /// A route's `compress = true` does nothing while `[compression]` is off: said, not refused.
    pub(super) fn route_compress(&self, i: usize, file: &RouteFile, config: &CompressionConfig) {
        if let Some(compress) = file.compress.as_ref().filter(|c| *c.get_ref()) {
            if !config.enabled {
                self.warn(self.err(
                    Some(compress.span()),
                    format!("route[{i}].compress"),
                    "has no effect while [compression] is absent or enabled = false",
                ));
            }
        }
    }
}

/// `type/subtype` or `type/*`, each part an RFC 9110 token.
fn media_type_pattern(text: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match text.split_once('/') {
        Some((kind, sub)) => {
            token(kind) && !kind.contains('*') && (sub == "*" || token(sub) && !sub.contains('*'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::media_type_pattern;

    #[test]
    fn media_type_patterns_take_a_type_and_a_subtype_or_star() {
        assert!(media_type_pattern("text/html"));
        assert!(media_type_pattern("text/*"));
        assert!(media_type_pattern("image/svg+xml"));
        assert!(!media_type_pattern("text"));
        assert!(!media_type_pattern("*/json"));
        assert!(!media_type_pattern("text/html; charset=utf-8"));
        assert!(!media_type_pattern("text/"));
        assert!(!media_type_pattern("text/ht*"));
    }
}
