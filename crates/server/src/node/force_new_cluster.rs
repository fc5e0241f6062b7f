//! `--force-new-cluster`: turns a surviving member's data into a one-member cluster, the last
//! resort when a quorum is lost for good (the other members' machines are gone).
//!
//! As etcd does it: the log is cut after the last entry known to be committed (the persisted
//! commit index, or the state machine's applied index if that is further), so proposals that
//! never committed are dropped, and membership entries are appended, one per other member,
//! removing it (a learner that survives is promoted first), all marked committed. They are
//! written to the WAL and synced before the replica is built from them, so the replica starts as
//! the one voter of its cluster and elects itself; other members' data directories must not be
//! started again (they would form a second cluster with the same history).
//!
//! It never touches a member whose data says it is not in the membership, and it changes nothing
//! when the member is already the only one.

use ballot_core::{
    Entry, EntryPayload, LogIndex, Membership, MembershipChange, NodeId, PersistedState,
};
use ballot_storage::wal::Wal;

/// Rewrites `persisted` (and the WAL it came from) as described above. `applied` is the state
/// machine's applied index, every entry up to which is committed.
pub(crate) fn rewrite(
    persisted: &mut PersistedState,
    wal: &mut Wal,
    applied: LogIndex,
    member: NodeId,
) -> Result<(), String> {
    let compacted = persisted
        .compacted
        .as_ref()
        .map(|meta| meta.last_included)
        .unwrap_or_default();
    let last_index = persisted
        .entries
        .last()
        .map_or(compacted.index, |entry| entry.index);
    let committed = persisted
        .hard_state
        .commit_index
        .max(applied)
        .max(compacted.index)
        .min(last_index);
    let kept = persisted
        .entries
        .iter()
        .take_while(|entry| entry.index <= committed)
        .count();
    let mut membership = persisted.base_membership();
    for entry in &persisted.entries[..kept] {
        if let EntryPayload::Membership(_, after) = &entry.payload {
            membership = after.clone();
        }
    }
    let changes = changes_to_one_voter(&membership, member).map_err(|reason| {
        format!("--force-new-cluster: {reason} (at the last committed entry, index {committed})")
    })?;
    if changes.is_empty() {
        tracing::warn!(
            "--force-new-cluster: this member is already the only one; nothing to change"
        );
        return Ok(());
    }
    let term = persisted
        .entries
        .last()
        .map_or(compacted.term, |entry| entry.term)
        .max(persisted.hard_state.term);
    let mut forced = Vec::with_capacity(changes.len());
    let mut index = committed;
    for change in changes {
        membership = membership
            .apply(change)
            .map_err(|error| format!("--force-new-cluster: {change}: {error}"))?;
        index += 1;
        forced.push(Entry {
            index,
            term,
            payload: EntryPayload::Membership(change, membership.clone()),
        });
    }
    assert!(
        membership.voters.len() == 1 && membership.voters.contains(&member),
        "a forced membership has this member as its one voter"
    );
    let dropped = persisted.entries.len() - kept;
    let mut hard_state = persisted.hard_state;
    hard_state.term = term;
    hard_state.commit_index = index;
    // Entries at stored indexes replace the uncommitted tail; nothing counts until synced.
    wal.append(&forced, Some(hard_state))
        .and_then(|_| wal.sync())
        .map_err(|error| {
            format!("--force-new-cluster: cannot write the new membership: {error}")
        })?;
    tracing::warn!(
        committed,
        dropped_uncommitted = dropped,
        removed = forced.len(),
        "--force-new-cluster: this member is now the only one of its cluster; start no other \
         old member again, add new ones with `member add`"
    );
    persisted.entries.truncate(kept);
    persisted.entries.extend(forced);
    persisted.hard_state = hard_state;
    Ok(())
}

/// The single-member changes that leave `member` the one voter: every other voter and learner
/// removed, `member` promoted first if it is a learner.
fn changes_to_one_voter(
    membership: &Membership,
    member: NodeId,
) -> Result<Vec<MembershipChange>, String> {
    let mut changes = Vec::new();
    if membership.is_learner(member) {
        changes.push(MembershipChange::PromoteLearner(member));
    } else if !membership.is_voter(member) {
        return Err(format!(
            "member {member:x} is not in the membership its data records ({:?})",
            membership
        ));
    }
    changes.extend(
        membership
            .members()
            .filter(|&other| other != member)
            .map(MembershipChange::Remove),
    );
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_member_is_removed_and_a_learner_promoted_first() {
        let membership = Membership {
            voters: [1, 2, 3].into(),
            learners: [4].into(),
        };
        assert_eq!(
            changes_to_one_voter(&membership, 2).unwrap(),
            vec![
                MembershipChange::Remove(1),
                MembershipChange::Remove(3),
                MembershipChange::Remove(4)
            ]
        );
        assert_eq!(
            changes_to_one_voter(&membership, 4).unwrap()[0],
            MembershipChange::PromoteLearner(4)
        );
        assert!(changes_to_one_voter(&membership, 9).is_err());
        assert!(changes_to_one_voter(&Membership::with_voters([1]), 1)
            .unwrap()
            .is_empty());
    }
}
