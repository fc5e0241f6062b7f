//! Durations written as Go's `time.ParseDuration` reads them, which is how etcd reads
//! `--auto-compaction-retention` when it is not a bare number: an optional sign, then one or more
//! decimal numbers each followed by a unit (`ns`, `us` / `µs` / `μs`, `ms`, `s`, `m`, `h`), as in
//! `30m`, `1h30m`, `1.5h`, `500ms`; `0` alone needs no unit. Pure: no clock, no I/O.

use std::time::Duration;

/// The largest duration Go can represent (an `int64` of nanoseconds, about 292 years).
const NANOS_MAX: u128 = i64::MAX as u128;

/// Fraction digits taken into account: more cannot change a whole number of nanoseconds.
const FRACTION_DIGITS_MAX: usize = 18;

/// A parsed duration: its sign apart, since a negative one is valid Go but a bad retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

/// Reads `text` with Go's grammar; the error says what is wrong with it.
pub fn parse(text: &str) -> Result<SignedDuration, String> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(SignedDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err("no duration given".into());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let (part_nanos, after) = parse_part(rest)?;
        total_nanos = total_nanos
            .checked_add(part_nanos)
            .filter(|&nanos| nanos <= NANOS_MAX)
            .ok_or("out of range (at most 2562047h)")?;
        rest = after;
    }
    Ok(SignedDuration {
        negative,
        magnitude: Duration::from_nanos(total_nanos as u64),
    })
}

/// One `number unit` pair at the start of `text`: its nanoseconds, and what follows it.
fn parse_part(text: &str) -> Result<(u128, &str), String> {
    let (whole_digits, rest) = split_digits(text);
    let (fraction_digits, rest) = match rest.strip_prefix('.') {
        Some(after_point) => split_digits(after_point),
        None => ("", rest),
    };
    if whole_digits.is_empty() && fraction_digits.is_empty() {
        return Err(format!("expected a number at '{text}'"));
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let unit_nanos: u128 = match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "" => {
            return Err(format!(
                "missing unit after '{whole_digits}{fraction_digits}'"
            ))
        }
        other => {
            return Err(format!(
                "unknown unit '{other}' (use ns, us, ms, s, m or h)"
            ))
        }
    };
    let whole = whole_digits
        .bytes()
        .try_fold(0u128, |value, digit| {
            value
                .checked_mul(10)?
                .checked_add((digit - b'0') as u128)
                .filter(|&value| value <= NANOS_MAX)
        })
        .ok_or("out of range (at most 2562047h)")?;
    let fraction_digits = &fraction_digits[..fraction_digits.len().min(FRACTION_DIGITS_MAX)];
    let fraction = fraction_digits
        .bytes()
        .fold(0u128, |value, digit| value * 10 + (digit - b'0') as u128);
    let fraction_scale = 10u128.pow(fraction_digits.len() as u32);
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|nanos| nanos.checked_add(fraction * unit_nanos / fraction_scale))
        .ok_or("out of range (at most 2562047h)")?;
    Ok((nanos, rest))
}

fn split_digits(text: &str) -> (&str, &str) {
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positive(text: &str) -> Duration {
        let parsed = parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
        assert!(!parsed.negative, "{text}");
        parsed.magnitude
    }

    #[test]
    fn the_forms_go_accepts() {
        assert_eq!(positive("0"), Duration::ZERO);
        assert_eq!(positive("0s"), Duration::ZERO);
        assert_eq!(positive("30m"), Duration::from_secs(1800));
        assert_eq!(positive("1h30m"), Duration::from_secs(5400));
        assert_eq!(positive("1.5h"), Duration::from_secs(5400));
        assert_eq!(positive(".5s"), Duration::from_millis(500));
        assert_eq!(positive("5.s"), Duration::from_secs(5));
        assert_eq!(positive("+2s"), Duration::from_secs(2));
        assert_eq!(positive("500ms"), Duration::from_millis(500));
        assert_eq!(positive("1us"), Duration::from_micros(1));
        assert_eq!(positive("1µs"), Duration::from_micros(1));
        assert_eq!(positive("1μs"), Duration::from_micros(1));
        assert_eq!(positive("3ns"), Duration::from_nanos(3));
        assert_eq!(positive("1h1m1s1ms"), Duration::from_millis(3_661_001));
        assert_eq!(
            positive("1.0000000005s"),
            Duration::from_secs(1),
            "fractions are truncated to whole nanoseconds"
        );
        assert_eq!(positive("2562047h"), Duration::from_secs(2_562_047 * 3600));
        let negative = parse("-1h").unwrap();
        assert!(negative.negative);
        assert_eq!(negative.magnitude, Duration::from_secs(3600));
    }

    #[test]
    fn what_go_refuses_is_refused_with_the_reason() {
        for (text, reason) in [
            ("", "no duration given"),
            ("-", "no duration given"),
            ("5", "missing unit"),
            ("1.5", "missing unit"),
            ("1h30", "missing unit"),
            ("abc", "expected a number"),
            (".h", "expected a number"),
            ("1d", "unknown unit 'd'"),
            ("1 h", "unknown unit ' h'"),
            ("2562048h", "out of range"),
            ("99999999999999999999999999999999999999999s", "out of range"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
