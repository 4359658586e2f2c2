//! Validation of `[upstream.NAME.health_check]`.

use std::time::Duration;

use super::error::ConfigError;
use super::file::HealthCheckFile;
use super::validate::Validator;
use super::HealthCheckConfig;

/// Parses `"200-399"`, `"200"` or `"200, 204, 300-302"` into inclusive ranges of valid HTTP statuses.
fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad =
        || format!("`{text}` is not a status range; write \"200-399\", \"200\" or \"200, 204\"");
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let (low, high) = match part.trim().split_once('-') {
            Some((low, high)) => (low.trim(), high.trim()),
            None => (part.trim(), part.trim()),
        };
        let low: u16 = low.parse().map_err(|_| bad())?;
        let high: u16 = high.parse().map_err(|_| bad())?;
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(bad());
        }
        ranges.push((low, high));
    }
    Ok(ranges)
}

impl Validator<'_> {
    pub(super) fn health_check(
        &self,
        name: &str,
        file: HealthCheckFile,
        upstream_start_unhealthy: Option<bool>,
    ) -> Result<HealthCheckConfig, ConfigError> {
        let key = |k: &str| format!("upstream.{name}.health_check.{k}");
        let interval = file
            .interval
            .as_ref()
            .map_or(Duration::from_secs(5), |d| d.get_ref().0);
        if interval.is_zero() {
            return Err(self.err(
                file.interval.as_ref().map(|d| d.span()),
                key("interval"),
                "must be greater than zero",
            ));
        }
        let timeout = file
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(1), |d| d.get_ref().0);
        if timeout.is_zero() || timeout >= interval {
            return Err(self.err(
                file.timeout
                    .as_ref()
                    .or(file.interval.as_ref())
                    .map(|d| d.span()),
                key("timeout"),
                format!(
                    "must be greater than zero and less than interval ({}ms)",
                    interval.as_millis()
                ),
            ));
        }
        let at_least_one = |value: &Option<toml::Spanned<u32>>, k: &str, default: u32| match value {
            Some(v) if *v.get_ref() == 0 => {
                Err(self.err(Some(v.span()), key(k), "must be at least 1"))
            }
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        };
        let max_fails = at_least_one(&file.max_fails, "max_fails", 3)?;
        let passes = at_least_one(&file.passes, "passes", 2)?;
        let expected_status = match &file.expected_status {
            Some(text) => parse_status_ranges(text.get_ref())
                .map_err(|why| self.err(Some(text.span()), key("expected_status"), why))?,
            None => vec![(200, 399)],
        };
        let path = match &file.path {
            Some(path) if !path.get_ref().starts_with('/') => {
                return Err(self.err(
                    Some(path.span()),
                    key("path"),
                    format!("`{}` must start with /", path.get_ref()),
                ))
            }
            Some(path) => path.get_ref().clone(),
            None => "/".to_string(),
        };
        let concurrency = match &file.concurrency {
            Some(c) if *c.get_ref() == 0 => {
                return Err(self.err(Some(c.span()), key("concurrency"), "must be at least 1"))
            }
            Some(c) => *c.get_ref(),
            None => 64,
        };
        Ok(HealthCheckConfig {
            kind: file.kind.unwrap_or_default(),
            path,
            interval,
            timeout,
            max_fails,
            passes,
            expected_status,
            expect_body: file.expect_body,
            host: file.host,
            port: file.port,
            start_unhealthy: file
                .start_unhealthy
                .or(upstream_start_unhealthy)
                .unwrap_or(false),
            concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_ranges("200-399"), Ok(vec![(200, 399)]));
        assert_eq!(parse_status_ranges("200"), Ok(vec![(200, 200)]));
        assert_eq!(
            parse_status_ranges("200, 204,300-302"),
            Ok(vec![(200, 200), (204, 204), (300, 302)])
        );
        for bad in ["", "2xx", "399-200", "99", "200-600", "200-"] {
            assert!(parse_status_ranges(bad).is_err(), "{bad}");
        }
    }
}
