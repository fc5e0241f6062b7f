//! `--force-new-cluster`: turns a surviving member's data into a one-member cluster, the last
//! resort when a quorum is lost for good (the other members' machines are gone).
//!
//! Membership entries are appended after the last entry the survivor holds, one per other
//! member, removing it (a learner that survives is promoted first), in a term no old member can
//! have used (one above every term the survivor knows), and all are marked committed. They are
//! written to the WAL and synced before the replica is built from them, so the replica starts
//! as the one voter of its cluster and elects itself.
//!
//! Unlike etcd, which drops the entries its survivor had not yet seen committed, every entry the
//! survivor holds is kept and becomes committed: an entry the survivor acknowledged may have been
//! committed by the old leader and acknowledged to a client, while the commit index it knows of
//! lags by a heartbeat. (A write whose client saw a timeout may take effect; that was always one
//! of its possible outcomes.)
//!
//! It is done once: `<data-dir>/force-new-cluster` records where, and a later start that still
//! carries the flag changes nothing while the member is alone, and is refused once members have
//! been added (forcing again would cut them off with entries they never had). Other members'
//! old data directories must never be started again: they would form a second cluster with a
//! diverging history.

use ballot_core::{
    Entry, EntryPayload, HardState, Membership, MembershipChange, NodeId, PersistedState,
};
use ballot_storage::atomic_file::write_atomically;
use ballot_storage::wal::Wal;
use std::path::Path;

/// The file that records a forced rewrite, in the data directory.
pub(crate) const MARKER_FILE_NAME: &str = "force-new-cluster";

/// Rewrites `persisted` (and the WAL it came from) as described above.
pub(crate) fn rewrite(
    data_dir: &Path,
    persisted: &mut PersistedState,
    wal: &mut Wal,
    member: NodeId,
) -> Result<(), String> {
    let marker = data_dir.join(MARKER_FILE_NAME);
    let mut membership = persisted.base_membership();
    for entry in &persisted.entries {
        if let EntryPayload::Membership(_, after) = &entry.payload {
            membership = after.clone();
        }
    }
    if membership == Membership::with_voters([member]) {
        tracing::warn!(
            "--force-new-cluster: this member is already the only one; nothing to change \
             (remove the flag from its configuration)"
        );
        return Ok(());
    }
    if marker.exists() {
        return Err(format!(
            "--force-new-cluster was already applied to this data directory ({} says where), and \
             members have been added since: remove the flag. (To force a one-member cluster \
             again after losing a quorum a second time, delete that file first.)",
            marker.display()
        ));
    }
    let changes = changes_to_one_voter(&membership, member)
        .map_err(|reason| format!("--force-new-cluster: {reason}"))?;
    let compacted = persisted
        .compacted
        .as_ref()
        .map(|meta| meta.last_included)
        .unwrap_or_default();
    let last = persisted
        .entries
        .last()
        .map_or(compacted, |entry| entry.position());
    let term = persisted.hard_state.term.max(last.term) + 1;
    let mut forced = Vec::with_capacity(changes.len());
    let mut index = last.index;
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
        membership == Membership::with_voters([member]),
        "a forced membership has this member as its one voter"
    );
    // A term no old member used, with no vote in it: this member's alone.
    let hard_state = HardState {
        term,
        voted_for: None,
        commit_index: index,
    };
    wal.append(&forced, Some(hard_state))
        .and_then(|_| wal.sync())
        .map_err(|error| {
            format!("--force-new-cluster: cannot write the new membership: {error}")
        })?;
    write_marker(&marker, last.index + 1, term)?;
    tracing::warn!(
        kept_entries = persisted.entries.len(),
        removed_members = forced.len(),
        term,
        "--force-new-cluster: this member is now the only one of its cluster; remove the flag, \
         start no other old member again, add new ones with `member add`"
    );
    persisted.entries.extend(forced);
    persisted.hard_state = hard_state;
    Ok(())
}

fn write_marker(path: &Path, first_index: u64, term: u64) -> Result<(), String> {
    let text = format!(
        "--force-new-cluster made this member the only one of its cluster with the entries from \
         index {first_index} in term {term}.\n"
    );
    write_atomically(path, text.as_bytes())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
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
        let ids = |set: &std::collections::BTreeSet<NodeId>| {
            set.iter()
                .map(|id| format!("{id:x}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "member {member:x} is not in the membership its data records (voters: {}; \
             learners: {})",
            ids(&membership.voters),
            ids(&membership.learners)
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
        let error = changes_to_one_voter(&membership, 9).unwrap_err();
        assert!(error.contains("voters: 1, 2, 3; learners: 4"), "{error}");
    }
}
