//! When to compact automatically and to which revision: etcd 3.4's two schedules as a pure state
//! machine. It is told the time (as time since it started), the store's revisions and whether
//! this member leads, and answers with a revision to compact to, or nothing. It reads no clock
//! and does no I/O, so a test drives days of it with a fake clock.
//!
//! Periodic (retention `P`): a check every `min(P, 1h) / 10`. Every check samples the current
//! revision, whether this member leads or not, so a member that becomes leader knows what was
//! current one retention ago. The first compaction is due `P` after the start, later ones
//! `min(P, 1h)` after the last success; the target is the revision current `P` ago (the newest
//! sample taken at or before then). A target the store has already compacted counts as done.
//! A failed proposal is retried at the next check.
//!
//! Revision (retention `N` revisions): a check every 5 minutes; the target is the current
//! revision minus `N`, when that is above 0 and above the compacted revision.
//!
//! A member that does not lead only samples (etcd pauses its compactor then), so exactly one
//! member, the leader, proposes compactions.

use super::AutoCompaction;
use ballot_storage::mvcc::types::Revision;
use std::collections::VecDeque;
use std::time::Duration;

/// Periodic mode checks this many times per retention (per hour, for longer retentions), as
/// etcd does.
pub const PERIODIC_CHECKS_PER_INTERVAL: u32 = 10;

/// Periodic mode compacts at least this often once it has started, whatever the retention.
pub const PERIODIC_COMPACTION_INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// Revision mode checks this often, as etcd does (a fixed interval there too).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What the store says at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreRevisions {
    pub current: Revision,
    pub compacted: Revision,
}

/// The current revision at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at: Duration,
    revision: Revision,
}

#[derive(Debug)]
enum Mode {
    Periodic {
        retention: Duration,
        /// Oldest first: the newest sample at or before `now - retention`, then every later one
        /// whose revision differs from the one before it (a sample equal to its predecessor says
        /// nothing new, so idle stores keep few).
        samples: VecDeque<Sample>,
        last_success_at: Duration,
        compacted_once: bool,
    },
    Revision {
        retention_revisions: Revision,
    },
}

/// The decisions of one member's automatic compaction.
#[derive(Debug)]
pub struct Schedule {
    mode: Mode,
    check_interval: Duration,
    next_check_at: Duration,
}

impl Schedule {
    /// A schedule started at `now` on a store at `current_revision`; `None` when automatic
    /// compaction is off.
    pub fn new(
        policy: AutoCompaction,
        now: Duration,
        current_revision: Revision,
    ) -> Option<Schedule> {
        let (mode, check_interval) = match policy {
            AutoCompaction::Disabled => return None,
            AutoCompaction::Periodic { retention } => (
                Mode::Periodic {
                    retention,
                    samples: VecDeque::from([Sample {
                        at: now,
                        revision: current_revision,
                    }]),
                    last_success_at: now,
                    compacted_once: false,
                },
                retention.min(PERIODIC_COMPACTION_INTERVAL_MAX) / PERIODIC_CHECKS_PER_INTERVAL,
            ),
            AutoCompaction::Revision {
                retention_revisions,
            } => (
                Mode::Revision {
                    retention_revisions,
                },
                REVISION_CHECK_INTERVAL,
            ),
        };
        assert!(
            !check_interval.is_zero(),
            "a validated retention gives a check interval above zero"
        );
        Some(Schedule {
            mode,
            check_interval,
            next_check_at: now + check_interval,
        })
    }

    /// Time between two checks.
    pub fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// When the next check is due (since the start); [`Schedule::check`] does nothing before.
    pub fn next_check_at(&self) -> Duration {
        self.next_check_at
    }

