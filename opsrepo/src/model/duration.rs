//! Durations written in the ops repo: `250ms`, `90s`, `15m`, `24h`, `7d`, `2w`, `1h30m`.
//!
//! Parsed once, when the document is read; a value that does not parse is a schema error at
//! its line, so no consumer ever falls back to a default for a malformed duration. The text is
//! kept as written, so canonical values and rendered pages show what the operator wrote.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration from the ops repo, with the text it was written as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

impl Duration {
    /// Parses `90s`, `15m`, `24h`, `7d`, `2w`, `1h30m`, `250ms`.
    pub fn parse(s: &str) -> Option<Duration> {
        Some(Duration {
            value: parse_std(s)?,
            text: s.to_owned(),
        })
    }

    /// The duration.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }

    /// As written in the repo.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s).ok_or_else(|| {
            format!(
                "`{s}` is not a duration: write a number and a unit, e.g. 90s, 15m, 24h, 7d, 1h30m"
            )
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": super::DURATION_PATTERN,
            "description": "A duration: numbers with units ms, s, m, h, d, w (e.g. 90s, 15m, 1h30m, 7d)."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// The parser behind [`Duration`]; `None` for anything that is not a sum of `<n><unit>` terms.
fn parse_std(s: &str) -> Option<std::time::Duration> {
    terms(s, false)
}

/// A Prometheus duration (`90s`, `10m`, `1h30m`, `2d`, `1y`): the model's units plus `y`
/// (365 days), as alert rules and PromQL range selectors write them.
pub fn parse_prometheus(s: &str) -> Option<std::time::Duration> {
    terms(s, true)
}

/// A sum of `<n><unit>` terms (ms, s, m, h, d, w, and y when `years`).
fn terms(s: &str, years: bool) -> Option<std::time::Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit: u64 = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 604_800_000,
            'y' if years => 365 * 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    Some(std::time::Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_units_and_sums() {
        let p = |s: &str| Duration::parse(s).map(|d| d.get());
        assert_eq!(p("24h"), Some(Std::from_secs(86_400)));
        assert_eq!(p("1h30m"), Some(Std::from_secs(5_400)));
        assert_eq!(p("250ms"), Some(Std::from_millis(250)));
        assert_eq!(p("2w"), Some(Std::from_secs(1_209_600)));
        for bad in [
            "h",
            "10",
            "",
            "1x",
            "-1h",
            "99999999999999999999h",
            "1h 30m",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn keeps_its_text_and_refuses_garbage_when_deserialised() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        let e = serde_json::from_str::<Duration>("\"soon\"").unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }
}
