//! The bench's own CPU time (user and system, all threads), from `getrusage(RUSAGE_SELF)`: the
//! bench shares the machine with the servers it measures, so its cost per operation is part of
//! every report.

use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    /// CPU used by this process so far; zero if the kernel will not say.
    pub fn of_this_process() -> CpuTime {
        // SAFETY: getrusage only writes the struct we pass, which is plain data.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
                return CpuTime::default();
            }
            usage
        };
        let duration = |time: libc::timeval| {
            Duration::from_secs(time.tv_sec.max(0) as u64)
                + Duration::from_micros(time.tv_usec.max(0) as u64)
        };
        CpuTime {
            user: duration(usage.ru_utime),
            system: duration(usage.ru_stime),
        }
    }

    /// CPU used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_as_user_time() {
        let before = CpuTime::of_this_process();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until 20 ms of CPU show (the machine may be busy, so wall time says little).
        let used = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let used = CpuTime::of_this_process().since(before);
            if used.total() >= Duration::from_millis(20) {
                break used;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no CPU time seen: {used:?}"
            );
        };
        assert!(used.user > Duration::ZERO, "{used:?}");
    }
}
