//! etcd's automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as
//! etcd 3.4 does it:
//!
//! - **periodic**: the retention is a duration (`30m`, `1h30m`, or a bare number of hours). The
//!   member samples its store's revision every tenth of the retention (of an hour, for longer
//!   retentions); a retention after starting, and from then on every retention (every hour, for
//!   longer ones), the leader compacts to the revision that was current one retention ago.
//! - **revision**: the retention is a number of revisions; every 5 minutes the leader compacts to
//!   the current revision minus the retention.
//!
//! `0` (the default) turns it off. This module owns the policy as configured and its parsing;
//! [`schedule`] decides, from the time and the store's revisions, when and to which revision to
//! compact (pure, tested with a fake clock); `task` asks it and proposes the compaction through
//! the log, as a client's Compaction call does. Nothing here changes the store directly.

pub mod go_duration;
pub mod schedule;
mod task;

pub(crate) use task::spawn;

use crate::config::ConfigError;
use std::fmt;
use std::time::Duration;

/// The shortest periodic retention accepted. Samples are taken every tenth of it, and below a
/// tenth of this they would come faster than the 10 ms Raft tick; etcd accepts anything from
/// 10 ns up, which nobody means (and below 10 ns it divides by zero).
pub const PERIODIC_RETENTION_MIN: Duration = Duration::from_millis(100);

/// The longest periodic retention accepted: a year. The schedule keeps one revision sample per
/// six minutes of retention (87,601 at this limit, about 1.4 MB).
pub const PERIODIC_RETENTION_MAX: Duration = Duration::from_secs(8760 * 3600);

/// etcd's flag names, for errors.
const MODE_FLAG: &str = "auto-compaction-mode";
const RETENTION_FLAG: &str = "auto-compaction-retention";

/// What `--auto-compaction-mode` and `--auto-compaction-retention` configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoCompaction {
    /// Retention `0`: only clients compact (etcd's default).
    #[default]
    Disabled,
    /// Keep this much history: compact to the revision that was current this long ago.
    Periodic { retention: Duration },
    /// Keep this many revisions: compact to the current revision minus this.
    Revision { retention_revisions: i64 },
}

/// `--auto-compaction-mode`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Periodic,
    Revision,
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;

    /// Empty means the default, `periodic`.
    fn from_str(text: &str) -> Result<Mode, ConfigError> {
        match text {
            "periodic" | "" => Ok(Mode::Periodic),
            "revision" => Ok(Mode::Revision),
            other => Err(error(
                MODE_FLAG,
                format!("'{other}' is neither 'periodic' nor 'revision'"),
            )),
        }
    }
}

impl AutoCompaction {
    /// Reads the two flags as etcd 3.4 does: a retention that is a whole number is hours in
    /// periodic mode and revisions in revision mode; anything else must be a duration, which
    /// only periodic mode takes (etcd would count its nanoseconds as revisions). An empty
    /// retention is `0`. Negative values are refused.
    pub fn from_flags(mode: &str, retention: &str) -> Result<AutoCompaction, ConfigError> {
        let mode: Mode = mode.parse()?;
        let retention = retention.trim();
        let policy = if retention.is_empty() {
            AutoCompaction::Disabled
        } else if let Some(count) = whole_number(retention)? {
            match mode {
                Mode::Periodic => {
                    let hours = count.min(u64::MAX as u128 / 3600) as u64;
                    periodic(Duration::from_secs(hours.saturating_mul(3600)))
                }
                Mode::Revision if count > i64::MAX as u128 => {
                    return Err(error(
                        RETENTION_FLAG,
                        format!("{retention} revisions is more than a revision can count"),
                    ))
                }
                Mode::Revision => revision(count as i64),
            }
        } else {
            let parsed = go_duration::parse(retention).map_err(|reason| {
                error(
                    RETENTION_FLAG,
                    format!(
                        "'{retention}' is neither a whole number nor a duration such as 30m or \
                         1h30m ({reason})"
                    ),
                )
            })?;
            if parsed.negative && !parsed.magnitude.is_zero() {
                return Err(error(
                    RETENTION_FLAG,
                    format!("'{retention}' is negative; 0 turns automatic compaction off"),
                ));
            }
            match mode {
                Mode::Periodic => periodic(parsed.magnitude),
                Mode::Revision => {
                    return Err(error(
                        RETENTION_FLAG,
                        format!(
                            "'{retention}' is a duration, but --{MODE_FLAG} revision takes a \
                             number of revisions"
                        ),
                    ))
                }
            }
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the bounds (for configurations built in code as well as from flags).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            AutoCompaction::Disabled => Ok(()),
            AutoCompaction::Periodic { retention }
                if (PERIODIC_RETENTION_MIN..=PERIODIC_RETENTION_MAX).contains(&retention) =>
            {
                Ok(())
            }
            AutoCompaction::Periodic { retention } => Err(error(
                RETENTION_FLAG,
                format!(
                    "{} is outside {}..={} in periodic mode (0 turns automatic compaction off)",
                    DurationText(retention),
                    DurationText(PERIODIC_RETENTION_MIN),
                    DurationText(PERIODIC_RETENTION_MAX)
                ),
            )),
            AutoCompaction::Revision {
                retention_revisions,
            } if retention_revisions > 0 => Ok(()),
            AutoCompaction::Revision { .. } => Err(error(
                RETENTION_FLAG,
                "must be at least 1 revision in revision mode (0 turns automatic compaction off)",
            )),
        }
    }

