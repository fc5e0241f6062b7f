//! The optional, human-readable event trace of a run: one line per event, prefixed by the virtual
//! tick.
//!
//! It owns the lines. It never formats anything while disabled: callers go through
//! [`trace_event!`](crate::trace_event), which checks [`Trace::is_enabled`] before building the
//! arguments, so a run without a trace pays one branch per event.

use std::fmt::{self, Write};

#[derive(Debug, Clone, Default)]
pub struct Trace {
    enabled: bool,
    lines: Vec<String>,
}

impl Trace {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            lines: Vec::new(),
        }
    }

    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Append one line. Prefer the `trace_event!` macro, which skips formatting when disabled.
    pub fn push(&mut self, now: u64, args: fmt::Arguments<'_>) {
        if !self.enabled {
            return;
        }
        let mut line = String::with_capacity(64);
        let _ = write!(line, "{now:>6} ");
        let _ = line.write_fmt(args);
        self.lines.push(line);
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

/// `trace_event!(trace, now, "format", args...)`: record an event if the trace is on.
#[macro_export]
macro_rules! trace_event {
    ($trace:expr, $now:expr, $($arg:tt)*) => {
        if $trace.is_enabled() {
            $trace.push($now, format_args!($($arg)*));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled() {
        let mut off = Trace::new(false);
        let mut formatted = false;
        trace_event!(off, 3, "{}", {
            formatted = true;
            "x"
        });
        assert!(off.lines().is_empty());
        assert!(
            !formatted,
            "arguments are not evaluated when the trace is off"
        );
        let mut on = Trace::new(true);
        trace_event!(on, 12, "n{} became {}", 1, "leader");
        assert_eq!(on.lines(), ["    12 n1 became leader"]);
    }
}
