//! Durations as people write them: a whole number and a unit, `500ms`, `30s`, `10m`, `3h`,
//! `1d`, the units of the policy language (`docs/language.md` §2.4). The shim's command
//! line reads its time flags with [`parse_flag`]; `compiler/tests/durations.rs` checks
//! that the language's lexer and [`parse_ms`] agree on every unit.

use std::fmt;
use std::time::Duration;

/// The units, longest suffix first where one is a prefix of another (`ms` before `m`),
/// with their length in milliseconds.
pub const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Why a duration was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Not digits followed by one of [`UNITS`].
    Malformed,
    /// Digits and a unit, but the milliseconds do not fit 64 bits.
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Malformed => write!(
                f,
                "expected a whole number and a unit ({}), e.g. `90s` or `3h`",
                unit_list()
            ),
            DurationError::TooLarge => write!(f, "duration too large"),
        }
    }
}

impl std::error::Error for DurationError {}

fn unit_list() -> String {
    UNITS.iter().map(|(u, _)| *u).collect::<Vec<_>>().join(", ")
}

/// `30s` → 30 000. Exactly the language's duration literal: ASCII digits, then one unit,
/// nothing around them.
pub fn parse_ms(text: &str) -> Result<u64, DurationError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(DurationError::Malformed)?;
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(DurationError::Malformed);
    }
    let scale = UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|&(_, ms)| ms)
        .ok_or(DurationError::Malformed)?;
    let n: u64 = digits.parse().map_err(|_| DurationError::TooLarge)?;
    n.checked_mul(scale).ok_or(DurationError::TooLarge)
}

/// A time flag of a command line: a duration with its unit (`3h`, `250ms`), or a bare
/// number in the flag's documented unit `bare` (so `--until 5000` keeps meaning 5000 ms
/// and `--call-timeout 10` ten seconds; a fraction is allowed for a bare number). The
/// result must lie in `min..=max`; the error says what was expected.
pub fn parse_flag(
    text: &str,
    bare: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let text = text.trim();
    let value = if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .and_then(|v| Duration::try_from_secs_f64(v * bare.as_secs_f64()).ok())
            .ok_or_else(|| format!("`{text}` is not a number"))?
    } else {
        Duration::from_millis(parse_ms(text).map_err(|e| format!("`{text}`: {e}"))?)
    };
    if value < min || value > max {
        return Err(format!(
            "`{text}` is outside {} to {}",
            show(min),
            show(max)
        ));
    }
    Ok(value)
}

/// A duration in the largest unit that writes it whole: `90s`, `3h`, `1500ms`.
pub fn show(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    UNITS
        .iter()
        .rev()
        .find(|&&(_, scale)| ms % scale == 0)
        .map(|(u, scale)| format!("{}{u}", ms / scale))
        .unwrap_or_else(|| format!("{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(parse_ms("500ms"), Ok(500));
        assert_eq!(parse_ms("30s"), Ok(30_000));
        assert_eq!(parse_ms("10m"), Ok(600_000));
        assert_eq!(parse_ms("3h"), Ok(10_800_000));
        assert_eq!(parse_ms("1d"), Ok(86_400_000));
        for bad in ["", "s", "3", "3 h", "1min", "1.5h", "-1s", "3H", "1h30m"] {
            assert_eq!(parse_ms(bad), Err(DurationError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_ms("99999999999999999999d"),
            Err(DurationError::TooLarge)
        );
        assert_eq!(parse_ms("999999999999999d"), Err(DurationError::TooLarge));
    }

    #[test]
    fn flags() {
        let (ms, s) = (Duration::from_millis(1), Duration::from_secs(1));
        let day = Duration::from_secs(86_400);
        assert_eq!(
            parse_flag("3h", ms, ms, day),
            Ok(Duration::from_secs(10_800))
        );
        assert_eq!(parse_flag("5000", ms, ms, day), Ok(Duration::from_secs(5)));
        assert_eq!(parse_flag("10", s, s, day), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_flag("0.5", s, ms, day),
            Ok(Duration::from_millis(500))
        );
        let err = |t: &str| parse_flag(t, s, s, day).err().unwrap_or_default();
        assert!(err("2d").contains("outside 1s to 1d"));
        assert!(parse_flag("0", s, s, day).is_err());
        assert!(err("3 hours").contains("e.g. `90s`"));
        assert!(parse_flag("1.2.3", s, s, day).is_err());
        assert!(parse_flag("", s, s, day).is_err());
    }

    #[test]
    fn shown_whole() {
        assert_eq!(show(Duration::from_secs(90)), "90s");
        assert_eq!(show(Duration::from_secs(10_800)), "3h");
        assert_eq!(show(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(show(Duration::ZERO), "0s");
    }
}