    /// The retention as the flag takes it (`1h30m`, `1000`; `0` when off), for logs.
    pub fn retention_text(&self) -> String {
        match *self {
            AutoCompaction::Disabled => "0".into(),
            AutoCompaction::Periodic { retention } => DurationText(retention).to_string(),
            AutoCompaction::Revision {
                retention_revisions,
            } => retention_revisions.to_string(),
        }
    }

    /// The mode's name, as the flag takes it.
    pub fn mode_name(&self) -> &'static str {
        match self {
            AutoCompaction::Disabled => "off",
            AutoCompaction::Periodic { .. } => "periodic",
            AutoCompaction::Revision { .. } => "revision",
        }
    }
}

/// A zero retention turns it off whatever the mode.
fn periodic(retention: Duration) -> AutoCompaction {
    if retention.is_zero() {
        AutoCompaction::Disabled
    } else {
        AutoCompaction::Periodic { retention }
    }
}

fn revision(retention_revisions: i64) -> AutoCompaction {
    if retention_revisions == 0 {
        AutoCompaction::Disabled
    } else {
        AutoCompaction::Revision {
            retention_revisions,
        }
    }
}

/// `Some` for what Go's `strconv.Atoi` reads as a number that is not negative (digits after an
/// optional sign), as etcd tries first; `None` for what is left to the duration parser (which
/// refuses a negative number for its missing unit, as etcd's does).
fn whole_number(text: &str) -> Result<Option<u128>, ConfigError> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Ok(None);
    }
    let value = digits
        .parse::<u128>()
        .map_err(|_| error(RETENTION_FLAG, format!("'{text}' is too large a number")))?;
    Ok((!negative || value == 0).then_some(value))
}

fn error(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// The retention as operators write it (`1h`, `30m`, `1h30m`, `500ms`), for logs and errors.
pub struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, unit_nanos) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ] {
            if nanos >= unit_nanos {
                write!(f, "{}{unit}", nanos / unit_nanos)?;
                nanos %= unit_nanos;
            }
        }
        Ok(())
    }
}

