//! Run and phase states and the transitions between them, in one place. The store
//! refuses a change these tables do not allow (`store::runs::runs_set_state`,
//! `store::run_phases::run_phases_set_state`), and the SQL that moves several rows at
//! once takes its allowed source states from here.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "run_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    AwaitingApproval,
    /// The budget ran out: an approver raises it (the run resumes) or aborts.
    AwaitingBudget,
    Completed,
    Failed,
    Aborted,
    Cancelled,
}

use RunState::{
    Aborted, AwaitingApproval, AwaitingBudget, Cancelled, Completed, Failed, Queued, Running,
};

/// Every allowed run transition (from, to).
pub const RUN_TRANSITIONS: &[(RunState, RunState)] = &[
    // The first phase starts; or the run ends before it did.
    (Queued, Running),
    (Queued, Failed),
    (Queued, Cancelled),
    // A gated phase parks the run; the last phase completes it.
    (Running, AwaitingApproval),
    (Running, Completed),
    (Running, Failed),
    (Running, Cancelled),
    // An approver aborts at one branch's gate while another branch still runs.
    (Running, Aborted),
    // A decision: approve (next phase, or the end), revise, reject, abort; or a cancel.
    (AwaitingApproval, Running),
    (AwaitingApproval, Completed),
    (AwaitingApproval, Failed),
    (AwaitingApproval, Aborted),
    (AwaitingApproval, Cancelled),
    // The budget ran out (before an attempt, or during one): wait for a top-up, which
    // resumes the run, or an abort; a cancel ends it too.
    (Queued, AwaitingBudget),
    (Running, AwaitingBudget),
    (AwaitingBudget, Running),
    (AwaitingBudget, Aborted),
    (AwaitingBudget, Cancelled),
    // Waiting for budget, a parallel branch fails (its artifact, or a reviewer's reject).
    (AwaitingBudget, Failed),
    // An operator re-opens a failed run at its failed phase.
    (Failed, Running),
];

impl RunState {
    pub const ALL: [Self; 8] = [
        Queued,
        Running,
        AwaitingApproval,
        AwaitingBudget,
        Completed,
        Failed,
        Aborted,
        Cancelled,
    ];

    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Completed | Failed | Aborted | Cancelled)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Queued => "queued",
            Running => "running",
            AwaitingApproval => "awaiting_approval",
            AwaitingBudget => "awaiting_budget",
            Completed => "completed",
            Failed => "failed",
            Aborted => "aborted",
            Cancelled => "cancelled",
        }
    }

    /// Whether the transition table allows `self -> next`.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        RUN_TRANSITIONS.contains(&(self, next))
    }

    /// The states that may become `next`.
    #[must_use]
    pub fn sources_of(next: Self) -> Vec<Self> {
        sources_in(RUN_TRANSITIONS, next)
    }

    /// `Ok` when the transition table allows `self -> next`.
    ///
    /// # Errors
    /// [`ForbiddenTransition`] naming both states.
    pub fn check_becomes(self, next: Self) -> Result<(), ForbiddenTransition> {
        ForbiddenTransition::unless(self.can_become(next), "a run", self.as_str(), next.as_str())
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "phase_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    Pending,
    Running,
    /// Declared by the schema; the engine validates inside the attempt and never
    /// stores this state.
    Validating,
    AwaitingApproval,
    Completed,
    Failed,
    Skipped,
}

/// Every allowed phase transition (from, to).
pub const PHASE_TRANSITIONS: &[(PhaseState, PhaseState)] = {
    use PhaseState::{AwaitingApproval, Completed, Failed, Pending, Running, Skipped};
    &[
        // An attempt starts; a repair starts the next attempt of the same round.
        (Pending, Running),
        (Running, Running),
        // A valid artifact: accepted, or parked on a human.
        (Running, Completed),
        (Running, AwaitingApproval),
        // Out of attempts, or the agent cannot go on.
        (Running, Failed),
        // The budget ran out mid-attempt: the attempt resumes after a top-up.
        (Running, Pending),
        // A decision: approve, reject, revise (a new round).
        (AwaitingApproval, Completed),
        (AwaitingApproval, Failed),
        (AwaitingApproval, Pending),
        // The run ended (cancel, abort, another phase failed): unfinished phases skip.
        (Pending, Skipped),
        (Running, Skipped),
        (AwaitingApproval, Skipped),
        // A fan-out with no array to go over fails before any attempt.
        (Pending, Failed),
        // An operator re-opens a failed run: its failed phase and the skipped rest.
        (Failed, Pending),
        (Skipped, Pending),
    ]
};

impl PhaseState {
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Validating,
        Self::AwaitingApproval,
        Self::Completed,
        Self::Failed,
        Self::Skipped,
    ];

    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Skipped)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Validating => "validating",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Whether the transition table allows `self -> next`.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        PHASE_TRANSITIONS.contains(&(self, next))
    }

    /// The states that may become `next`.
    #[must_use]
    pub fn sources_of(next: Self) -> Vec<Self> {
        sources_in(PHASE_TRANSITIONS, next)
    }

    /// `Ok` when the transition table allows `self -> next`.
    ///
    /// # Errors
    /// [`ForbiddenTransition`] naming both states.
    pub fn check_becomes(self, next: Self) -> Result<(), ForbiddenTransition> {
        ForbiddenTransition::unless(
            self.can_become(next),
            "a phase",
            self.as_str(),
            next.as_str(),
        )
    }
}

/// The states a transition table lets become `next`.
fn sources_in<S: Copy + PartialEq>(table: &[(S, S)], next: S) -> Vec<S> {
    table
        .iter()
        .filter(|(_, to)| *to == next)
        .map(|(from, _)| *from)
        .collect()
}

impl std::fmt::Display for PhaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change the transition table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from {from} to {to}")]
pub struct ForbiddenTransition {
    pub what: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

impl ForbiddenTransition {
    fn unless(
        allowed: bool,
        what: &'static str,
        from: &'static str,
        to: &'static str,
    ) -> Result<(), Self> {
        if allowed {
            Ok(())
        } else {
            Err(Self { what, from, to })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_transition_is_listed_and_nothing_else_is_allowed() {
        for from in RunState::ALL {
            for to in RunState::ALL {
                let listed = RUN_TRANSITIONS.contains(&(from, to));
                assert_eq!(from.can_become(to), listed, "{from} -> {to}");
                if from.is_terminal() && from != Failed {
                    assert!(!from.can_become(to), "{from} is final");
                }
            }
        }
        assert_eq!(
            RunState::sources_of(Aborted),
            vec![Running, AwaitingApproval, AwaitingBudget]
        );
        assert_eq!(
            "awaiting_approval".parse::<RunState>(),
            Ok(AwaitingApproval)
        );
    }

    #[test]
    fn completed_phases_never_move_and_validating_is_never_entered() {
        for to in PhaseState::ALL {
            assert!(!PhaseState::Completed.can_become(to));
            assert!(!PhaseState::Validating.can_become(to));
            assert!(!to.can_become(PhaseState::Validating));
        }
        assert!(
            PhaseState::sources_of(PhaseState::Skipped).contains(&PhaseState::AwaitingApproval)
        );
    }
}
