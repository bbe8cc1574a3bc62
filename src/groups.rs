//! What each group has (history, presence, join/leave events): rules per
//! group-name prefix (`[[groups]]` in the TOML file), the longest matching
//! prefix winning, and one rule for every other group (the `--history-size`,
//! `--history-ttl`, `--presence` and `--join-leave` flags). Every feature is
//! off unless a rule turns it on: history costs memory (or broker storage)
//! per publication, presence a store entry per member, and join/leave
//! events a message to every member at each join and leave.
//!
//! Every node of a cluster must be given the same rules: a node decides
//! from them whether a publication is appended to history, and whether a
//! member is listed in presence.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most publications a group may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;
/// Longest a publication may be kept.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long history is kept when a rule does not say.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(600);

fn default_ttl() -> Duration {
    DEFAULT_HISTORY_TTL
}

/// One `[[groups]]` entry of the TOML file. Fields it leaves out are off
/// (they do not fall back to the flags, which are the rule for groups that
/// no entry matches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// Groups whose name starts with this (may be empty: every group).
    pub prefix: String,
    /// Publications kept per group (0: no history).
    #[serde(default)]
    pub history_size: usize,
    /// And for how long.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Members are listed in presence (the `presence` request, the API).
    #[serde(default)]
    pub presence: bool,
    /// Members receive `joined` and `left` events (needs `presence`).
    #[serde(default)]
    pub join_leave: bool,
}

/// Whether a group's members are listed, and told of each other.
/// Apart from [`Features`] (history), which the brokers carry with each
/// publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceFeatures {
    /// Members are listed in presence.
    pub presence: bool,
    /// Members receive `joined` and `left` events (implies `presence`).
    pub join_leave: bool,
}

impl From<&GroupRule> for PresenceFeatures {
    fn from(r: &GroupRule) -> Self {
        Self {
            presence: r.presence,
            join_leave: r.join_leave,
        }
    }
}

/// What one group has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Publications kept (0: no history).
    pub history_size: usize,
    /// How long each is kept.
    pub history_ttl: Duration,
}

impl Features {
    /// Nothing on.
    pub const NONE: Self = Self {
        history_size: 0,
        history_ttl: DEFAULT_HISTORY_TTL,
    };

    /// The group keeps history.
    pub fn history(&self) -> bool {
        self.history_size > 0
    }
}

impl From<&GroupRule> for Features {
    fn from(r: &GroupRule) -> Self {
        Self {
            history_size: r.history_size,
            history_ttl: r.history_ttl,
        }
    }
}

/// The rules, ready to match group names.
#[derive(Debug, Clone)]
pub struct GroupRules {
    /// Longest prefix first.
    rules: Vec<(String, Features)>,
    default: Features,
    /// The same prefixes' presence settings, longest prefix first.
    presence: Vec<(String, PresenceFeatures)>,
    default_presence: PresenceFeatures,
}

impl GroupRules {
    /// Rules from the `[[groups]]` entries and the rule for other groups.
    pub fn new(rules: &[GroupRule], default: Features) -> Self {
        Self::with_presence(rules, default, PresenceFeatures::default())
    }

