//! Tests of the overlay: single instances driven frame by frame, networks of
//! them in the simulator (full meshes, 1,000 members joining and
//! broadcasting, half of them failing at once), and property tests over
//! random schedules.

use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::sim::{
    percentile, seed_or, t0, Delivery, MessageId, NetConfig, PeerId, Sim, SimOverlay,
};
use super::*;
use crate::swarm::limits::{
    AWAITING_VERDICT_MAX, DEPTH_SAMPLES_MIN, GRAFT_RETRY_TIMEOUT, IHAVE_BATCH_IDS_MAX,
    MISSING_IDS_PER_PEER_MAX, SHUFFLE_INTERVAL, SHUFFLE_PEERS_MAX,
};

type Out = Output<PeerId, MessageId, Vec<u8>>;
type Frame = OverlayFrame<PeerId, MessageId>;

fn overlay(me: PeerId, members: impl IntoIterator<Item = PeerId>) -> SimOverlay {
    let mut overlay = Overlay::new(me, StdRng::seed_from_u64(u64::from(me)), t0());
    overlay.set_members(members, t0()).unwrap();
    overlay
}

fn drain(overlay: &mut SimOverlay) -> Vec<Out> {
    std::iter::from_fn(|| overlay.poll_output()).collect()
}

fn sent_to(outputs: &[Out], peer: PeerId) -> Vec<Frame> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, frame, .. } if *to == peer => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

/// Makes `peers` neighbours of `overlay` by their high-priority requests.
fn befriend(overlay: &mut SimOverlay, peers: &[PeerId]) {
    for peer in peers {
        overlay
            .handle_frame(
                *peer,
                OverlayFrame::Neighbor {
                    priority: Priority::High,
                },
                None,
                t0(),
            )
            .unwrap();
    }
    drain(overlay);
    for peer in peers {
        assert!(overlay.is_neighbor(peer));
    }
}

#[test]
fn a_removed_member_leaves_both_views_at_once_and_its_link_is_closed() {
    let members: Vec<PeerId> = (0..40).collect();
    let mut node = overlay(0, members.clone());
    befriend(&mut node, &[1, 2, 3]);
    // A shuffle reply fills the passive view with 4 and 5.
    node.handle_frame(
        9,
        OverlayFrame::ShuffleReply { peers: vec![4, 5] },
        None,
        t0(),
    )
    .unwrap();
    assert!(node.passive_view().contains(&4));
    drain(&mut node);

    let remaining: Vec<PeerId> = members
        .iter()
        .copied()
        .filter(|p| *p != 2 && *p != 4)
        .collect();
    node.set_members(remaining, t0()).unwrap();
    let outputs = drain(&mut node);
    assert!(!node.is_neighbor(&2));
    assert!(!node.passive_view().contains(&2));
    assert!(!node.passive_view().contains(&4));
    assert!(outputs.contains(&Output::NeighborDown { peer: 2 }));
    assert!(outputs.contains(&Output::Disconnect { peer: 2 }));
    assert!(
        sent_to(&outputs, 2).is_empty(),
        "a departed member gets no frame"
    );
    // From now on it is a stranger.
    assert_eq!(
        node.handle_frame(2, OverlayFrame::Prune, None, t0()),
        Err(FrameRefused::NotAMember)
    );
    assert_eq!(node.stats().frames_from_non_members, 1);
    // And it is never picked again, however often the views are repaired.
    for step in 1..50 {
        node.handle_timeout(t0() + Duration::from_secs(step * 2));
        let outputs = drain(&mut node);
        assert!(sent_to(&outputs, 2).is_empty() && sent_to(&outputs, 4).is_empty());
        assert!(!node.passive_view().contains(&2) && !node.is_neighbor(&2));
    }
}

