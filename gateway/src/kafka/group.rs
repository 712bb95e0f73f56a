//! The classic consumer-group protocol as a state machine without I/O:
//! time is passed in, and waiting requests are oneshot senders the
//! machine answers when their turn comes. The assignors run in the
//! clients; sluice picks the protocol, the leader and the generation, and
//! relays the leader's assignments.
//!
//! ```text
//! Empty ──join──► Preparing ──every member rejoined (or rebalance timeout)──► Completing
//!   ▲                ▲  ▲                                                        │ leader's SyncGroup
//!   └─last leaves────┘  └──── join of a new member, leave, session timeout ◄── Stable
//! ```
//!
//! A member's session is kept alive by heartbeats (and by any join or sync
//! it has pending); one silent for its `session_timeout` is removed and
//! the group rebalances.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Group phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Empty,
    Preparing,
    Completing,
    Stable,
}

/// What a JoinGroup gets.
#[derive(Debug, Clone, Default)]
pub(super) struct JoinOutcome {
    pub(super) error: i16,
    pub(super) generation: i32,
    pub(super) protocol_type: String,
    pub(super) protocol: String,
    pub(super) leader: String,
    pub(super) member_id: String,
    /// (member id, metadata for the chosen protocol): for the leader only.
    pub(super) members: Vec<(String, Bytes)>,
}

/// What a SyncGroup gets: an error code and the member's assignment.
pub(super) type SyncOutcome = (i16, Bytes);

/// A JoinGroup as the machine needs it.
#[derive(Debug)]
pub(super) struct JoinRequest {
    pub(super) group: String,
    pub(super) member_id: String,
    pub(super) client_id: String,
    pub(super) protocol_type: String,
    pub(super) protocols: Vec<(String, Bytes)>,
    pub(super) session_timeout: Duration,
    pub(super) rebalance_timeout: Duration,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    join: Option<oneshot::Sender<JoinOutcome>>,
    sync: Option<oneshot::Sender<SyncOutcome>>,
    assignment: Bytes,
}

#[derive(Debug)]
struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Option<Instant>,
}

/// Every group this broker coordinates (in memory: after a restart the
/// members rejoin; committed offsets are in the store).
#[derive(Debug, Default)]
pub(super) struct Coordinator {
    groups: HashMap<String, Group>,
    next_member: u64,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

impl Coordinator {
    /// Takes a JoinGroup; the receiver resolves when the rebalance
    /// completes (or at once with an error).
    pub(super) fn join(&mut self, req: JoinRequest, now: Instant) -> oneshot::Receiver<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        let fail = |tx: oneshot::Sender<JoinOutcome>, error: ResponseError, member_id: &str| {
            let _ = tx.send(JoinOutcome {
                error: code(error),
                member_id: member_id.to_owned(),
                ..Default::default()
            });
        };
        if req.protocols.is_empty() {
            fail(tx, ResponseError::InconsistentGroupProtocol, &req.member_id);
            return rx;
        }
        let group = self.groups.entry(req.group.clone()).or_insert_with(|| Group {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            rebalance_deadline: None,
        });
        if !group.members.is_empty() && group.protocol_type != req.protocol_type {
            fail(tx, ResponseError::InconsistentGroupProtocol, &req.member_id);
            return rx;
        }
        let member_id = if req.member_id.is_empty() {
            self.next_member += 1;
            format!(
                "{}-{}",
                if req.client_id.is_empty() { "member" } else { &req.client_id },
                self.next_member
            )
        } else if group.members.contains_key(&req.member_id) {
            req.member_id
        } else {
            fail(tx, ResponseError::UnknownMemberId, &req.member_id);
            return rx;
        };
        group.protocol_type = req.protocol_type;
        let member = group.members.entry(member_id).or_insert_with(|| Member {
            client_id: req.client_id.clone(),
            protocols: Vec::new(),
            session_timeout: req.session_timeout,
            rebalance_timeout: req.rebalance_timeout,
            last_seen: now,
            join: None,
            sync: None,
            assignment: Bytes::new(),
        });
        member.protocols = req.protocols;
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.last_seen = now;
        member.join = Some(tx);
        if group.phase != Phase::Preparing {
            group.start_rebalance(now);
        }
        group.try_complete(now, false);
        rx
    }