    /// Rules from the `[[groups]]` entries and the rule for other groups,
    /// presence settings included.
    pub fn with_presence(rules: &[GroupRule], default: Features, default_presence: PresenceFeatures) -> Self {
        let mut sorted: Vec<&GroupRule> = rules.iter().collect();
        sorted.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            rules: sorted.iter().map(|r| (r.prefix.clone(), (*r).into())).collect(),
            default,
            presence: sorted.iter().map(|r| (r.prefix.clone(), (*r).into())).collect(),
            default_presence,
        }
    }

    /// Every feature off for every group.
    pub fn none() -> Self {
        Self::new(&[], Features::NONE)
    }

    /// Whether `group` has presence and join/leave events: the rule with
    /// the longest matching prefix, or the default.
    pub fn presence(&self, group: &str) -> PresenceFeatures {
        self.presence
            .iter()
            .find(|(p, _)| group.starts_with(p.as_str()))
            .map_or(self.default_presence, |(_, f)| *f)
    }

    /// Whether any group can have presence.
    pub fn any_presence(&self) -> bool {
        self.default_presence.presence || self.presence.iter().any(|(_, f)| f.presence)
    }

    /// What `group` has: the rule with the longest matching prefix, or the
    /// default.
    pub fn features(&self, group: &str) -> Features {
        self.rules
            .iter()
            .find(|(p, _)| group.starts_with(p.as_str()))
            .map_or(self.default, |(_, f)| *f)
    }

    /// Every distinct way of keeping history among the rules.
    pub fn history_features(&self) -> Vec<Features> {
        let mut all: Vec<Features> = Vec::new();
        for f in self.rules.iter().map(|(_, f)| *f).chain([self.default]) {
            if f.history() && !all.contains(&f) {
                all.push(f);
            }
        }
        all
    }

    /// Whether any group can have history.
    pub fn any_history(&self) -> bool {
        self.default.history() || self.rules.iter().any(|(_, f)| f.history())
    }
}

/// Check one rule's presence settings: `Err((field, why))`.
pub fn check_presence(f: PresenceFeatures) -> Result<(), (&'static str, String)> {
    if f.join_leave && !f.presence {
        return Err((
            "join_leave",
            "needs presence = true as well (events are counted from presence)".into(),
        ));
    }
    Ok(())
}

/// Check one rule's values: `Err((field, why))`.
pub fn check(size: usize, ttl: Duration) -> Result<(), (&'static str, String)> {
    if size > MAX_HISTORY_SIZE {
        return Err(("history_size", format!("must be at most {MAX_HISTORY_SIZE}")));
    }
    if size > 0 && ttl.is_zero() {
        return Err((
            "history_ttl",
            "must be more than 0s when history_size is set".into(),
        ));
    }
    if ttl > MAX_HISTORY_TTL {
        return Err(("history_ttl", "must be at most 30 days".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, size: usize) -> GroupRule {
        GroupRule {
            prefix: prefix.into(),
            history_size: size,
            history_ttl: Duration::from_secs(60),
            presence: size == 5,
            join_leave: false,
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let r = GroupRules::new(
            &[rule("chat:", 10), rule("chat:big:", 0), rule("c", 5)],
            Features {
                history_size: 1,
                ..Features::NONE
            },
        );
        assert_eq!(r.features("chat:1").history_size, 10);
        assert_eq!(r.features("chat:big:1").history_size, 0);
        assert_eq!(r.features("cx").history_size, 5);
        assert_eq!(r.features("other").history_size, 1);
        assert!(r.any_history());
        assert!(!GroupRules::none().any_history());
        assert!(r.presence("cx").presence && !r.presence("chat:1").presence);
        assert!(!r.any_presence() || r.presence("cx").presence);
        assert!(!GroupRules::none().any_presence());
        let on = PresenceFeatures {
            presence: true,
            join_leave: true,
        };
        let r = GroupRules::with_presence(&[rule("c", 5)], Features::NONE, on);
        assert_eq!(r.presence("other"), on);
        assert!(!r.presence("cx").join_leave && r.any_presence());
    }

    #[test]
    fn join_leave_needs_presence() {
        let events_alone = PresenceFeatures {
            presence: false,
            join_leave: true,
        };
        assert_eq!(check_presence(events_alone).unwrap_err().0, "join_leave");
        assert!(check_presence(PresenceFeatures::default()).is_ok());
    }

    #[test]
    fn checks_bounds() {
        assert!(check(0, Duration::ZERO).is_ok());
        assert_eq!(check(5, Duration::ZERO).unwrap_err().0, "history_ttl");
        assert_eq!(
            check(MAX_HISTORY_SIZE + 1, Duration::from_secs(1)).unwrap_err().0,
            "history_size"
        );
    }
}