#[test]
fn nonsense_frames_are_refused_and_floods_stay_bounded() {
    let members: Vec<PeerId> = (0..20).collect();
    let mut node = overlay(0, members);
    befriend(&mut node, &[1, 2]);
    let before = node.footprint();

    // Every frame kind from a stranger: refused, nothing grows.
    let stranger = 1_000;
    let kinds: Vec<Frame> = vec![
        OverlayFrame::Join,
        OverlayFrame::ForwardJoin { joiner: 3, ttl: 2 },
        OverlayFrame::Neighbor {
            priority: Priority::High,
        },
        OverlayFrame::NeighborReply { accepted: true },
        OverlayFrame::Disconnect { alive: true },
        OverlayFrame::Shuffle {
            origin: stranger,
            ttl: 2,
            peers: vec![3],
        },
        OverlayFrame::ShuffleReply { peers: vec![3] },
        OverlayFrame::Push {
            id: 7,
            hops: 1,
            payload: false,
        },
        OverlayFrame::IHave {
            ids: vec![Announcement { id: 7, hops: 0 }],
        },
        OverlayFrame::Graft { ids: vec![7] },
        OverlayFrame::Prune,
    ];
    for frame in kinds {
        assert_eq!(
            node.handle_frame(stranger, frame, None, t0()),
            Err(FrameRefused::NotAMember)
        );
    }
    assert!(drain(&mut node)
        .iter()
        .all(|o| *o == Output::Disconnect { peer: stranger }));
    assert_eq!(node.footprint(), before);
    assert_eq!(node.stats().frames_from_non_members, 11);

    // Walks and shuffles naming non-members or this device.
    assert_eq!(
        node.handle_frame(
            1,
            OverlayFrame::ForwardJoin {
                joiner: stranger,
                ttl: 3
            },
            None,
            t0()
        ),
        Err(FrameRefused::NamesNonMember {
            kind: "forward_join"
        })
    );
    assert_eq!(
        node.handle_frame(
            1,
            OverlayFrame::ForwardJoin { joiner: 0, ttl: 3 },
            None,
            t0()
        ),
        Err(FrameRefused::NamesNonMember {
            kind: "forward_join"
        })
    );
    node.handle_frame(
        1,
        OverlayFrame::ShuffleReply {
            peers: vec![stranger, 0, stranger + 1],
        },
        None,
        t0(),
    )
    .unwrap();
    assert!(node.passive_view().iter().all(|p| *p < 20 && *p != 0));

    // Broadcast control from a member that is not a neighbour.
    for frame in [
        OverlayFrame::IHave {
            ids: vec![Announcement { id: 8, hops: 0 }],
        },
        OverlayFrame::Graft { ids: vec![8] },
        OverlayFrame::Prune,
    ] {
        assert!(matches!(
            node.handle_frame(5, frame, None, t0()),
            Err(FrameRefused::NotANeighbor { .. })
        ));
    }
    // A push whose frame and payload disagree.
    assert_eq!(
        node.handle_frame(
            1,
            OverlayFrame::Push {
                id: 9,
                hops: 1,
                payload: true
            },
            None,
            t0()
        ),
        Err(FrameRefused::PayloadMismatch { announced: true })
    );

    // An ihave flood of unknown ids from one neighbour: it takes at most its
    // share of the missing table, the rest is counted and dropped.
    let mut id = 10_000;
    for _ in 0..100 {
        let ids = (0..IHAVE_BATCH_IDS_MAX)
            .map(|_| {
                id += 1;
                Announcement { id, hops: 0 }
            })
            .collect();
        node.handle_frame(1, OverlayFrame::IHave { ids }, None, t0())
            .unwrap();
    }
    assert_eq!(node.footprint().missing, MISSING_IDS_PER_PEER_MAX);
    assert_eq!(
        node.stats().ihave_ids_dropped,
        (100 * IHAVE_BATCH_IDS_MAX - MISSING_IDS_PER_PEER_MAX) as u64
    );
    // The other neighbour's announcements still get in.
    node.handle_frame(
        2,
        OverlayFrame::IHave {
            ids: vec![Announcement { id: 1, hops: 0 }],
        },
        None,
        t0(),
    )
    .unwrap();
    assert_eq!(node.footprint().missing, MISSING_IDS_PER_PEER_MAX + 1);

    // The flooder's ids are grafted from it, then given up: nothing stays.
    drain(&mut node);
    let mut now = t0();
    for _ in 0..10 {
        now += GRAFT_RETRY_TIMEOUT + Duration::from_secs(1);
        node.handle_timeout(now);
    }
    let outputs = drain(&mut node);
    let grafts: usize = sent_to(&outputs, 1)
        .iter()
        .map(|f| match f {
            OverlayFrame::Graft { ids } => ids.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(grafts, MISSING_IDS_PER_PEER_MAX);
    assert_eq!(node.footprint().missing, 0);
    assert_eq!(
        node.stats().grafts_abandoned,
        MISSING_IDS_PER_PEER_MAX as u64 + 1
    );

    // Grafts for ids this device never held are counted, not answered.
    node.handle_frame(1, OverlayFrame::Graft { ids: vec![1, 2, 3] }, None, now)
        .unwrap();
    assert!(sent_to(&drain(&mut node), 1).is_empty());
    assert_eq!(node.stats().graft_ids_unknown, 3);

    // A push flood of new ids fills the verdict table to its bound, no more.
    for id in 0..(AWAITING_VERDICT_MAX as u64 + 50) {
        node.handle_frame(
            1,
            OverlayFrame::Push {
                id: 50_000 + id,
                hops: 1,
                payload: false,
            },
            None,
            now,
        )
        .unwrap();
    }
    assert_eq!(node.footprint().awaiting, AWAITING_VERDICT_MAX);
    assert_eq!(node.stats().awaiting_evicted, 50);
}

#[test]
fn a_message_fetched_out_of_band_cancels_its_graft_and_is_forwarded() {
    let mut node = overlay(0, 0..20);
    befriend(&mut node, &[1, 2, 3]);
    // Neighbour 3 prunes us: it becomes lazy.
    node.handle_frame(3, OverlayFrame::Prune, None, t0())
        .unwrap();
    node.handle_frame(
        1,
        OverlayFrame::IHave {
            ids: vec![Announcement { id: 42, hops: 2 }],
        },
        None,
        t0(),
    )
    .unwrap();
    assert_eq!(node.poll_timeout(), Some(t0() + GRAFT_TIMEOUT));

    // The sync layer fetched it meanwhile (anti-entropy, a Git fetch).
    node.message_accepted(42, None, t0() + Duration::from_millis(10));
    assert!(node.holds(&42));
    let outputs = drain(&mut node);
    // Forwarded: pushed to eager neighbour 2 (not to announcer 1, which holds
    // it), announced lazily to 3.
    assert_eq!(
        sent_to(&outputs, 2),
        vec![OverlayFrame::Push {
            id: 42,
            hops: 4,
            payload: false
        }]
    );
    assert!(sent_to(&outputs, 1).is_empty());
    node.handle_timeout(t0() + LAZY_PUSH_INTERVAL + Duration::from_millis(10));
    assert_eq!(
        sent_to(&drain(&mut node), 3),
        vec![OverlayFrame::IHave {
            ids: vec![Announcement { id: 42, hops: 3 }]
        }]
    );
    // No graft ever follows.
    node.handle_timeout(t0() + GRAFT_TIMEOUT * 3);
    let outputs = drain(&mut node);
    assert!(outputs.iter().all(|o| !matches!(
        o,
        Output::Send {
            frame: OverlayFrame::Graft { .. },
            ..
        }
    )));
    assert_eq!(node.stats().graft_ids_sent, 0);
}

#[test]
fn duplicates_prune_missing_ids_are_grafted_and_grafts_are_answered() {
    let mut node = overlay(0, 0..20);
    befriend(&mut node, &[1, 2, 3]);
    let payload = b"pack".to_vec();

    // First copy from 1: handed to the caller, not forwarded yet.
    node.handle_frame(
        1,
        OverlayFrame::Push {
            id: 5,
            hops: 1,
            payload: true,
        },
        Some(payload.clone()),
        t0(),
    )
    .unwrap();
    let outputs = drain(&mut node);
    assert_eq!(
        outputs,
        vec![Output::Received {
            from: 1,
            id: 5,
            hops: 1,
            payload: Some(payload.clone())
        }]
    );
    node.message_accepted(5, None, t0());
    let outputs = drain(&mut node);
    for peer in [2, 3] {
        assert_eq!(
            sent_to(&outputs, peer),
            vec![OverlayFrame::Push {
                id: 5,
                hops: 2,
                payload: true
            }]
        );
    }
    // A second copy from 2: pruned.
    node.handle_frame(
        2,
        OverlayFrame::Push {
            id: 5,
            hops: 2,
            payload: true,
        },
        Some(payload.clone()),
        t0(),
    )
    .unwrap();
    assert_eq!(sent_to(&drain(&mut node), 2), vec![OverlayFrame::Prune]);
    assert!(!node.is_eager(&2));
    assert_eq!(node.stats().duplicate_pushes, 1);

    // A graft from 2 makes it eager again and is answered with the payload.
    node.handle_frame(2, OverlayFrame::Graft { ids: vec![5] }, None, t0())
        .unwrap();
    assert!(node.is_eager(&2));
    let outputs = drain(&mut node);
    assert_eq!(
        outputs,
        vec![Output::Send {
            to: 2,
            frame: OverlayFrame::Push {
                id: 5,
                hops: 2,
                payload: true
            },
            payload: Some(payload.clone())
        }]
    );

    // An id announced by 3 and 1 and never pushed: grafted from the nearer
    // announcer after the timeout, then from the other.
    node.handle_frame(
        1,
        OverlayFrame::IHave {
            ids: vec![Announcement { id: 6, hops: 4 }],
        },
        None,
        t0(),
    )
    .unwrap();
    node.handle_frame(
        3,
        OverlayFrame::IHave {
            ids: vec![Announcement { id: 6, hops: 1 }],
        },
        None,
        t0(),
    )
    .unwrap();
    node.handle_timeout(t0() + GRAFT_TIMEOUT);
    assert_eq!(
        sent_to(&drain(&mut node), 3),
        vec![OverlayFrame::Graft { ids: vec![6] }]
    );
    node.handle_timeout(t0() + GRAFT_TIMEOUT + GRAFT_RETRY_TIMEOUT);
    assert_eq!(
        sent_to(&drain(&mut node), 1),
        vec![OverlayFrame::Graft { ids: vec![6] }]
    );
    // A refused copy sends the graft on at once; with nobody left, it is
    // given up.
    node.handle_frame(
        1,
        OverlayFrame::Push {
            id: 6,
            hops: 5,
            payload: true,
        },
        Some(payload),
        t0() + GRAFT_TIMEOUT + GRAFT_RETRY_TIMEOUT,
    )
    .unwrap();
    drain(&mut node);
    node.message_refused(6, t0() + GRAFT_TIMEOUT + GRAFT_RETRY_TIMEOUT);
    assert_eq!(node.stats().messages_refused, 1);
    assert_eq!(node.footprint().missing, 1);
    node.handle_timeout(t0() + GRAFT_TIMEOUT + GRAFT_RETRY_TIMEOUT);
    assert_eq!(node.footprint().missing, 0);
    assert_eq!(node.stats().grafts_abandoned, 1);
}

#[test]
fn the_tree_moves_toward_neighbours_nearer_its_centre_and_depths_are_advertised_on_change() {
    let mut node = overlay(0, 0..20);
    befriend(&mut node, &[1, 2, 3]);
    // This device takes its copies 8 hops deep, from neighbour 3.
    for id in 0..DEPTH_SAMPLES_MIN as u64 {
        node.handle_frame(
            3,
            OverlayFrame::Push {
                id,
                hops: 8,
                payload: true,
            },
            Some(vec![]),
            t0(),
        )
        .unwrap();
        node.message_accepted(id, None, t0());
    }
    drain(&mut node);
    // Its depth goes to every neighbour at the next maintenance, once.
    node.handle_timeout(t0() + OVERLAY_MAINTENANCE_INTERVAL);
    let outputs = drain(&mut node);
    for peer in [1, 2, 3] {
        assert!(sent_to(&outputs, peer).contains(&OverlayFrame::Depth {
            depth_sixteenths: 8 * 16
        }));
    }
    node.handle_timeout(t0() + OVERLAY_MAINTENANCE_INTERVAL * 2);
    assert!(drain(&mut node).iter().all(|o| !matches!(
        o,
        Output::Send {
            frame: OverlayFrame::Depth { .. },
            ..
        }
    )));
    // A new neighbour learns it at once.
    node.handle_frame(
        5,
        OverlayFrame::Neighbor {
            priority: Priority::High,
        },
        None,
        t0(),
    )
    .unwrap();
    assert!(
        sent_to(&drain(&mut node), 5).contains(&OverlayFrame::Depth {
            depth_sixteenths: 8 * 16
        })
    );

    // Neighbour 1 sits 5 hops deep, 2 at 2 hops (and is lazy), 3 at 12.
    for (peer, hops) in [(1, 5), (2, 2), (3, 12)] {
        node.handle_frame(
            peer,
            OverlayFrame::Depth {
                depth_sixteenths: hops * 16,
            },
            None,
            t0(),
        )
        .unwrap();
    }
    node.handle_frame(2, OverlayFrame::Prune, None, t0())
        .unwrap();
    let announce = |node: &mut SimOverlay, id| {
        node.handle_frame(
            2,
            OverlayFrame::IHave {
                ids: vec![Announcement { id, hops: 2 }],
            },
            None,
            t0(),
        )
        .unwrap();
    };
    let push = |node: &mut SimOverlay, from, id| {
        node.handle_frame(
            from,
            OverlayFrame::Push {
                id,
                hops: 9,
                payload: true,
            },
            Some(vec![]),
            t0(),
        )
        .unwrap();
        node.message_accepted(id, None, t0());
        drain(node)
    };
    // From upstream neighbour 1, after 2 announced it: 2 replaces 1.
    announce(&mut node, 100);
    let outputs = push(&mut node, 1, 100);
    assert!(sent_to(&outputs, 2).contains(&OverlayFrame::Graft { ids: vec![] }));
    assert!(sent_to(&outputs, 1).contains(&OverlayFrame::Prune));
    assert!(node.is_eager(&2) && !node.is_eager(&1));
    assert_eq!(node.stats().tree_optimizations, 1);
    // From neighbour 3, farther out than this device (a child): kept.
    node.handle_frame(2, OverlayFrame::Prune, None, t0())
        .unwrap();
    announce(&mut node, 101);
    let outputs = push(&mut node, 3, 101);
    assert!(!sent_to(&outputs, 3).contains(&OverlayFrame::Prune));
    assert_eq!(node.stats().tree_optimizations, 1);
    // Not for less than a hop: 1 at 2.5 hops against 2 at 2.
    node.handle_frame(
        1,
        OverlayFrame::Depth {
            depth_sixteenths: 40,
        },
        None,
        t0(),
    )
    .unwrap();
    node.handle_frame(1, OverlayFrame::Graft { ids: vec![] }, None, t0())
        .unwrap();
    announce(&mut node, 102);
    let outputs = push(&mut node, 1, 102);
    assert!(!sent_to(&outputs, 1).contains(&OverlayFrame::Prune));
    assert_eq!(node.stats().tree_optimizations, 1);
}

#[test]
fn a_full_view_takes_a_high_priority_request_by_dropping_a_neighbour_and_refuses_a_low_one() {
    let mut node = overlay(0, 0..40);
    let first: Vec<PeerId> = (1..=ACTIVE_VIEW_MAX as PeerId).collect();
    befriend(&mut node, &first);
    node.handle_frame(
        30,
        OverlayFrame::Neighbor {
            priority: Priority::Low,
        },
        None,
        t0(),
    )
    .unwrap();
    assert_eq!(
        sent_to(&drain(&mut node), 30),
        vec![OverlayFrame::NeighborReply { accepted: false }]
    );
    assert!(!node.is_neighbor(&30) && node.passive_view().contains(&30));

    node.handle_frame(
        31,
        OverlayFrame::Neighbor {
            priority: Priority::High,
        },
        None,
        t0(),
    )
    .unwrap();
    let outputs = drain(&mut node);
    assert!(node.is_neighbor(&31));
    assert_eq!(node.active_view().len(), ACTIVE_VIEW_MAX);
    let dropped: Vec<PeerId> = first
        .iter()
        .copied()
        .filter(|p| !node.is_neighbor(p))
        .collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        sent_to(&outputs, dropped[0]),
        vec![OverlayFrame::Disconnect { alive: true }]
    );
    assert!(node.passive_view().contains(&dropped[0]));
}

#[test]
fn a_join_is_accepted_and_walked_through_the_other_neighbours() {
    let mut contact = overlay(0, 0..40);
    befriend(&mut contact, &[1, 2, 3]);
    contact
        .handle_frame(9, OverlayFrame::Join, None, t0())
        .unwrap();
    let outputs = drain(&mut contact);
    assert!(contact.is_neighbor(&9));
    assert_eq!(
        sent_to(&outputs, 9),
        vec![OverlayFrame::NeighborReply { accepted: true }]
    );
    for peer in [1, 2, 3] {
        assert_eq!(
            sent_to(&outputs, peer),
            vec![OverlayFrame::ForwardJoin {
                joiner: 9,
                ttl: crate::swarm::limits::ACTIVE_WALK_HOPS
            }]
        );
    }
    // A walk at its end asks the joiner, with high priority.
    let mut holder = overlay(1, 0..40);
    befriend(&mut holder, &[0, 4]);
    holder
        .handle_frame(
            0,
            OverlayFrame::ForwardJoin { joiner: 9, ttl: 0 },
            None,
            t0(),
        )
        .unwrap();
    assert_eq!(
        sent_to(&drain(&mut holder), 9),
        vec![OverlayFrame::Neighbor {
            priority: Priority::High
        }]
    );
    // At the passive walk length, the holder remembers the joiner and walks
    // on to a neighbour other than the sender.
    holder
        .handle_frame(
            0,
            OverlayFrame::ForwardJoin {
                joiner: 10,
                ttl: PASSIVE_WALK_HOPS,
            },
            None,
            t0(),
        )
        .unwrap();
    assert!(holder.passive_view().contains(&10));
    assert_eq!(
        sent_to(&drain(&mut holder), 4),
        vec![OverlayFrame::ForwardJoin {
            joiner: 10,
            ttl: PASSIVE_WALK_HOPS - 1
        }]
    );
}

#[test]
fn shuffles_are_bounded_and_only_members_enter_the_passive_view() {
    let mut node = overlay(0, 0..100);
    let neighbours: Vec<PeerId> = (1..=ACTIVE_VIEW_MAX as PeerId).collect();
    befriend(&mut node, &neighbours);
    node.handle_timeout(t0() + SHUFFLE_INTERVAL * 2);
    let outputs = drain(&mut node);
    let shuffles: Vec<&Frame> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                frame: frame @ OverlayFrame::Shuffle { .. },
                ..
            } => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(shuffles.len(), 1);
    let OverlayFrame::Shuffle { origin, peers, .. } = shuffles[0] else {
        unreachable!()
    };
    assert_eq!(*origin, 0);
    assert!(peers.len() <= SHUFFLE_PEERS_MAX && peers.contains(&0));
}

