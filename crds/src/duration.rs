//! [`Duration`]: the string durations of the API (`500ms`, `30s`, `5m`, `1h30m`).

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema uses; [`Duration::from_str`] accepts exactly this language.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// Longest duration string the API accepts (keeps CEL cost estimates small).
pub const DURATION_MAX_LENGTH: usize = 32;

const UNITS_MS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// A non-negative duration with millisecond resolution, written as one or more
/// `<integer><unit>` parts with units `h`, `m`, `s`, `ms`: `500ms`, `30s`, `5m`, `1h30m`.
///
/// It is written back in canonical form (largest units first, zero parts omitted, `0s` for zero),
/// so `90s` reads as 90 seconds and writes as `1m30s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; write it like 500ms, 30s, 5m or 1h30m")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// The duration in whole milliseconds.
    pub fn as_millis(&self) -> u64 {
        // Construction only goes through from_millis/from_secs/parse, all bounded to u64 ms.
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// The duration as a [`std::time::Duration`].
    pub const fn as_std(&self) -> std::time::Duration {
        self.0
    }

    /// True for `0s` (and `0ms`, `0h`…).
    pub const fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// Parses a duration of the API's grammar (`500ms`, `2s`, `1m30s`) into a `std::time::Duration`,
/// for command-line flags: one grammar for manifests and flags.
pub fn parse_std_duration(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<Duration>()
        .map(std::time::Duration::from)
        .map_err(|e| e.to_string())
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        if input.len() > DURATION_MAX_LENGTH {
            return Err(fail("it is longer than 32 characters"));
        }
        if input.starts_with('-') {
            return Err(fail("it is negative"));
        }
        let mut total: u64 = 0;
        let mut rest = input;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail("each part must start with a whole number"));
            }
            let (number, tail) = rest.split_at(digits);
            let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, tail) = tail.split_at(unit_len);
            let scale = UNITS_MS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, ms)| *ms)
                .ok_or_else(|| fail("each number needs a unit: h, m, s or ms"))?;
            let part = number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(scale))
                .ok_or_else(|| fail("it is too large"))?;
            total = total.checked_add(part).ok_or_else(|| fail("it is too large"))?;
            rest = tail;
        }
        Ok(Self::from_millis(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in UNITS_MS {
            let n = ms / scale;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                ms %= scale;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1h30m", 5_400_000),
            ("1m30s250ms", 90_250),
            ("0s", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(text.parse::<Duration>().unwrap().as_millis(), ms, "{text}");
        }
    }

    #[test]
    fn writes_canonical_form_and_round_trips() {
        for (text, canonical) in [
            ("90s", "1m30s"),
            ("1h30m", "1h30m"),
            ("1500ms", "1s500ms"),
            ("0ms", "0s"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string(), canonical);
            assert_eq!(canonical.parse::<Duration>().unwrap(), d, "round trip of {text}");
        }
        for ms in [0, 1, 999, 1000, 61_001, 3_600_000, 86_400_123] {
            let d = Duration::from_millis(ms);
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }

    #[test]
    fn rejects_malformed_strings_with_a_reason() {
        for (text, reason) in [
            ("", "it is empty"),
            ("-1s", "it is negative"),
            ("5 minutes", "each number needs a unit"),
            ("5", "each number needs a unit"),
            ("1.5s", "each number needs a unit"),
            ("s", "each part must start with a whole number"),
            ("10d", "each number needs a unit"),
            ("99999999999999999999h", "too large"),
        ] {
            let err = text.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(err.contains("like 500ms, 30s, 5m or 1h30m"), "{err}");
        }
    }

    #[test]
    fn serde_uses_strings() {
        let d: Duration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5m\"");
        assert!(serde_json::from_str::<Duration>("\"5 minutes\"").is_err());
        assert!(serde_json::from_str::<Duration>("300").is_err());
    }
}
