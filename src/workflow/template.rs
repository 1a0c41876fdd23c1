//! Workflow templates: roles and phases; by default each phase needs the one before it
//! (`needs`, `fan_out` and `when` make a graph: `graph.rs`).

use super::graph::{Condition, FanOut};
use super::{Definition, Problem, at_most, problem};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTemplate {
    #[schema(max_length = 128, pattern = r"\S")]
    pub name: String,
    #[schema(max_length = 64, pattern = r"\S")]
    pub version: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// role -> default persona (by name).
    pub roles: BTreeMap<String, RoleDefault>,
    #[schema(min_items = 1, max_items = 100)]
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDefault {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub persona: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub key: String,
    pub role: String,
    #[schema(max_length = 65536, pattern = r"\S")]
    pub instructions: String,
    /// The JSON artifact the phase must produce; without one, the phase's output is the
    /// files it writes, and it is accepted when the agent finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_artifact: Option<ExpectedArtifact>,
    /// Named gates; any gate parks the run on a human approval after a valid artifact.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub gates: Vec<String>,
    /// How long a gate's approval may wait (e.g. `2s`, `30m`, `2d`; 1 s to 30 days);
    /// then `on_timeout` decides. Needs `gates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub deadline: Option<String>,
    /// What the deadline does to an undecided approval (default `reject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// The approver group an escalated approval goes to: only a token of that group
    /// (or a fleet-wide admin) may then decide it. Needs `on_timeout: escalate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub escalate_to: Option<String>,
    /// Seconds the agent may take for one attempt.
    #[serde(default = "default_timeout")]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout: u64,
    /// Attempts including repairs (2 = one repair).
    #[serde(default = "default_max_attempts")]
    #[schema(minimum = 1, maximum = 10)]
    pub max_attempts: u32,
    /// The phases that must be accepted (or skipped) before this one starts; default:
    /// the phase before it (none for the first). Phases whose needs are met run in
    /// parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 100)]
    pub needs: Option<Vec<String>>,
    /// Run one item of this phase per element of an array in a needed phase's
    /// artifact; their artifacts are gathered, in order, as this phase's artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOut>,
    /// Run only when this holds; otherwise the phase is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
}

/// What an approval deadline does when nobody decided in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The phase fails and the run with it.
    Reject,
    /// The run is aborted.
    Abort,
    /// The artifact is accepted and the run goes on.
    Approve,
    /// The approval goes to the `escalate_to` group, and waits on it.
    Escalate,
}

impl OnTimeout {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Abort => "abort",
            Self::Approve => "approve",
            Self::Escalate => "escalate",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Reject, Self::Abort, Self::Approve, Self::Escalate]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// The longest approval deadline.
pub const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

impl Phase {
    /// The approval deadline as a duration (checked at load, so a stored template's
    /// parses).
    #[must_use]
    pub fn deadline(&self) -> Option<std::time::Duration> {
        self.deadline
            .as_deref()
            .and_then(|d| humantime::parse_duration(d.trim()).ok())
    }
}

