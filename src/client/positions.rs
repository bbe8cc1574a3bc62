//! Where the client stands in each group that keeps history, so that
//! `--reconnect` can ask for exactly what it missed (`docs/protocol.md`,
//! "History and recovery").
//!
//! A group's position is the epoch from its join's `ack` and the offset of
//! the last message printed (the ack's offset until a message comes). A
//! rejoin sends it as `recover`; the rejoin's ack says whether the server
//! replays what came after it (`recovered:true`) or cannot
//! (`recovered:false`, reported as [`Missed`]). Groups without history
//! have no position: they are simply rejoined.

use std::collections::HashMap;

use serde_json::Value;

/// The history fields of a join's `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack<'a> {
    /// The group's latest offset when we joined.
    pub offset: u64,
    /// The epoch of that offset.
    pub epoch: &'a str,
    /// The answer to `recover`: absent when the join did not ask.
    pub recovered: Option<bool>,
}

impl<'a> Ack<'a> {
    /// The history fields of `ack`, or `None` for a group without history
    /// (its ack has neither `offset` nor `epoch`).
    pub fn of(ack: &'a Value) -> Option<Self> {
        Some(Self {
            offset: ack["offset"].as_u64()?,
            epoch: ack["epoch"].as_str()?,
            recovered: ack["recovered"].as_bool(),
        })
    }
}

/// Publications a rejoin could not recover (`recovered:false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// This many, in the same epoch (they are no longer kept, or too many
    /// to replay at once); 0 when the server is behind us, which it should
    /// never be.
    Count(u64),
    /// The epoch changed: the server lost the group's history, so how many
    /// were published meanwhile cannot be known.
    EpochChanged,
}

impl Missed {
    /// The stderr line (without the `roomcast client: ` prefix).
    pub fn describe(self, group: &str) -> String {
        let what = match self {
            Missed::Count(1) => "1 publication".to_owned(),
            Missed::Count(0) | Missed::EpochChanged => "publications".to_owned(),
            Missed::Count(n) => format!("{n} publications"),
        };
        let why = match self {
            Missed::Count(_) => "no longer kept, or too many to replay",
            Missed::EpochChanged => "epoch changed: the server lost the group's history",
        };
        format!("group '{group}': {what} could not be recovered after the reconnect ({why}); reload state")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    epoch: String,
    /// The offset of the last message printed, or the ack's.
    offset: u64,
    /// After a recovered rejoin, until the message at this offset: the
    /// server is replaying, and an offset at or below ours would be one
    /// printed already.
    replay_until: Option<u64>,
}

impl Position {
    fn at(ack: Ack<'_>) -> Self {
        Self {
            epoch: ack.epoch.to_owned(),
            offset: ack.offset,
            replay_until: None,
        }
    }
}

/// The positions of the groups joined that keep history.
#[derive(Debug, Default)]
pub struct Positions {
    groups: HashMap<String, Position>,
}

impl Positions {
    /// What to send as `recover` when rejoining `group`: `(offset, epoch)`,
    /// or `None` for a group without history (or never acknowledged).
    pub fn recover(&self, group: &str) -> Option<(u64, &str)> {
        self.groups.get(group).map(|p| (p.offset, p.epoch.as_str()))
    }

    /// A join of `group` was acknowledged with `ack` (`None`: the group
    /// keeps no history). Returns what could not be recovered, when the
    /// server said so.
    pub fn joined(&mut self, group: &str, ack: Option<Ack<'_>>) -> Option<Missed> {
        let Some(ack) = ack else {
            self.groups.remove(group);
            return None;
        };
        let Some(p) = self.groups.get_mut(group) else {
            self.groups.insert(group.to_owned(), Position::at(ack));
            return None;
        };
        match ack.recovered {
            // What we missed follows, up to the ack's offset: the messages
            // move our offset there.
            Some(true) => {
                p.replay_until = (ack.offset > p.offset).then_some(ack.offset);
                None
            }
            // Carry on from the group's new position.
            Some(false) => {
                let missed = if p.epoch == ack.epoch {
                    Missed::Count(ack.offset.saturating_sub(p.offset))
                } else {
                    Missed::EpochChanged
                };
                *p = Position::at(ack);
                Some(missed)
            }
            None => {
                *p = Position::at(ack);
                None
            }
        }
    }