#[test]
fn small_swarms_are_full_meshes() {
    for n in 2..=ACTIVE_VIEW_MAX + 2 {
        let mut sim = Sim::new(n, seed_or(n as u64), NetConfig::wan());
        sim.start_all(Duration::from_millis(20));
        sim.run_for(Duration::from_secs(10));
        assert!(sim.up_nodes_connected());
        assert_eq!(sim.settled_asymmetric_links(), vec![]);
        for node in sim.up_nodes() {
            let active = sim.overlay(node).active_view().len();
            if n <= ACTIVE_VIEW_MAX + 1 {
                assert_eq!(active, n - 1, "{n} devices: a full mesh");
            } else {
                assert!((1..=ACTIVE_VIEW_MAX).contains(&active));
            }
        }
    }
}

#[test]
fn a_device_that_leaves_tells_its_neighbours_and_they_forget_it() {
    let mut sim = Sim::new(20, seed_or(20), NetConfig::wan());
    sim.start_all(Duration::from_millis(20));
    sim.run_for(Duration::from_secs(10));
    let leaver = 7;
    let neighbours: Vec<PeerId> = sim.overlay(leaver).active_view().to_vec();
    assert!(!neighbours.is_empty());
    sim.leave(leaver);
    // Links take at most 60 ms; look before a maintenance could refill a
    // passive view from the member list (which still names the leaver
    // until its leave commit arrives).
    sim.run_for(Duration::from_millis(100));
    for peer in neighbours {
        let overlay = sim.overlay(peer);
        assert!(!overlay.is_neighbor(&leaver), "{peer} still lists {leaver}");
        assert!(
            !overlay.passive_view().contains(&leaver),
            "a device that left is not kept as passive"
        );
    }
    assert!(sim.overlay(leaver).active_view().is_empty());
}