fn check_deadline(p: &Phase) -> Result<(), (&'static str, String)> {
    if let Some(text) = &p.deadline {
        if p.gates.is_empty() {
            return Err((
                "deadline",
                "a deadline needs `gates` (it bounds an approval's wait)".into(),
            ));
        }
        let d = humantime::parse_duration(text.trim()).map_err(|e| {
            (
                "deadline",
                format!("expected a duration like 2s, 30m or 2d: {e}"),
            )
        })?;
        if d < std::time::Duration::from_secs(1) || d > MAX_DEADLINE {
            return Err(("deadline", "must be 1 s to 30 days".into()));
        }
    } else if p.on_timeout.is_some() || p.escalate_to.is_some() {
        return Err((
            "on_timeout",
            "`on_timeout` and `escalate_to` need a `deadline`".into(),
        ));
    }
    match (p.on_timeout, &p.escalate_to) {
        (Some(OnTimeout::Escalate), None) => Err((
            "escalate_to",
            "`on_timeout: escalate` needs the group to escalate to".into(),
        )),
        (Some(OnTimeout::Escalate), Some(group)) if !is_identifier(group) => Err((
            "escalate_to",
            "group names use letters, digits, '_', '-', '.'".into(),
        )),
        (o, Some(_)) if o != Some(OnTimeout::Escalate) => Err((
            "escalate_to",
            "`escalate_to` goes with `on_timeout: escalate`".into(),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedArtifact {
    /// Workspace-relative path the agent must write.
    pub path: String,
    /// Id of a schema in the registry (`schemas/<id>.json`).
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub schema: String,
}

fn default_timeout() -> u64 {
    600
}
fn default_max_attempts() -> u32 {
    2
}

fn check_gates(gates: &[String]) -> Result<(), String> {
    if gates.len() > 16 {
        return Err(format!("at most 16 gates, found {}", gates.len()));
    }
    match gates.iter().find(|g| !is_identifier(g)) {
        Some(g) => Err(format!(
            "{g:?} is not a gate name (letters, digits, '_', '-', '.'; at most 64)"
        )),
        None => Ok(()),
    }
}

pub(super) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl Definition for WorkflowTemplate {
    fn problems(&self) -> Result<(), Problem> {
        self.check_header()?;
        self.check_roles()?;
        let (mut keys, mut paths) = (HashSet::new(), HashSet::new());
        for (i, phase) in self.phases.iter().enumerate() {
            self.check_phase(i, phase, &mut keys, &mut paths)?;
        }
        self.check_graph()
    }
}

impl WorkflowTemplate {
    fn check_header(&self) -> Result<(), Problem> {
        for (field, text, max) in [
            ("name", self.name.as_str(), 128),
            ("version", self.version.as_str(), 64),
        ] {
            if text.trim().is_empty() {
                return Err(problem(field, "must not be empty"));
            }
            at_most(field, text, max)?;
        }
        at_most(
            "description",
            self.description.as_deref().unwrap_or(""),
            4096,
        )?;
        match self.phases.len() {
            0 => Err(problem("phases", "a template needs at least one phase")),
            n if n > 100 => Err(problem("phases", format!("at most 100 phases, found {n}"))),
            _ if self.roles.len() > 32 => Err(problem(
                "roles",
                format!("at most 32 roles, found {}", self.roles.len()),
            )),
            _ => Ok(()),
        }
    }

    fn check_roles(&self) -> Result<(), Problem> {
        for (role, d) in &self.roles {
            if !is_identifier(role) {
                return Err(problem(
                    format!("roles.{role}"),
                    "role names use letters, digits, '_', '-', '.'",
                ));
            }
            if !is_identifier(&d.persona) {
                return Err(problem(
                    format!("roles.{role}.persona"),
                    "persona names use letters, digits, '_', '-', '.' (at most 64)",
                ));
            }
        }
        Ok(())
    }

    fn check_phase<'a>(
        &self,
        i: usize,
        p: &'a Phase,
        keys: &mut HashSet<&'a str>,
        paths: &mut HashSet<&'a str>,
    ) -> Result<(), Problem> {
        let at = |f: &str| format!("phases[{i}].{f}");
        if !is_identifier(&p.key) {
            return Err(problem(
                at("key"),
                format!(
                    "{:?} is not a valid key (letters, digits, '_', '-', '.'; at most 64)",
                    p.key
                ),
            ));
        }
        if !keys.insert(p.key.as_str()) {
            return Err(problem(
                at("key"),
                format!("duplicate phase key {:?}", p.key),
            ));
        }
        if !self.roles.contains_key(&p.role) {
            return Err(problem(
                at("role"),
                format!(
                    "role {:?} is not declared under `roles` (declared: {:?})",
                    p.role,
                    self.roles.keys().collect::<Vec<_>>()
                ),
            ));
        }
        if p.instructions.trim().is_empty() {
            return Err(problem(at("instructions"), "must not be empty"));
        }
        at_most(&at("instructions"), &p.instructions, 64 * 1024)?;
        check_gates(&p.gates).map_err(|m| problem(at("gates"), m))?;
        check_deadline(p).map_err(|(field, m)| problem(at(field), m))?;
        if let Some(artifact) = &p.expected_artifact {
            crate::agent::workspace::check_relative_path(&artifact.path)
                .map_err(|m| problem(at("expected_artifact.path"), m))?;
            if !paths.insert(artifact.path.as_str()) {
                return Err(problem(
                    at("expected_artifact.path"),
                    "two phases write the same artifact path",
                ));
            }
            if !is_identifier(&artifact.schema) {
                return Err(problem(
                    at("expected_artifact.schema"),
                    "schema ids use letters, digits, '_', '-', '.'",
                ));
            }
        }
        if !(1..=86_400).contains(&p.timeout) {
            return Err(problem(
                at("timeout"),
                format!("must be 1..=86400 seconds, got {}", p.timeout),
            ));
        }
        if !(1..=10).contains(&p.max_attempts) {
            return Err(problem(
                at("max_attempts"),
                format!("must be 1..=10, got {}", p.max_attempts),
            ));
        }
        Ok(())
    }

    #[must_use]
    pub fn phase(&self, key: &str) -> Option<(usize, &Phase)> {
        self.phases.iter().enumerate().find(|(_, p)| p.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
name: t
version: '1'
roles: { author: { persona: p } }
phases:
  - key: spec
    role: author
    instructions: write it
    expected_artifact: { path: spec.json, schema: spec.v1 }
";

    #[test]
    fn yaml_and_json_forms_hash_the_same() {
        let y = WorkflowTemplate::from_str_named("t.yaml", YAML).unwrap();
        let j = serde_json::to_string(&y).unwrap();
        let j = WorkflowTemplate::from_str_named("t.json", &j).unwrap();
        assert_eq!(y.canonical().1, j.canonical().1);
        assert_eq!(y.phases[0].max_attempts, 2, "default is one repair");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = WorkflowTemplate::from_str_named(
            "t.yaml",
            &YAML.replace("role: author", "role: author\n    colour: red"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.yaml") && err.contains("colour"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                YAML.replace("role: author", "role: ghost"),
                "phases[0].role",
            ),
            (
                YAML.replace("path: spec.json", "path: ../x.json"),
                "phases[0].expected_artifact.path",
            ),
            (
                YAML.replace("path: spec.json", "path: /etc/passwd"),
                "phases[0].expected_artifact.path",
            ),
            (YAML.replace("key: spec", "key: 'a b'"), "phases[0].key"),
            (
                YAML.replace("instructions: write it", "instructions: ' '"),
                "phases[0].instructions",
            ),
        ];
        for (text, field) in cases {
            let err = WorkflowTemplate::from_str_named("t.yaml", &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        let err = WorkflowTemplate::from_str_named("t.yaml", "name: [")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:"), "{err}");
    }
}
