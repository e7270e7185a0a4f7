//! Go-style durations (`metav1.Duration`): `1s`, `15m`, `1h30m`, `500ms`, `0s`.
//!
//! Both the config file and the duration flags use Go's `time.ParseDuration` syntax, and
//! `--write-config-to` prints Go's `Duration.String()` form (`15m0s`, `24h0m0s`), so a
//! config written by upstream and one written by us look the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANOSECOND: u128 = 1;
const MICROSECOND: u128 = 1_000 * NANOSECOND;
const MILLISECOND: u128 = 1_000 * MICROSECOND;
const SECOND: u128 = 1_000 * MILLISECOND;
const MINUTE: u128 = 60 * SECOND;
const HOUR: u128 = 60 * MINUTE;

/// A signed duration with nanosecond precision, like Go's `time.Duration`.
///
/// Negative values are representable because the file format allows them; validation
/// rejects them where upstream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    nanos: i64,
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// The zero duration (`0s`).
    pub const ZERO: Duration = Duration { nanos: 0 };

    /// A duration of `nanos` nanoseconds.
    pub const fn from_nanos(nanos: i64) -> Self {
        Duration { nanos }
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: i64) -> Self {
        Duration::from_nanos(millis * 1_000_000)
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: i64) -> Self {
        Duration::from_nanos(secs * 1_000_000_000)
    }

    /// A duration of `mins` minutes.
    pub const fn from_mins(mins: i64) -> Self {
        Duration::from_secs(mins * 60)
    }

    /// A duration of `hours` hours.
    pub const fn from_hours(hours: i64) -> Self {
        Duration::from_mins(hours * 60)
    }

    /// The length in nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// Whether this is exactly zero.
    pub const fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// Whether this is below zero.
    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// The same length as a [`std::time::Duration`], or `None` if negative.
    pub fn to_std(self) -> Option<std::time::Duration> {
        u64::try_from(self.nanos)
            .ok()
            .map(std::time::Duration::from_nanos)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    /// Parses Go's `time.ParseDuration` syntax: an optional sign, then one or more
    /// decimal numbers (with optional fraction), each followed by a unit among `ns`,
    /// `us`, `µs`, `ms`, `s`, `m`, `h`. A bare `0` is allowed.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let (negative, mut rest) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            _ => (false, input),
        };
        if rest == "0" {
            return Ok(Duration::ZERO);
        }
        if rest.is_empty() {
            return Err(fail(
                "expected a number followed by a unit, e.g. 30s or 1m30s",
            ));
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let (component, tail) = parse_component(rest).map_err(fail)?;
            total += component;
            if total > i64::MAX as u128 + u128::from(negative) {
                return Err(fail("out of range"));
            }
            rest = tail;
        }
        let nanos = if negative {
            // `total` may be exactly 2^63, which only fits once negated.
            (total as i128).wrapping_neg() as i64
        } else {
            total as i64
        };
        Ok(Duration { nanos })
    }
}

/// Parses one `<number>[.<fraction>]<unit>` group off the front of `s`, returning its
/// length in nanoseconds and the unparsed rest.
fn parse_component(s: &str) -> Result<(u128, &str), &'static str> {
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (int_digits, mut rest) = s.split_at(int_len);
    let mut frac_digits = "";
    if let Some(after_dot) = rest.strip_prefix('.') {
        let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        (frac_digits, rest) = after_dot.split_at(frac_len);
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err("expected a number followed by a unit, e.g. 30s or 1m30s");
    }
    let unit_len = rest
        .char_indices()
        .find(|(_, c)| c.is_ascii_digit() || *c == '.')
        .map_or(rest.len(), |(i, _)| i);
    let (unit_str, rest) = rest.split_at(unit_len);
    let unit = match unit_str {
        "ns" => NANOSECOND,
        "us" | "µs" | "μs" => MICROSECOND,
        "ms" => MILLISECOND,
        "s" => SECOND,
        "m" => MINUTE,
        "h" => HOUR,
        "" => return Err("missing unit (one of ns, us, ms, s, m, h)"),
        _ => return Err("unknown unit (expected one of ns, us, ms, s, m, h)"),
    };
    let whole = digits_value(int_digits)?
        .checked_mul(unit)
        .ok_or("out of range")?;
    Ok((whole + fraction_value(frac_digits, unit), rest))
}

