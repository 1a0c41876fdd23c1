//! Teams. Every run belongs to one; a team's tokens see and act on that team's runs,
//! approvals, artifacts, events and streams only, and an idempotency key is the team's
//! own. Operators (the CLI) and fleet-wide admin tokens see every team.

/// The team of runs submitted without one (and of tokens that name none).
pub const DEFAULT_TEAM: &str = "default";

/// Whose runs a caller may see and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every team's (operators, fleet-wide admin tokens).
    Fleet,
    /// One team's.
    Team(String),
}

impl Scope {
    /// The team this scope is limited to; `None` for the whole fleet.
    #[must_use]
    pub fn team(&self) -> Option<&str> {
        match self {
            Self::Fleet => None,
            Self::Team(t) => Some(t),
        }
    }

    /// Whether a run of `team` is visible in this scope.
    #[must_use]
    pub fn sees(&self, team: &str) -> bool {
        self.team().is_none_or(|t| t == team)
    }
}