    /// The check due at `now`: the revision to compact to, if this member leads and a
    /// compaction is due. Call [`Schedule::compacted`] once it succeeds (or the store answers
    /// that the revision is compacted already); without that, the next check tries again.
    pub fn check(
        &mut self,
        now: Duration,
        store: StoreRevisions,
        leading: bool,
    ) -> Option<Revision> {
        if now < self.next_check_at {
            return None;
        }
        self.next_check_at = now + self.check_interval;
        match &mut self.mode {
            Mode::Periodic {
                retention,
                samples,
                last_success_at,
                compacted_once,
            } => {
                let retention = *retention;
                record(samples, now, store.current, retention);
                if !leading {
                    return None;
                }
                let interval = if *compacted_once {
                    retention.min(PERIODIC_COMPACTION_INTERVAL_MAX)
                } else {
                    retention
                };
                if now.saturating_sub(*last_success_at) < interval {
                    return None;
                }
                let horizon = now.checked_sub(retention)?;
                let target = samples
                    .front()
                    .filter(|oldest| oldest.at <= horizon)?
                    .revision;
                if target <= store.compacted {
                    self.compacted(now);
                    return None;
                }
                Some(target)
            }
            Mode::Revision {
                retention_revisions,
            } => {
                let target = store.current - *retention_revisions;
                (leading && target > 0 && target > store.compacted).then_some(target)
            }
        }
    }

    /// The compaction asked for by the last check is done (or was done already), at `now`.
    pub fn compacted(&mut self, now: Duration) {
        if let Mode::Periodic {
            last_success_at,
            compacted_once,
            ..
        } = &mut self.mode
        {
            *last_success_at = now;
            *compacted_once = true;
        }
    }

    /// Revision samples held (periodic mode): bounded by the checks in one retention, plus one.
    pub fn samples_held(&self) -> usize {
        match &self.mode {
            Mode::Periodic { samples, .. } => samples.len(),
            Mode::Revision { .. } => 0,
        }
    }
}