    /// A message with `offset` arrived in `group`: whether to print it
    /// (false only for one replayed twice, which the server promises not
    /// to do; the check makes sure nothing is ever printed twice).
    ///
    /// Outside a replay an offset at or below ours is not a duplicate but
    /// a new epoch that began while we were connected (the server dropped
    /// the group's history and offsets started again): it is printed and
    /// becomes our offset, and since messages do not carry the epoch, the
    /// next rejoin asks for the old one and learns that it cannot recover.
    pub fn delivered(&mut self, group: &str, offset: u64) -> bool {
        let Some(p) = self.groups.get_mut(group) else {
            return true;
        };
        if let Some(end) = p.replay_until {
            if offset <= p.offset {
                return false;
            }
            if offset >= end {
                p.replay_until = None;
            }
        }
        p.offset = offset;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ack(offset: u64, epoch: &str, recovered: Option<bool>) -> Option<Ack<'_>> {
        Some(Ack {
            offset,
            epoch,
            recovered,
        })
    }

    #[test]
    fn reads_acks() {
        let v = json!({"type":"ack","id":1,"offset":41,"epoch":"E","recovered":false});
        assert_eq!(Ack::of(&v), ack(41, "E", Some(false)));
        let v = json!({"type":"ack","id":1,"offset":0,"epoch":"E"});
        assert_eq!(Ack::of(&v), ack(0, "E", None));
        assert_eq!(Ack::of(&json!({"type":"ack","id":1})), None);
        assert_eq!(Ack::of(&json!({"type":"ack","offset":"x","epoch":"E"})), None);
    }

    #[test]
    fn tracks_the_last_message_or_the_ack() {
        let mut p = Positions::default();
        assert_eq!(p.recover("g"), None);
        assert_eq!(p.joined("g", ack(41, "E", None)), None);
        assert_eq!(p.recover("g"), Some((41, "E")));
        assert!(p.delivered("g", 42));
        assert!(p.delivered("g", 43));
        assert_eq!(p.recover("g"), Some((43, "E")));
        // A group without history has no position, and prints everything.
        assert_eq!(p.joined("plain", None), None);
        assert_eq!(p.recover("plain"), None);
        assert!(p.delivered("plain", 1) && p.delivered("plain", 1));
    }

    #[test]
    fn a_recovered_replay_is_printed_once() {
        let mut p = Positions::default();
        p.joined("g", ack(10, "E", None));
        assert!(p.delivered("g", 11));
        assert_eq!(p.joined("g", ack(14, "E", Some(true))), None);
        assert_eq!(p.recover("g"), Some((11, "E")), "the replay moves it");
        assert!(!p.delivered("g", 11), "printed before the reconnect");
        for o in 12..=14 {
            assert!(p.delivered("g", o));
        }
        assert!(p.delivered("g", 15));
        assert_eq!(p.recover("g"), Some((15, "E")));
    }

    #[test]
    fn an_epoch_restarted_while_connected_is_printed() {
        let mut p = Positions::default();
        p.joined("g", ack(10, "E", None));
        assert!(p.delivered("g", 1), "a new epoch: offsets start again");
        assert!(p.delivered("g", 2));
        assert_eq!(p.recover("g"), Some((2, "E")));
        // The rejoin asks for the old epoch and learns that it cannot.
        assert_eq!(
            p.joined("g", ack(2, "F", Some(false))),
            Some(Missed::EpochChanged)
        );
        assert_eq!(p.recover("g"), Some((2, "F")));
    }

    #[test]
    fn not_recovered_counts_what_was_missed() {
        let mut p = Positions::default();
        p.joined("g", ack(5, "E", None));
        assert_eq!(
            p.joined("g", ack(130, "E", Some(false))),
            Some(Missed::Count(125))
        );
        assert_eq!(p.recover("g"), Some((130, "E")), "carries on from the ack");
        assert_eq!(
            p.joined("g", ack(3, "F", Some(false))),
            Some(Missed::EpochChanged)
        );
        assert_eq!(p.recover("g"), Some((3, "F")));
    }

    #[test]
    fn describes_what_was_missed() {
        assert_eq!(
            Missed::Count(25).describe("chat:1"),
            "group 'chat:1': 25 publications could not be recovered after the reconnect \
             (no longer kept, or too many to replay); reload state"
        );
        assert!(
            Missed::Count(1)
                .describe("g")
                .starts_with("group 'g': 1 publication could not be recovered after the reconnect")
        );
        assert_eq!(
            Missed::EpochChanged.describe("g"),
            "group 'g': publications could not be recovered after the reconnect \
             (epoch changed: the server lost the group's history); reload state"
        );
    }
}
