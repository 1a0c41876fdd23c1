//! The prompt envelope for one phase attempt: inputs, prior artifacts, expected path,
//! the schema inline and, on a repair, the previous attempt's validation errors.

use crate::store::run_inputs::PriorArtifact;
use crate::validate::Issue;
use crate::workflow::{Phase, RunInputs};
use std::fmt::Write;

pub struct Envelope<'a> {
    pub run_id: String,
    pub phase: &'a Phase,
    pub round: i32,
    pub attempt: i32,
    pub inputs: &'a RunInputs,
    /// Earlier phases' accepted artifacts.
    pub prior: &'a [PriorArtifact],
    pub schema: &'a serde_json::Value,
    /// Validation errors of the previous attempt, on a repair.
    pub repair_issues: Option<&'a [Issue]>,
    /// A reviewer's comment asking for a revision.
    pub revise_comment: Option<&'a str>,
}

impl Envelope<'_> {
    #[must_use]
    pub fn render(&self) -> String {
        let p = self.phase;
        let mut s = String::new();
        let schema = serde_json::to_string_pretty(self.schema).unwrap_or_default();
        let _ = writeln!(s, "PHASEFLEET_PROMPT_BEGIN {}:{}", self.run_id, p.key);
        let _ = writeln!(
            s,
            "Run: {}\nPhase: {}\nRound: {}\nAttempt: {} of {}",
            self.run_id, p.key, self.round, self.attempt, p.max_attempts
        );
        let _ = writeln!(
            s,
            "Expected artifact path: {}\nExpected schema id: {}\n",
            p.expected_artifact.path, p.expected_artifact.schema
        );
        let _ = writeln!(
            s,
            "JSON Schema 2020-12 for this artifact (you MUST satisfy it exactly):\n```json\n{schema}\n```\n"
        );
        let _ = writeln!(
            s,
            "Use the `write_file` tool to write a JSON object that matches the schema to the exact path `{}`. The file must parse as valid JSON.\n",
            p.expected_artifact.path
        );
        let _ = writeln!(s, "## Requirements\n{}\n", self.inputs.requirements);
        let _ = writeln!(
            s,
            "## Objective\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&self.inputs.objective).unwrap_or_default()
        );
        if !self.prior.is_empty() {
            let _ = writeln!(s, "## Artifacts from earlier phases");
            for a in self.prior {
                let _ = writeln!(
                    s,
                    "### {} ({})\n```json\n{}\n```",
                    a.phase_key, a.path, a.content
                );
            }
            s.push('\n');
        }
        let _ = writeln!(s, "## Instructions\n{}", p.instructions);
        if let Some(comment) = self.revise_comment {
            let _ = writeln!(
                s,
                "\n[REVISION REQUESTED]\nA reviewer asked for changes to the previous version of this artifact:\n{comment}"
            );
        }
        if let Some(issues) = self.repair_issues {
            let _ = writeln!(
                s,
                "\n[REPAIR ATTEMPT]\nYour previous artifact did not validate against the JSON Schema above. Fix every error below and write a corrected JSON object:"
            );
            for i in issues {
                let at = if i.path.is_empty() {
                    "(root)"
                } else {
                    i.path.as_str()
                };
                let _ = writeln!(s, "- at {at}: {}", i.message);
            }
        }
        let _ = write!(s, "PHASEFLEET_PROMPT_END {}:{}", self.run_id, p.key);
        s
    }
}