#[test]
fn every_broadcast_reaches_everyone_despite_lost_frames() {
    let mut config = NetConfig::wan();
    config.loss = 0.02;
    let mut sim = Sim::new(200, seed_or(200), config);
    sim.start_all(Duration::from_millis(10));
    sim.run_for(Duration::from_secs(15));
    assert!(sim.up_nodes_connected());
    let ids = broadcast_some(&mut sim, 0, 15, Duration::from_millis(300));
    let deliveries: Vec<Delivery> = ids.iter().map(|id| sim.delivery(*id)).collect();
    report("200 members, 2 % of frames lost", &sim, &deliveries);
    for delivery in &deliveries {
        assert_eq!(
            delivery.reached, delivery.expected,
            "lost pushes are grafted"
        );
    }
}

/// Broadcasts `count` messages from random live devices, `gap` apart, then
/// waits for them to settle; returns their ids.
fn broadcast_some(sim: &mut Sim, first_id: MessageId, count: u64, gap: Duration) -> Vec<MessageId> {
    let ids: Vec<MessageId> = (first_id..first_id + count).collect();
    for id in &ids {
        let author = sim.random_up_node();
        sim.broadcast(author, *id);
        sim.run_for(gap);
    }
    // Long enough for a graft and its retries.
    sim.run_for(Duration::from_secs(3));
    ids
}