    /// Takes a SyncGroup.
    pub(super) fn sync(
        &mut self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> oneshot::Receiver<SyncOutcome> {
        let (tx, rx) = oneshot::channel();
        let Some(g) = self.groups.get_mut(group) else {
            let _ = tx.send((code(ResponseError::UnknownMemberId), Bytes::new()));
            return rx;
        };
        let error = g.check(member_id, generation);
        if error != 0 {
            let _ = tx.send((error, Bytes::new()));
            return rx;
        }
        match g.phase {
            Phase::Stable => {
                let a = g.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default();
                let _ = tx.send((0, a));
            }
            Phase::Completing => {
                if let Some(m) = g.members.get_mut(member_id) {
                    m.last_seen = now;
                    m.sync = Some(tx);
                }
                if member_id == g.leader {
                    for (id, assignment) in assignments {
                        if let Some(m) = g.members.get_mut(&id) {
                            m.assignment = assignment;
                        }
                    }
                    g.phase = Phase::Stable;
                    for m in g.members.values_mut() {
                        m.last_seen = now;
                        if let Some(tx) = m.sync.take() {
                            let _ = tx.send((0, m.assignment.clone()));
                        }
                    }
                }
            }
            Phase::Preparing | Phase::Empty => {
                let _ = tx.send((code(ResponseError::RebalanceInProgress), Bytes::new()));
            }
        }
        rx
    }

    /// Takes a Heartbeat; returns its error code.
    pub(super) fn heartbeat(&mut self, group: &str, member_id: &str, generation: i32, now: Instant) -> i16 {
        let Some(g) = self.groups.get_mut(group) else { return code(ResponseError::UnknownMemberId) };
        let Some(m) = g.members.get_mut(member_id) else { return code(ResponseError::UnknownMemberId) };
        m.last_seen = now;
        if g.phase == Phase::Preparing {
            return code(ResponseError::RebalanceInProgress);
        }
        g.check(member_id, generation)
    }

    /// Whether an OffsetCommit from this member and generation is allowed
    /// (generation -1: a consumer outside the group protocol).
    pub(super) fn check_commit(&self, group: &str, member_id: &str, generation: i32) -> i16 {
        if generation < 0 {
            return 0;
        }
        match self.groups.get(group) {
            Some(g) => g.check(member_id, generation),
            None => code(ResponseError::IllegalGeneration),
        }
    }

    /// Takes a LeaveGroup; returns an error code per member.
    pub(super) fn leave(&mut self, group: &str, members: &[String], now: Instant) -> Vec<i16> {
        let Some(g) = self.groups.get_mut(group) else {
            return members.iter().map(|_| code(ResponseError::UnknownMemberId)).collect();
        };
        let out = members
            .iter()
            .map(|id| match g.remove(id) {
                true => 0,
                false => code(ResponseError::UnknownMemberId),
            })
            .collect();
        g.after_removal(now);
        out
    }

    /// Removes members whose session expired and completes rebalances
    /// whose timeout passed. Returns the (group, member) removed.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, g) in &mut self.groups {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.join.is_none() && m.sync.is_none())
                .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > m.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                g.remove(id);
                gone.push((name.clone(), id.clone()));
            }
            if !expired.is_empty() {
                g.after_removal(now);
            }
            if g.phase == Phase::Preparing && g.rebalance_deadline.is_some_and(|d| now >= d) {
                g.try_complete(now, true);
            }
        }
        self.groups.retain(|_, g| !(g.phase == Phase::Empty && g.members.is_empty()));
        gone
    }

    /// (group, phase, members) of every group, for tests and status.
    #[cfg(test)]
    pub(super) fn describe(&self, group: &str) -> Option<(Phase, i32, usize)> {
        self.groups.get(group).map(|g| (g.phase, g.generation, g.members.len()))
    }

    /// What DescribeGroups shows of a group.
    pub(super) fn view(&self, group: &str) -> Option<GroupView> {
        let g = self.groups.get(group)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m.protocols.iter().find(|(n, _)| *n == g.protocol).map(|(_, b)| b.clone());
                MemberView {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    metadata: meta.unwrap_or_default(),
                    assignment: m.assignment.clone(),
                }
            })
            .collect();
        Some(GroupView {
            state: g.phase.kafka_name(),
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            members,
        })
    }

    /// (group, protocol type, state) of every group with members.
    pub(super) fn list(&self) -> Vec<(String, String, &'static str)> {
        let mut out: Vec<_> = self
            .groups
            .iter()
            .map(|(n, g)| (n.clone(), g.protocol_type.clone(), g.phase.kafka_name()))
            .collect();
        out.sort();
        out
    }
}