impl fmt::Display for AutoCompaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AutoCompaction::Disabled => f.write_str("off"),
            AutoCompaction::Periodic { retention } => {
                write!(f, "periodic, retention {}", DurationText(retention))
            }
            AutoCompaction::Revision {
                retention_revisions,
            } => write!(f, "revision, retention {retention_revisions} revisions"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mode: &str, retention: &str) -> AutoCompaction {
        AutoCompaction::from_flags(mode, retention)
            .unwrap_or_else(|error| panic!("{mode} {retention}: {error}"))
    }

    fn refused(mode: &str, retention: &str) -> ConfigError {
        AutoCompaction::from_flags(mode, retention)
            .expect_err(&format!("{mode:?} {retention:?} is accepted"))
    }

    fn hours(count: u64) -> AutoCompaction {
        AutoCompaction::Periodic {
            retention: Duration::from_secs(count * 3600),
        }
    }

    #[test]
    fn periodic_takes_hours_or_a_duration() {
        assert_eq!(parse("periodic", "1"), hours(1));
        assert_eq!(parse("periodic", "+24"), hours(24));
        assert_eq!(parse("", "2"), hours(2), "empty mode is etcd's default");
        assert_eq!(
            parse("periodic", "30m"),
            AutoCompaction::Periodic {
                retention: Duration::from_secs(1800)
            }
        );
        assert_eq!(
            parse("periodic", "1h30m").to_string(),
            "periodic, retention 1h30m"
        );
        assert_eq!(
            parse("periodic", "1.5h").to_string(),
            "periodic, retention 1h30m"
        );
        assert_eq!(
            parse("periodic", "500ms").to_string(),
            "periodic, retention 500ms"
        );
        assert_eq!(
            parse("periodic", "100ms").to_string(),
            "periodic, retention 100ms"
        );
        assert_eq!(parse("periodic", "8760h"), hours(8760));
    }

    #[test]
    fn revision_takes_a_count() {
        assert_eq!(
            parse("revision", "1000"),
            AutoCompaction::Revision {
                retention_revisions: 1000
            }
        );
        assert_eq!(
            parse("revision", "9223372036854775807").to_string(),
            "revision, retention 9223372036854775807 revisions"
        );
    }

    #[test]
    fn zero_or_empty_turns_it_off_in_either_mode() {
        for mode in ["periodic", "revision", ""] {
            for retention in ["0", "", "  ", "+0", "-0", "000"] {
                assert_eq!(
                    parse(mode, retention),
                    AutoCompaction::Disabled,
                    "{mode} {retention:?}"
                );
            }
        }
        for retention in ["0s", "0h0m", "-0", "-0s"] {
            assert_eq!(
                parse("periodic", retention),
                AutoCompaction::Disabled,
                "{retention}"
            );
        }
        assert_eq!(AutoCompaction::default(), AutoCompaction::Disabled);
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let error = refused("hourly", "1");
        assert_eq!(error.flag, "auto-compaction-mode");
        assert_eq!(
            error.to_string(),
            "--auto-compaction-mode: 'hourly' is neither 'periodic' nor 'revision'"
        );
        assert_eq!(
            refused("hourly", "0").flag,
            "auto-compaction-mode",
            "even when off, as etcd"
        );
        for (mode, retention, reason) in [
            ("periodic", "abc", "'abc' is neither a whole number nor a duration"),
            ("revision", "abc", "'abc' is neither a whole number nor a duration"),
            ("periodic", "-1", "missing unit"),
            ("revision", "-1", "missing unit"),
            ("periodic", "-1h", "'-1h' is negative"),
            ("periodic", "1d", "unknown unit 'd'"),
            ("revision", "1h", "'1h' is a duration, but --auto-compaction-mode revision takes a number of revisions"),
            ("revision", "9223372036854775808", "more than a revision can count"),
            ("periodic", "99ms", "99ms is outside 100ms..=8760h"),
            ("periodic", "8761", "8761h is outside 100ms..=8760h"),
            ("periodic", "8760h1ns", "8760h1ns is outside"),
            ("periodic", "999999999999999999999999999999999999999999", "too large a number"),
        ] {
            let error = refused(mode, retention);
            assert_eq!(error.flag, "auto-compaction-retention", "{mode} {retention}");
            assert!(
                error.to_string().contains(reason),
                "{mode} {retention}: {error}"
            );
        }
    }

    #[test]
    fn configurations_built_in_code_are_checked_too() {
        let zero_revisions = AutoCompaction::Revision {
            retention_revisions: 0,
        };
        assert_eq!(
            zero_revisions.validate().unwrap_err().flag,
            "auto-compaction-retention"
        );
        let negative = AutoCompaction::Revision {
            retention_revisions: -5,
        };
        assert!(negative.validate().is_err());
        let too_short = AutoCompaction::Periodic {
            retention: Duration::from_millis(10),
        };
        assert!(too_short.validate().is_err());
    }
}
