//! Applying committed entries to the state machine (client commands, forwarded commands, member
//! records, lease checkpoints, membership changes) and answering whoever waits on them.

use super::*;

impl<R> GroupHost<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    /// Step 5 of the contract: confirmed reads wait for their read index, dropped ones are
    /// refused, and every waiting read the store has reached is answered.
    pub(super) fn answer_reads(&mut self, confirmed: &[ReadState], dropped: &[u64]) {
        for read in confirmed {
            if let Some(reply) = self.reads_unconfirmed.remove(&read.request_id) {
                self.reads_confirmed.push((read.index, reply));
            }
        }
        for request_id in dropped {
            if let Some(reply) = self.reads_unconfirmed.remove(request_id) {
                let _ = reply.send(Err(NodeError::LeaderChanged));
            }
        }
        self.release_reads();
    }

    /// Applies committed entries in one store transaction and answers their proposers.
    pub(super) fn apply_committed(&mut self, entries: &[ballot_core::Entry]) -> Result<(), String> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut commands = Vec::new();
        let mut terms = Vec::new();
        // For each command, the request id if this node forwarded it.
        let mut own_requests = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Command(data) => match LogCommand::decode(data) {
                    Ok(LogCommand::Kv(command)) => {
                        commands.push((entry.index, command));
                        terms.push(entry.term);
                        own_requests.push(None);
                    }
                    Ok(LogCommand::Forwarded {
                        origin,
                        request,
                        command,
                    }) => {
                        commands.push((entry.index, command));
                        terms.push(entry.term);
                        own_requests.push((origin == self.own_info.id).then_some(request));
                    }
                    Ok(LogCommand::Member(command)) => {
                        self.registry.apply(entry.index, &command)?;
                        self.follow_member_addresses(&command);
                        self.answer_member_proposal(entry.index, entry.term);
                    }
                    Ok(LogCommand::Group(command)) if self.group == 0 => {
                        let applied = self.catalog.apply(entry.index, &command)?;
                        if let Some(Ok(record)) = &applied {
                            tracing::info!(
                                group = record.id,
                                replicas = ?record.replicas,
                                index = entry.index,
                                "{}",
                                match command {
                                    GroupCommand::Create { .. } => "group created",
                                    GroupCommand::Remove(_) => "group removed",
                                }
                            );
                            self.catalog_changed = true;
                        }
                        self.answer_group_proposal(entry.index, entry.term, applied);
                    }
                    Ok(LogCommand::Group(_)) => tracing::error!(
                        group = self.group,
                        index = entry.index,
                        "a group catalog command in a group other than 0 skipped"
                    ),
                    // Only this server's own encoder writes commands, so this is a bug or a
                    // corrupt entry that passed the WAL's checksum: apply nothing, say so loudly.
                    Err(error) => {
                        tracing::error!(index = entry.index, %error, "undecodable command skipped")
                    }
                },
                EntryPayload::Membership(..) => {
                    self.answer_membership_change(entry.index, entry.term)
                }
                EntryPayload::Noop => {}
            }
        }
        let apply_started = Instant::now();
        let applied = self
            .store
            .apply_batch_with(&commands, self.watch_hub.wants_prev_kv())
            .map_err(|e| e.to_string())?;
        let took = apply_started.elapsed();
        if took >= SLOW_APPLY {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                expected_ms = SLOW_APPLY.as_millis() as u64,
                commands = commands.len(),
                first_index = entries[0].index,
                "applying committed entries took too long (a large range delete or transaction, \
                 or a slow disk)"
            );
        }
        let now = self.now_ms();
        for ((outcome, (index, command)), &term) in applied.iter().zip(&commands).zip(&terms) {
            if let Some(first) = outcome.events.first() {
                self.watch_hub
                    .on_apply(first.kv.mod_revision, &outcome.events);
            }
            match (command, &outcome.result) {
                (_, Ok(CommandResult::LeaseGrant { id, ttl_seconds })) => {
                    self.lessor.on_granted(*id, *ttl_seconds, now)
                }
                (Command::LeaseRevoke { id }, Ok(_)) => self.lessor.on_revoked(*id),
                (Command::Compact { revision }, Ok(_)) => tracing::info!(
                    revision,
                    index,
                    "compacted the keyspace: versions before the revision are gone"
                ),
                (Command::LeaseCheckpoint { .. }, _) => self.answer_keepalives(*index, term),
                _ => {}
            }
        }
        for ((outcome, term), own_request) in applied.into_iter().zip(terms).zip(own_requests) {
            if let Some(reply) = own_request.and_then(|request| self.forwarded.remove(&request)) {
                let answer = outcome.result.map_err(NodeError::Apply);
                self.counters.count_answer(&answer);
                let _ = reply.send(answer);
                continue;
            }
            let Some((proposed_term, reply)) = self.proposals.remove(&outcome.index) else {
                continue;
            };
            let answer = if proposed_term != term {
                Err(NodeError::LeaderChanged)
            } else {
                outcome.result.map_err(NodeError::Apply)
            };
            self.counters.count_answer(&answer);
            let _ = reply.send(answer);
        }
        if self.store.applied_index() < last.index {
            self.store
                .mark_applied(last.index)
                .map_err(|e| e.to_string())?;
        }
        for index in indexes_through(&self.member_proposals, last.index) {
            self.answer_member_proposal(index, 0);
        }
        for index in indexes_through(&self.group_proposals, last.index) {
            self.answer_group_proposal(index, 0, None);
        }
        for index in indexes_through(&self.keepalives_proposed, last.index) {
            self.answer_keepalives(index, 0);
        }
        // Proposals whose index now holds something else (a no-op or a membership change of a
        // later leader) were lost.
        for index in indexes_through(&self.proposals, last.index) {
            if let Some((_, reply)) = self.proposals.remove(&index) {
                self.counters.proposals_failed += 1;
                let _ = reply.send(Err(NodeError::LeaderChanged));
            }
        }
        // Proposals of an earlier term after the last applied entry can never commit either: an
        // entry of a later term is committed before their index, and terms never go down along
        // a log. Answering now spares their clients the wait for their index to be filled,
        // which on a quiet group lasts until their deadline.
        let superseded: Vec<LogIndex> = self
            .proposals
            .range(last.index + 1..)
            .filter(|(_, (term, _))| *term < last.term)
            .map(|(&index, _)| index)
            .collect();
        for index in superseded {
            if let Some((_, reply)) = self.proposals.remove(&index) {
                self.counters.proposals_failed += 1;
                let _ = reply.send(Err(NodeError::LeaderChanged));
            }
        }
        Ok(())
    }

    /// Peers added or moved with `member add` / `member update` become reachable at once.
    pub(super) fn follow_member_addresses(&self, command: &MemberCommand) {
        match command {
            MemberCommand::Publish(info) if info.id != self.own_info.id => {
                match info
                    .peer_urls
                    .first()
                    .map(|url| crate::config::parse_url(url))
                {
                    Some(Ok(address)) => self.transport.set_peer(info.id, address),
                    Some(Err(error)) => {
                        tracing::warn!(%error, member = info.id, "unusable peer URL")
                    }
                    None => {}
                }
            }
            MemberCommand::Forget(id) => self.transport.remove_peer(*id),
            MemberCommand::Publish(_) | MemberCommand::ClusterId(_) => {}
        }
    }

    pub(super) fn answer_member_proposal(&mut self, index: LogIndex, term: Term) {
        if let Some((proposed_term, reply)) = self.member_proposals.remove(&index) {
            // The caller answers with the member list it reads from the status: publish the
            // change first, or the answer would describe the members before it.
            self.publish_status();
            let answer = if proposed_term == term {
                Ok(())
            } else {
                Err(NodeError::LeaderChanged)
            };
            let _ = reply.send(answer);
        }
    }

    /// `applied` is what the catalog made of the entry (`None`: nothing, a replay or another
    /// entry at the index).
    pub(super) fn answer_group_proposal(
        &mut self,
        index: LogIndex,
        term: Term,
        applied: Option<super::super::catalog::Applied>,
    ) {
        if let Some((proposed_term, reply)) = self.group_proposals.remove(&index) {
            let answer = match applied {
                Some(outcome) if proposed_term == term => outcome.map_err(NodeError::Catalog),
                _ => Err(NodeError::LeaderChanged),
            };
            let _ = reply.send(answer);
        }
    }

    pub(super) fn answer_keepalives(&mut self, index: LogIndex, term: Term) {
        if let Some((proposed_term, replies)) = self.keepalives_proposed.remove(&index) {
            for (ttl, reply) in replies {
                let answer = if proposed_term == term {
                    Ok(ttl)
                } else {
                    Err(NodeError::LeaderChanged)
                };
                let _ = reply.send(answer);
            }
        }
    }

    pub(super) fn answer_membership_change(&mut self, index: LogIndex, term: Term) {
        if let Some((proposed_term, reply)) = self.membership_changes.remove(&index) {
            self.publish_status();
            let answer = if proposed_term == term {
                Ok(LogPosition::new(index, term))
            } else {
                Err(NodeError::LeaderChanged)
            };
            let _ = reply.send(answer);
        }
    }

    /// Answers the confirmed reads whose read index the store has reached.
    pub(super) fn release_reads(&mut self) {
        let applied = self.store.applied_index();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_confirmed)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_confirmed = waiting;
        for (_, reply) in due {
            let _ = reply.send(Ok(()));
        }
    }
}