/// The last-delivery hop over a set of broadcasts.
struct LastDeliveryHops {
    max: u16,
}

/// Prints the hop and redundancy figures of `deliveries`, and returns the
/// last-delivery hops and the mean RMR.
fn report(label: &str, sim: &Sim, deliveries: &[Delivery]) -> (LastDeliveryHops, f64) {
    let last: Vec<f64> = deliveries
        .iter()
        .map(|d| f64::from(d.last_delivery_hops))
        .collect();
    let all: Vec<f64> = deliveries
        .iter()
        .flat_map(|d| d.hops.iter().map(|h| f64::from(*h)))
        .collect();
    let rmr: Vec<f64> = deliveries.iter().map(|d| d.rmr).collect();
    let mean_rmr = rmr.iter().sum::<f64>() / rmr.len().max(1) as f64;
    eprintln!(
        "{label}: {} devices up, {} broadcasts (seed {}): last delivery hop p50 {} p99 {} max {}; \
         delivery hop p50 {} p99 {} max {}; RMR mean {:.3} p99 {:.3} max {:.3}",
        sim.up_nodes().len(),
        deliveries.len(),
        sim.seed,
        percentile(&last, 0.5),
        percentile(&last, 0.99),
        percentile(&last, 1.0),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        mean_rmr,
        percentile(&rmr, 0.99),
        percentile(&rmr, 1.0),
    );
    let hops = LastDeliveryHops {
        max: percentile(&last, 1.0) as u16,
    };
    (hops, mean_rmr)
}