/// Adds the sample taken at `now`, then drops the samples no later target can be: those older
/// than the newest one at or before `now - retention`.
fn record(samples: &mut VecDeque<Sample>, now: Duration, revision: Revision, retention: Duration) {
    if samples.back().is_none_or(|last| last.revision != revision) {
        samples.push_back(Sample { at: now, revision });
    }
    let Some(horizon) = now.checked_sub(retention) else {
        return;
    };
    while samples.get(1).is_some_and(|next| next.at <= horizon) {
        samples.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    /// A fake member: its clock, its store and whether it leads. A compaction the schedule asks
    /// for is applied to the store at once, unless `failing`.
    struct Member {
        schedule: Schedule,
        now: Duration,
        store: StoreRevisions,
        leading: bool,
        failing: bool,
        /// (when, revision) of every compaction proposed.
        proposed: Vec<(Duration, Revision)>,
    }

    impl Member {
        fn new(policy: AutoCompaction, revision: Revision) -> Member {
            Member {
                schedule: Schedule::new(policy, Duration::ZERO, revision).unwrap(),
                now: Duration::ZERO,
                store: StoreRevisions {
                    current: revision,
                    compacted: 0,
                },
                leading: true,
                failing: false,
                proposed: Vec::new(),
            }
        }

        /// Runs the checks due until `end`, the store's revision at each given by `revision`.
        fn run_until(&mut self, end: Duration, revision: impl Fn(Duration) -> Revision) {
            while self.schedule.next_check_at() <= end {
                self.now = self.schedule.next_check_at();
                self.store.current = revision(self.now);
                self.check();
            }
        }

        fn check(&mut self) {
            let Some(target) = self.schedule.check(self.now, self.store, self.leading) else {
                return;
            };
            assert!(
                target > self.store.compacted && target <= self.store.current,
                "the schedule asks only for compactions the store can make"
            );
            self.proposed.push((self.now, target));
            if !self.failing {
                self.store.compacted = target;
                self.schedule.compacted(self.now);
            }
        }
    }

    fn periodic(retention: Duration) -> AutoCompaction {
        AutoCompaction::Periodic { retention }
    }

    /// One revision per minute since the start, from 1.
    fn per_minute(at: Duration) -> Revision {
        1 + (at.as_secs() / 60) as Revision
    }

    #[test]
    fn periodic_one_hour_checks_every_six_minutes_and_keeps_an_hour() {
        let mut member = Member::new(periodic(HOUR), 1);
        assert_eq!(member.schedule.check_interval(), 6 * MINUTE);
        member.run_until(3 * HOUR, per_minute);
        assert_eq!(
            member.proposed,
            vec![(HOUR, 1), (2 * HOUR, 61), (3 * HOUR, 121)],
            "each an hour after the last, to the revision of an hour before"
        );
    }

    #[test]
    fn periodic_over_an_hour_waits_a_retention_then_compacts_hourly() {
        let mut member = Member::new(periodic(24 * HOUR), 1);
        assert_eq!(member.schedule.check_interval(), 6 * MINUTE);
        member.run_until(27 * HOUR, per_minute);
        assert_eq!(
            member.proposed,
            vec![
                (24 * HOUR, 1),
                (25 * HOUR, 61),
                (26 * HOUR, 121),
                (27 * HOUR, 181)
            ]
        );
        assert!(
            member.schedule.samples_held() <= 24 * 10 + 2,
            "{} samples",
            member.schedule.samples_held()
        );
    }

    #[test]
    fn periodic_under_an_hour_compacts_every_retention() {
        let mut member = Member::new(periodic(10 * MINUTE), 1);
        assert_eq!(member.schedule.check_interval(), MINUTE);
        member.run_until(30 * MINUTE, per_minute);
        assert_eq!(
            member.proposed,
            vec![(10 * MINUTE, 1), (20 * MINUTE, 11), (30 * MINUTE, 21)]
        );
    }

    #[test]
    fn periodic_boundaries_are_inclusive_and_nothing_happens_between_checks() {
        let second = Duration::from_secs(1);
        let millis = Duration::from_millis;
        let mut schedule = Schedule::new(periodic(second), Duration::ZERO, 1).unwrap();
        assert_eq!(schedule.check_interval(), millis(100));
        let store = |current| StoreRevisions {
            current,
            compacted: 0,
        };
        for tenth in 1..10u64 {
            assert_eq!(
                schedule.check(millis(100 * tenth), store(tenth as i64 + 1), true),
                None
            );
        }
        assert_eq!(
            schedule.check(millis(950), store(99), true),
            None,
            "not due: no check, no sample"
        );
        assert_eq!(
            schedule.check(millis(1000), store(11), true),
            Some(1),
            "due exactly one retention after the start, to the revision current then"
        );
        schedule.compacted(millis(1000));
        for tenth in 11..20u64 {
            assert_eq!(
                schedule.check(millis(100 * tenth), store(tenth as i64 + 1), true),
                None
            );
        }
        assert_eq!(
            schedule.check(millis(2000), store(21), true),
            Some(11),
            "the sample taken exactly one retention ago, not an older one"
        );
    }

    #[test]
    fn a_revision_that_does_not_move_is_not_compacted_twice() {
        let mut member = Member::new(periodic(10 * MINUTE), 1);
        member.run_until(40 * MINUTE, |at| per_minute(at).min(5));
        assert_eq!(
            member.proposed,
            vec![(10 * MINUTE, 1), (20 * MINUTE, 5)],
            "then 5 again: compacted already, nothing proposed"
        );
        // Writes again from minute 45: the first check due (50) still finds 5, one retention
        // ago; the next (60) finds a revision written since.
        member.run_until(60 * MINUTE, |at| 5 + (per_minute(at) - 46).max(0));
        assert_eq!(member.proposed[2..], [(60 * MINUTE, 10)]);
    }

    #[test]
    fn a_revision_compacted_by_a_client_counts_as_done() {
        let mut member = Member::new(periodic(10 * MINUTE), 1);
        member.run_until(9 * MINUTE, per_minute);
        member.store.compacted = 9;
        member.run_until(19 * MINUTE, per_minute);
        assert!(
            member.proposed.is_empty(),
            "revision 1 at 10 minutes was compacted already: skipped, and the next is due at 20"
        );
        member.run_until(20 * MINUTE, per_minute);
        assert_eq!(member.proposed, vec![(20 * MINUTE, 11)]);
    }

    #[test]
    fn a_failed_compaction_is_retried_at_the_next_check() {
        let mut member = Member::new(periodic(10 * MINUTE), 1);
        member.failing = true;
        member.run_until(12 * MINUTE, per_minute);
        assert_eq!(
            member.proposed,
            vec![(10 * MINUTE, 1), (11 * MINUTE, 2), (12 * MINUTE, 3)]
        );
        member.failing = false;
        member.run_until(22 * MINUTE, per_minute);
        assert_eq!(
            member.proposed[3..],
            [(13 * MINUTE, 4)],
            "then the next is due a retention after that success"
        );
    }

    #[test]
    fn a_follower_samples_but_does_not_compact_and_compacts_once_it_leads() {
        let mut member = Member::new(periodic(10 * MINUTE), 1);
        member.run_until(24 * MINUTE, per_minute);
        assert_eq!(member.proposed, vec![(10 * MINUTE, 1), (20 * MINUTE, 11)]);
        member.leading = false;
        member.run_until(42 * MINUTE, per_minute);
        assert_eq!(member.proposed.len(), 2, "nothing while following");
        member.leading = true;
        member.run_until(53 * MINUTE, per_minute);
        assert_eq!(
            member.proposed[2..],
            [(43 * MINUTE, 34), (53 * MINUTE, 44)],
            "at the first check as leader, to the revision of one retention before, sampled \
             while following"
        );
    }

    #[test]
    fn a_member_that_never_led_compacts_at_its_first_check_as_leader() {
        let mut member = Member::new(periodic(10 * MINUTE), 1);
        member.leading = false;
        member.run_until(30 * MINUTE, per_minute);
        assert!(member.proposed.is_empty());
        member.leading = true;
        member.run_until(31 * MINUTE, per_minute);
        assert_eq!(member.proposed, vec![(31 * MINUTE, 22)]);
    }

    #[test]
    fn periodic_samples_stay_bounded_at_the_longest_retention() {
        let retention = super::super::PERIODIC_RETENTION_MAX;
        let mut member = Member::new(periodic(retention), 1);
        let checks_per_retention = (retention.as_secs() / (6 * 60)) as usize;
        member.run_until(retention + 10 * HOUR, |at| {
            1 + (at.as_secs() / 360) as Revision
        });
        assert!(
            member.schedule.samples_held() <= checks_per_retention + 2,
            "{} samples for {checks_per_retention} checks per retention",
            member.schedule.samples_held()
        );
        assert_eq!(member.proposed.len(), 11, "at one retention, then hourly");
        assert_eq!(member.proposed[0], (retention, 1));
    }

    #[test]
    fn an_idle_store_keeps_one_sample() {
        let mut member = Member::new(periodic(HOUR), 7);
        member.run_until(5 * HOUR, |_| 7);
        assert_eq!(member.schedule.samples_held(), 1);
        assert_eq!(member.proposed, vec![(HOUR, 7)], "then compacted already");
    }

    #[test]
    fn revision_mode_checks_every_five_minutes_and_keeps_the_retention() {
        let policy = AutoCompaction::Revision {
            retention_revisions: 1000,
        };
        let mut member = Member::new(policy, 1);
        assert_eq!(member.schedule.check_interval(), 5 * MINUTE);
        let four_fifty_nine = 5 * MINUTE - Duration::from_secs(1);
        member.store.current = 6000;
        assert_eq!(
            member.schedule.check(four_fifty_nine, member.store, true),
            None,
            "not before 5 minutes"
        );
        member.run_until(5 * MINUTE, |_| 500);
        assert!(
            member.proposed.is_empty(),
            "500 - 1000 is below 1: nothing to compact"
        );
        member.run_until(10 * MINUTE, |_| 1000);
        assert!(
            member.proposed.is_empty(),
            "exactly the retention: still nothing"
        );
        member.run_until(15 * MINUTE, |_| 6000);
        assert_eq!(member.proposed, vec![(15 * MINUTE, 5000)]);
        member.run_until(30 * MINUTE, |_| 6000);
        assert_eq!(member.proposed.len(), 1, "the revision did not move");
        member.run_until(35 * MINUTE, |_| 6001);
        assert_eq!(member.proposed[1], (35 * MINUTE, 5001));
    }

    #[test]
    fn revision_mode_pauses_while_following_and_skips_what_a_client_compacted() {
        let policy = AutoCompaction::Revision {
            retention_revisions: 10,
        };
        let mut member = Member::new(policy, 1);
        member.leading = false;
        member.run_until(20 * MINUTE, |at| 100 * per_minute(at));
        assert!(member.proposed.is_empty());
        member.store.compacted = 1491;
        member.leading = true;
        member.run_until(25 * MINUTE, |_| 1500);
        assert!(member.proposed.is_empty(), "1490 is compacted already");
        member.run_until(30 * MINUTE, |_| 1600);
        assert_eq!(member.proposed, vec![(30 * MINUTE, 1590)]);
    }

    #[test]
    fn disabled_has_no_schedule() {
        assert!(Schedule::new(AutoCompaction::Disabled, Duration::ZERO, 1).is_none());
    }
}