/// A group as DescribeGroups shows it.
#[derive(Debug)]
pub(super) struct GroupView {
    pub(super) state: &'static str,
    pub(super) protocol_type: String,
    pub(super) protocol: String,
    pub(super) members: Vec<MemberView>,
}

/// A member as DescribeGroups shows it.
#[derive(Debug)]
pub(super) struct MemberView {
    pub(super) member_id: String,
    pub(super) client_id: String,
    pub(super) metadata: Bytes,
    pub(super) assignment: Bytes,
}

impl Phase {
    /// Kafka's name of the state.
    pub(super) fn kafka_name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::Preparing => "PreparingRebalance",
            Phase::Completing => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

impl Group {
    /// 0 when `member_id` is a member of the current generation.
    fn check(&self, member_id: &str, generation: i32) -> i16 {
        if !self.members.contains_key(member_id) {
            code(ResponseError::UnknownMemberId)
        } else if generation != self.generation {
            code(ResponseError::IllegalGeneration)
        } else {
            0
        }
    }

    fn start_rebalance(&mut self, now: Instant) {
        self.phase = Phase::Preparing;
        let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        self.rebalance_deadline = Some(now + timeout);
        // Members waiting for the old generation's assignment must rejoin.
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync.take() {
                let _ = tx.send((code(ResponseError::RebalanceInProgress), Bytes::new()));
            }
        }
    }

    /// Removes a member, answering what it was waiting for; false when it
    /// was not a member.
    fn remove(&mut self, member_id: &str) -> bool {
        let Some(m) = self.members.remove(member_id) else { return false };
        if let Some(tx) = m.join {
            let _ = tx.send(JoinOutcome {
                error: code(ResponseError::UnknownMemberId),
                member_id: member_id.to_owned(),
                ..Default::default()
            });
        }
        if let Some(tx) = m.sync {
            let _ = tx.send((code(ResponseError::UnknownMemberId), Bytes::new()));
        }
        true
    }

