//! Durations as Istio and the Gateway API write them.
//!
//! Istio's CRDs carry `google.protobuf.Duration` fields, validated by the API server with CEL
//! `duration(self) >= duration('1ms')`; the CEL `duration()` grammar is Go's
//! (`time.ParseDuration`): one or more decimal numbers with a unit, `"1.5s"`, `"100ms"`,
//! `"1h30m"`. Gateway API durations (GEP-2257) are a subset of the same grammar (`"10s"`,
//! `"1h30m"`, `"500ms"`), where zero is allowed and means "disabled" for timeouts.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration")]
    Empty,
    /// A sign was given; durations in configuration are never negative.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// The string does not follow `<number><unit>...`.
    #[error(
        "invalid duration {0:?}: expected a number with a unit (ns, us, ms, s, m, h), e.g. \"1.5s\""
    )]
    Syntax(String),
    /// The unit is not one of ns, us, µs, ms, s, m, h.
    #[error("invalid duration {0:?}: unknown unit {1:?}")]
    Unit(String, String),
    /// The value does not fit in 64 bits of nanoseconds (about 292 years).
    #[error("duration {0:?} is too large")]
    Overflow(String),
    /// The value is below Istio's minimum of 1ms.
    #[error("duration {0:?} must be at least 1ms")]
    BelowMinimum(String),
}

/// Parses a Go-style duration: `"0"`, or one or more `<decimal><unit>` terms (`"1h2m3.5s"`).
///
/// Units are `ns`, `us` (also `µs`, `μs`), `ms`, `s`, `m` and `h`. Signs are rejected.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') || s.starts_with('+') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let syntax = || DurationError::Syntax(input.to_owned());
    let overflow = || DurationError::Overflow(input.to_owned());
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(syntax());
        }
        let unit_len = after_number
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_number.len(), |(i, _)| i);
        let (unit, after_unit) = after_number.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(syntax()),
            other => return Err(DurationError::Unit(input.to_owned(), other.to_owned())),
        };
        // At most 39 digits fit a u128; anything longer overflows 64-bit nanoseconds anyway.
        if int_digits.len() > 30 {
            return Err(overflow());
        }
        let int_value: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| syntax())?
        };
        let mut term = int_value.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
        // Fractions beyond nanosecond precision are truncated, as Go does.
        let mut scale = nanos_per_unit;
        for digit in frac_digits.bytes().take(18) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            term += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(term).ok_or_else(overflow)?;
        rest = after_unit;
    }
    let nanos = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way Go prints one, for config dumps (`1.5s`, `100ms`, `2m0s`).
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}us", trim_fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos, 1_000_000));
    }
    let secs = d.as_secs();
    let sub = u128::from(d.subsec_nanos());
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let seconds = trim_fraction(u128::from(s) * 1_000_000_000 + sub, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// An Istio duration field: Go syntax, at least 1ms (the CRDs' CEL rule).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IstioDuration(pub Duration);

impl IstioDuration {
    /// Parses and checks the 1ms minimum.
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let d = parse_duration(s)?;
        if d < Duration::from_millis(1) {
            return Err(DurationError::BelowMinimum(s.to_owned()));
        }
        Ok(Self(d))
    }
}

impl fmt::Debug for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

/// A Gateway API duration (GEP-2257): Go syntax, zero allowed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayDuration(pub Duration);

impl fmt::Debug for GatewayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for GatewayDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse_duration(&s)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for GatewayDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

/// Serializes a `Duration` in Go syntax (for `#[serde(serialize_with)]` in the route model).
pub(crate) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*d))
}

/// Serializes an optional `Duration` in Go syntax.
pub(crate) fn serialize_opt<S: Serializer>(
    d: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serializer.serialize_some(&format_duration(*d)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s", Duration::from_secs(1)),
            ("1.5s", ms(1500)),
            ("0.5s", ms(500)),
            (".5s", ms(500)),
            ("100ms", ms(100)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("2m", Duration::from_secs(120)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h2m3.5s", ms(3_723_500)),
            ("1.000000001s", Duration::new(1, 1)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).as_ref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for input in [
            "", "s", "1", "10", "1x", "-1s", "+1s", "1.s5", "ms", "1 s", "1e3s", ".",
        ] {
            assert!(
                parse_duration(input).is_err(),
                "{input:?} should be rejected"
            );
        }
        assert!(matches!(
            parse_duration("99999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn istio_minimum_is_one_millisecond() {
        assert!(IstioDuration::parse("1ms").is_ok());
        assert_eq!(
            IstioDuration::parse("0s"),
            Err(DurationError::BelowMinimum("0s".into()))
        );
        assert!(IstioDuration::parse("999us").is_err());
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(120), "2m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_micros(1500), "1.5ms"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d), "round trip {want}");
        }
    }
}