/// The value of a digit string, rejecting anything beyond Go's duration range.
fn digits_value(digits: &str) -> Result<u128, &'static str> {
    digits.bytes().try_fold(0u128, |acc, b| {
        let value = acc * 10 + u128::from(b - b'0');
        if value > i64::MAX as u128 + 1 {
            Err("out of range")
        } else {
            Ok(value)
        }
    })
}

/// `0.<digits>` of `unit`, truncated to whole nanoseconds as Go does.
fn fraction_value(digits: &str, unit: u128) -> u128 {
    let mut scale = 1u128;
    let mut value = 0u128;
    // Digits past nanosecond precision of an hour cannot change the result.
    for b in digits.bytes().take(20) {
        value = value * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    value * unit / scale
}

impl fmt::Display for Duration {
    /// Formats like Go's `Duration.String()`: `0s`, `500ms`, `1.5µs`, `15m0s`, `1h30m0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos < 0 {
            f.write_str("-")?;
        }
        let n = u128::from(self.nanos.unsigned_abs());
        if n == 0 {
            return f.write_str("0s");
        }
        if n < SECOND {
            let (div, unit) = match n {
                _ if n < MICROSECOND => (NANOSECOND, "ns"),
                _ if n < MILLISECOND => (MICROSECOND, "µs"),
                _ => (MILLISECOND, "ms"),
            };
            write_decimal(f, n, div)?;
            return f.write_str(unit);
        }
        let hours = n / HOUR;
        let minutes = (n % HOUR) / MINUTE;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write_decimal(f, n % MINUTE, SECOND)?;
        f.write_str("s")
    }
}

/// Writes `n / div` with as many decimals as needed and no trailing zeros.
fn write_decimal(f: &mut fmt::Formatter<'_>, n: u128, div: u128) -> fmt::Result {
    write!(f, "{}", n / div)?;
    let remainder = n % div;
    if remainder == 0 {
        return Ok(());
    }
    let width = div.ilog10() as usize;
    let digits = format!("{remainder:0width$}");
    write!(f, ".{}", digits.trim_end_matches('0'))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    /// Accepts only strings, like `metav1.Duration`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Duration {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(parse("0"), Duration::ZERO);
        assert_eq!(parse("0s"), Duration::ZERO);
        assert_eq!(parse("1s"), Duration::from_secs(1));
        assert_eq!(parse("15m"), Duration::from_mins(15));
        assert_eq!(parse("1h30m"), Duration::from_mins(90));
        assert_eq!(parse("500ms"), Duration::from_millis(500));
        assert_eq!(parse("1.5s"), Duration::from_millis(1500));
        assert_eq!(parse(".5h"), Duration::from_mins(30));
        assert_eq!(parse("2h22m"), Duration::from_mins(142));
        assert_eq!(parse("-1m"), Duration::from_secs(-60));
        assert_eq!(parse("+3us"), Duration::from_nanos(3000));
        assert_eq!(parse("3µs"), Duration::from_nanos(3000));
        assert_eq!(
            parse("1h1m1s1ms1us1ns"),
            Duration::from_nanos(3_661_001_001_001)
        );
        assert_eq!(parse("2562047h47m16.854775807s").as_nanos(), i64::MAX);
        assert_eq!(parse("-2562047h47m16.854775808s").as_nanos(), i64::MIN);
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "", "s", "1", "10", "1x", "1.s.", "-", "+", "1h 30m", " 1s", "2562048h", "1e3s",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn error_names_the_input() {
        let err = "10".parse::<Duration>().unwrap_err().to_string();
        assert!(
            err.contains("\"10\"") && err.contains("missing unit"),
            "{err}"
        );
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(1500), "1.5µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_mins(15), "15m0s"),
            (Duration::from_mins(90), "1h30m0s"),
            (Duration::from_hours(24), "24h0m0s"),
            (Duration::from_secs(-61), "-1m1s"),
            (Duration::from_nanos(i64::MIN), "-2562047h47m16.854775808s"),
        ];
        for (d, s) in cases {
            assert_eq!(d.to_string(), s);
            assert_eq!(parse(s), d, "round trip of {s}");
        }
    }

    #[test]
    fn converts_to_std() {
        assert_eq!(
            Duration::from_millis(1500).to_std(),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(Duration::from_secs(-1).to_std(), None);
    }

    proptest::proptest! {
        #[test]
        fn display_round_trips(n in proptest::num::i64::ANY) {
            let d = Duration::from_nanos(n);
            proptest::prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}