    /// After members left: rebalance the rest, or become empty.
    fn after_removal(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.generation += 1;
            self.leader.clear();
            self.rebalance_deadline = None;
            return;
        }
        if self.phase != Phase::Preparing {
            self.start_rebalance(now);
        }
        self.try_complete(now, false);
    }

    /// Completes the rebalance once every member rejoined, or, when
    /// `force`d by the rebalance timeout, with the members that did.
    fn try_complete(&mut self, now: Instant, force: bool) {
        if self.phase != Phase::Preparing {
            return;
        }
        if !self.members.values().all(|m| m.join.is_some()) {
            if !force {
                return;
            }
            let late: Vec<String> =
                self.members.iter().filter(|(_, m)| m.join.is_none()).map(|(id, _)| id.clone()).collect();
            for id in late {
                self.remove(&id);
            }
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            return;
        }
        // The first protocol of the first member that every member speaks.
        let first = self.members.values().next().map(|m| m.protocols.clone()).unwrap_or_default();
        let chosen = first
            .iter()
            .map(|(name, _)| name.clone())
            .find(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)));
        let Some(protocol) = chosen else {
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for id in ids {
                if let Some(m) = self.members.remove(&id) {
                    if let Some(tx) = m.join {
                        let _ = tx.send(JoinOutcome {
                            error: code(ResponseError::InconsistentGroupProtocol),
                            member_id: id,
                            ..Default::default()
                        });
                    }
                }
            }
            self.phase = Phase::Empty;
            return;
        };
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        self.protocol = protocol;
        self.phase = Phase::Completing;
        let members: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m.protocols.iter().find(|(n, _)| *n == self.protocol).map(|(_, b)| b.clone());
                (id.clone(), meta.unwrap_or_default())
            })
            .collect();
        for (id, m) in &mut self.members {
            m.last_seen = now;
            m.assignment = Bytes::new();
            if let Some(tx) = m.join.take() {
                let _ = tx.send(JoinOutcome {
                    error: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: self.leader.clone(),
                    member_id: id.clone(),
                    members: if *id == self.leader { members.clone() } else { Vec::new() },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(member: &str) -> JoinRequest {
        JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    fn now_join(c: &mut Coordinator, member: &str, now: Instant) -> oneshot::Receiver<JoinOutcome> {
        c.join(req(member), now)
    }

    #[test]
    fn two_members_rebalance_and_session_timeout_evicts() {
        let t0 = Instant::now();
        let mut c = Coordinator::default();
        let mut a = now_join(&mut c, "", t0);
        let ja = a.try_recv().expect("first member completes alone");
        assert_eq!((ja.error, ja.generation, ja.leader == ja.member_id), (0, 1, true));
        let mut s =
            c.sync("g", &ja.member_id, 1, vec![(ja.member_id.clone(), Bytes::from_static(b"all"))], t0);
        assert_eq!(s.try_recv().expect("leader sync").1, Bytes::from_static(b"all"));
        // A second member: the first learns of the rebalance by heartbeat.
        let mut b = now_join(&mut c, "", t0);
        assert!(b.try_recv().is_err(), "waits for the first member to rejoin");
        assert_eq!(c.heartbeat("g", &ja.member_id, 1, t0), ResponseError::RebalanceInProgress.code());
        let mut a2 = now_join(&mut c, &ja.member_id, t0);
        let (ja2, jb) = (a2.try_recv().expect("a rejoined"), b.try_recv().expect("b joined"));
        assert_eq!((ja2.generation, jb.generation), (2, 2));
        assert_eq!(ja2.members.len(), 2, "the leader gets the member list");
        assert!(jb.members.is_empty());
        let mut sb = c.sync("g", &jb.member_id, 2, vec![], t0);
        assert!(sb.try_recv().is_err(), "follower waits for the leader");
        let assignments = vec![(jb.member_id.clone(), Bytes::from_static(b"B"))];
        let mut sa = c.sync("g", &ja2.member_id, 2, assignments, t0);
        assert_eq!(sa.try_recv().expect("leader synced").0, 0);
        assert_eq!(sb.try_recv().expect("assigned"), (0, Bytes::from_static(b"B")));
        assert_eq!(c.describe("g"), Some((Phase::Stable, 2, 2)));
        // b stays alive, a goes silent past its session timeout.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(c.heartbeat("g", &jb.member_id, 2, t0 + Duration::from_secs(9)), 0);
        let gone = c.expire(later);
        assert_eq!(gone, vec![("g".to_owned(), ja2.member_id.clone())]);
        assert_eq!(c.describe("g").map(|d| d.0), Some(Phase::Preparing));
        let mut b3 = now_join(&mut c, &jb.member_id, later);
        let jb3 = b3.try_recv().expect("b alone");
        assert_eq!((jb3.generation, jb3.leader == jb.member_id), (3, true));
        assert_eq!(c.check_commit("g", &jb.member_id, 2), ResponseError::IllegalGeneration.code());
        assert_eq!(c.check_commit("g", &jb.member_id, 3), 0);
        assert_eq!(c.leave("g", std::slice::from_ref(&jb.member_id), later), vec![0]);
        assert_eq!(c.describe("g").map(|d| d.0), Some(Phase::Empty));
    }

    #[test]
    fn unknown_member_and_rebalance_timeout() {
        let t0 = Instant::now();
        let mut c = Coordinator::default();
        let mut x = now_join(&mut c, "stranger", t0);
        assert_eq!(x.try_recv().expect("answered").error, ResponseError::UnknownMemberId.code());
        let ja = now_join(&mut c, "", t0).try_recv().expect("alone");
        let mut b = now_join(&mut c, "", t0);
        // a never rejoins but keeps heartbeating: the rebalance timeout drops it.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(c.heartbeat("g", &ja.member_id, 1, t1), ResponseError::RebalanceInProgress.code());
        assert!(c.expire(t1).is_empty());
        let _ = c.expire(t0 + Duration::from_secs(31));
        let jb = b.try_recv().expect("completed without a");
        assert_eq!((jb.error, jb.generation, jb.members.len()), (0, 2, 1));
    }
}