/// Broadcasts measured per run: few in debug builds, more when
/// `OVERLAY_SIM_BROADCASTS` says so.
fn measured_broadcasts(debug_default: u64) -> u64 {
    std::env::var("OVERLAY_SIM_BROADCASTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(debug_default)
}

fn assert_views_bounded_and_members_only(sim: &Sim) {
    for node in sim.up_nodes() {
        let overlay = sim.overlay(node);
        assert!(overlay.active_view().len() <= ACTIVE_VIEW_MAX);
        assert!(overlay.passive_view().len() <= PASSIVE_VIEW_MAX);
        for peer in overlay.active_view().iter().chain(overlay.passive_view()) {
            assert!(*peer != node && overlay.is_member(peer));
        }
    }
}

fn thousand_members_joined(seed: u64) -> Sim {
    let mut sim = Sim::new(1_000, seed, NetConfig::wan());
    sim.start_all(Duration::from_millis(5));
    sim.run_for(Duration::from_secs(10));
    assert!(sim.up_nodes_connected(), "the overlay is connected");
    assert_views_bounded_and_members_only(&sim);
    assert_eq!(sim.settled_asymmetric_links(), vec![]);
    let degrees: Vec<f64> = sim
        .up_nodes()
        .iter()
        .map(|n| sim.overlay(*n).active_view().len() as f64)
        .collect();
    eprintln!(
        "active view sizes: min {} p50 {} max {}",
        percentile(&degrees, 0.0),
        percentile(&degrees, 0.5),
        percentile(&degrees, 1.0)
    );
    sim
}

#[test]
fn a_thousand_members_join_and_every_broadcast_reaches_all() {
    let mut sim = thousand_members_joined(seed_or(1_000));
    // The first broadcasts build the tree (duplicates prune links).
    let warm_up = broadcast_some(&mut sim, 0, 5, Duration::from_millis(500));
    let first: Vec<Delivery> = warm_up.iter().map(|id| sim.delivery(*id)).collect();
    report("1,000 members, tree forming", &sim, &first);
    let measured = broadcast_some(
        &mut sim,
        100,
        measured_broadcasts(10),
        Duration::from_millis(500),
    );
    let deliveries: Vec<Delivery> = measured.iter().map(|id| sim.delivery(*id)).collect();
    for delivery in first.iter().chain(&deliveries) {
        assert_eq!(delivery.reached, delivery.expected, "every member got it");
    }
    let (last_hops, mean_rmr) = report("1,000 members, tree formed", &sim, &deliveries);
    eprintln!("{}", sim.broadcast_totals());
    assert!(
        last_hops.max <= 14,
        "last delivery hop {} > 14",
        last_hops.max
    );
    assert!(
        mean_rmr <= 1.0,
        "relative message redundancy {mean_rmr:.3} > 1"
    );
}

#[test]
fn half_of_a_thousand_members_fail_at_once_and_the_rest_stay_connected() {
    let mut sim = thousand_members_joined(seed_or(2_000));
    broadcast_some(&mut sim, 0, 3, Duration::from_millis(500));
    let mut rng = StdRng::seed_from_u64(sim.seed);
    let mut up = sim.up_nodes();
    for _ in 0..up.len() / 2 {
        let victim = up.swap_remove(rng.gen_range(0..up.len()));
        sim.fail(victim);
    }
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.up_nodes().len(), 500);
    assert!(
        sim.up_nodes_connected(),
        "the survivors' overlay is connected"
    );
    assert_views_bounded_and_members_only(&sim);
    for node in sim.up_nodes() {
        for peer in sim.overlay(node).active_view() {
            assert!(sim.is_up(*peer), "{node} still lists failed {peer}");
        }
    }
    assert_eq!(sim.settled_asymmetric_links(), vec![]);
    let measured = broadcast_some(
        &mut sim,
        100,
        measured_broadcasts(10),
        Duration::from_millis(500),
    );
    let deliveries: Vec<Delivery> = measured.iter().map(|id| sim.delivery(*id)).collect();
    for delivery in &deliveries {
        assert_eq!(delivery.reached, delivery.expected, "every survivor got it");
    }
    report("500 survivors of 1,000", &sim, &deliveries);
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Step {
    Start(usize),
    Fail(usize),
    RemoveMember(usize),
    Broadcast(usize),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..64).prop_map(Step::Start),
        1 => (0usize..64).prop_map(Step::Fail),
        1 => (0usize..64).prop_map(Step::RemoveMember),
        2 => (0usize..64).prop_map(Step::Broadcast),
        3 => (0u64..3_000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn views_stay_bounded_members_only_and_links_settle_symmetric(
        seed in any::<u64>(),
        devices in 3usize..16,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut config = NetConfig::wan();
        config.loss = 0.0;
        let mut sim = Sim::new(devices, seed, config);
        let mut members: Vec<PeerId> = (0..devices as PeerId).collect();
        let mut next_id = 0;
        for step in steps {
            match step {
                Step::Start(i) => {
                    let node = (i % devices) as PeerId;
                    if sim.not_started(node) {
                        let contact = sim.up_nodes().into_iter().find(|c| members.contains(c));
                        sim.start(node, contact);
                    }
                }
                Step::Fail(i) => {
                    let node = (i % devices) as PeerId;
                    if sim.is_up(node) {
                        sim.fail(node);
                    }
                }
                Step::RemoveMember(i) => {
                    let gone = (i % devices) as PeerId;
                    if members.len() > 2 && members.contains(&gone) {
                        members.retain(|m| *m != gone);
                        for node in members.clone() {
                            sim.set_members(node, &members);
                        }
                    }
                }
                Step::Broadcast(i) => {
                    let node = (i % devices) as PeerId;
                    if sim.is_up(node) {
                        sim.broadcast(node, next_id);
                        next_id += 1;
                    }
                }
                Step::Wait(ms) => sim.run_for(Duration::from_millis(ms)),
            }
            for node in sim.up_nodes() {
                let overlay = sim.overlay(node);
                prop_assert!(overlay.active_view().len() <= ACTIVE_VIEW_MAX);
                prop_assert!(overlay.passive_view().len() <= PASSIVE_VIEW_MAX);
                for peer in overlay.active_view().iter().chain(overlay.passive_view()) {
                    prop_assert!(*peer != node, "{} lists itself", node);
                    prop_assert!(overlay.is_member(peer), "{} lists non-member {}", node, peer);
                }
            }
        }
        // Quiet: no more inputs; every link settles symmetric, and no live
        // device keeps a failed one as neighbour.
        sim.run_for(Duration::from_secs(30));
        prop_assert_eq!(sim.settled_asymmetric_links(), vec![]);
        for node in sim.up_nodes() {
            for peer in sim.overlay(node).active_view() {
                prop_assert!(sim.is_up(*peer), "{} keeps failed {}", node, peer);
            }
        }
    }
}
