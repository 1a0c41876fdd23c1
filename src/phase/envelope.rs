//! The prompt envelope for one phase attempt: inputs, the workspace's files, prior
//! artifacts, the expected artifact with its schema inline and how to hand it in; on a
//! repair or an operator's retry, the previous artifact with every validation error and
//! the schema fragment each error is about; on a revision, the reviewer's comment.

use crate::agent::ArtifactCheck;
use crate::agent::artifact::SUBMIT_TOOL;
use crate::store::run_inputs::{PreviousArtifact, PriorArtifact};
use crate::validate::{Issue, quote};
use crate::workflow::{ArtifactVia, Phase, RunInputs};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Most file paths listed in the envelope (the tools see them all).
const MAX_LISTED_FILES: usize = 200;
/// Most bytes of the previous artifact quoted in a repair.
const MAX_PREVIOUS_BYTES: usize = 16 * 1024;
/// Most schema fragments quoted in a repair, and bytes of each.
const MAX_FRAGMENTS: usize = 10;
const MAX_FRAGMENT_BYTES: usize = 2048;

pub struct Envelope<'a> {
    pub run_id: String,
    pub phase: &'a Phase,
    pub round: i32,
    pub attempt: i32,
    pub inputs: &'a RunInputs,
    /// Earlier phases' accepted artifacts.
    pub prior: &'a [PriorArtifact],
    /// The expected artifact, when the phase has one.
    pub artifact: Option<&'a ArtifactCheck>,
    pub artifact_via: ArtifactVia,
    /// The latest earlier artifact of this phase.
    pub previous: Option<&'a PreviousArtifact>,
    /// A reviewer's comment asking for a revision.
    pub revise_comment: Option<&'a str>,
    /// The workspace's paths (binary files marked), in order.
    pub files: &'a [String],
    /// For an item of a fan-out: (name, index, where from, element).
    pub item: Option<(&'a str, i32, &'a str, &'a serde_json::Value)>,
}

impl Envelope<'_> {
    #[must_use]
    pub fn render(&self) -> String {
        let p = self.phase;
        let mut s = String::new();
        let _ = writeln!(s, "PHASEFLEET_PROMPT_BEGIN {}:{}", self.run_id, p.key);
        let _ = writeln!(
            s,
            "Run: {}\nPhase: {}\nRound: {}\nAttempt: {} of {}",
            self.run_id, p.key, self.round, self.attempt, p.max_attempts
        );
        self.expected(&mut s);
        self.files_section(&mut s);
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
        if let Some((name, index, over, element)) = self.item {
            let _ = writeln!(
                s,
                "## Your {name}\nThis attempt handles element {index} of {over} (one job per element; the others are handled separately). `{name}`:\n```json\n{}\n```\n",
                bounded(&serde_json::to_string_pretty(element).unwrap_or_default())
            );
        }
        let _ = writeln!(s, "## Instructions\n{}", p.instructions);
        self.revision(&mut s);
        self.repair(&mut s);
        let _ = write!(s, "PHASEFLEET_PROMPT_END {}:{}", self.run_id, p.key);
        s
    }

    /// The artifact, its schema and how to hand it in; or that the output is files.
    fn expected(&self, s: &mut String) {
        let Some(a) = self.artifact else {
            let _ = writeln!(
                s,
                "\nThis phase expects no JSON artifact: its output is the files you write with `write_file` and `edit_file`. When you are done, reply with one sentence and stop.\n"
            );
            return;
        };
        let schema = serde_json::to_string_pretty(&a.schema).unwrap_or_default();
        let _ = writeln!(
            s,
            "Expected artifact path: {}\nExpected schema id: {}\n",
            a.path, a.schema_id
        );
        let _ = writeln!(
            s,
            "JSON Schema 2020-12 for this artifact (you MUST satisfy it exactly):\n```json\n{schema}\n```\n"
        );
        let how = match self.artifact_via {
            ArtifactVia::Tool => format!(
                "Hand in the artifact by calling the `{SUBMIT_TOOL}` tool: its arguments ARE the artifact, a JSON object that satisfies the schema. (Writing it to `{}` with `write_file` works too.) It is checked at once: \"accepted\" ends the phase; otherwise you get every error, fix them and submit the whole artifact again. Write any other files the instructions ask for first.",
                a.path
            ),
            ArtifactVia::ResponseFormat => format!(
                "Reply with the artifact itself: one JSON object that satisfies the schema, nothing else. It is stored as `{}` and checked at once.",
                a.path
            ),
        };
        let _ = writeln!(s, "{how}\n");
    }

    fn files_section(&self, s: &mut String) {
        if self.files.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Files in your workspace ({}; read them with read_file, find with ls, glob, grep)",
            self.files.len()
        );
        for path in self.files.iter().take(MAX_LISTED_FILES) {
            let _ = writeln!(s, "- {path}");
        }
        if self.files.len() > MAX_LISTED_FILES {
            let _ = writeln!(
                s,
                "- … and {} more (use ls)",
                self.files.len() - MAX_LISTED_FILES
            );
        }
        s.push('\n');
    }

    fn revision(&self, s: &mut String) {
        let Some(comment) = self.revise_comment else {
            return;
        };
        let _ = writeln!(
            s,
            "\n[REVISION REQUESTED]\nA reviewer asked for changes to the previous version of this artifact:\n{comment}"
        );
        if let Some(content) = self
            .previous
            .filter(|prev| prev.valid)
            .and_then(|prev| prev.content.as_deref())
        {
            let _ = writeln!(
                s,
                "The previous version:\n```json\n{}\n```",
                bounded(content)
            );
        }
    }

    /// The previous attempt's (or, on an operator's retry, the previous round's)
    /// failure: each error with the schema fragment it is about, and what was written.
    fn repair(&self, s: &mut String) {
        let Some(prev) = self.previous.filter(|prev| !prev.valid) else {
            return;
        };
        // A revision round starts from the reviewer's comment; its own failed attempts
        // are repaired like any other.
        if self.revise_comment.is_some() && prev.round != self.round {
            return;
        }
        let issues: Vec<Issue> =
            serde_json::from_value(prev.validation_errors.clone()).unwrap_or_default();
        if prev.round == self.round {
            let _ = writeln!(
                s,
                "\n[REPAIR ATTEMPT]\nYour previous attempt (attempt {}) did not produce a valid artifact. Fix every error below and hand in the whole corrected artifact:",
                prev.attempt
            );
        } else {
            let _ = writeln!(
                s,
                "\n[RETRY]\nAn operator retried this phase after round {} failed (attempt {}). Avoid what went wrong there; its errors were:",
                prev.round, prev.attempt
            );
        }
        for i in &issues {
            let _ = writeln!(s, "- at {}: {}", i.at(), i.message);
        }
        self.fragments(s, &issues);
        match prev.content.as_deref() {
            Some(content) => {
                let _ = writeln!(
                    s,
                    "What was written then (correct it; do not start from scratch):\n```json\n{}\n```",
                    bounded(content)
                );
            }
            None => {
                let _ = writeln!(s, "Nothing was written then.");
            }
        }
    }

    /// The schema of each place an error is about, once per place.
    fn fragments(&self, s: &mut String, issues: &[Issue]) {
        let Some(artifact) = self.artifact else {
            return;
        };
        let mut seen = BTreeSet::new();
        let mut shown = 0;
        for issue in issues {
            let Some(fragment) = artifact.fragment(issue) else {
                continue;
            };
            let text = quote_fragment(&fragment);
            if shown == MAX_FRAGMENTS || !seen.insert(text.clone()) {
                continue;
            }
            if shown == 0 {
                let _ = writeln!(s, "The schema at those places:");
            }
            shown += 1;
            let _ = writeln!(s, "- for {}: {text}", issue.at());
        }
    }
}

fn quote_fragment(fragment: &serde_json::Value) -> String {
    let text = fragment.to_string();
    if text.len() > MAX_FRAGMENT_BYTES {
        quote(fragment)
    } else {
        text
    }
}

/// At most [`MAX_PREVIOUS_BYTES`] of `text`, cut on a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_PREVIOUS_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_PREVIOUS_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… (cut at {MAX_PREVIOUS_BYTES} bytes)", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope_for(round: i32, previous: &PreviousArtifact, comment: Option<&str>) -> String {
        let phase: Phase = serde_json::from_value(json!({
            "key": "spec", "role": "author", "instructions": "write it",
            "expected_artifact": { "path": "spec.json", "schema": "spec.v1" }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let inputs = RunInputs::default();
        Envelope {
            run_id: "r".into(),
            phase: &phase,
            round,
            attempt: 2,
            inputs: &inputs,
            prior: &[],
            artifact: None,
            artifact_via: ArtifactVia::Tool,
            previous: Some(previous),
            revise_comment: comment,
            files: &[],
            item: None,
        }
        .render()
    }

    #[test]
    fn a_failed_attempt_of_a_revision_round_is_repaired_with_its_errors() {
        let failed = PreviousArtifact {
            round: 2,
            attempt: 1,
            content: Some("{\"oops\": true}".into()),
            valid: false,
            validation_errors: json!([{ "path": "", "message": "missing required property \"title\"" }]),
        };
        let text = envelope_for(2, &failed, Some("add a title"));
        assert!(text.contains("[REVISION REQUESTED]") && text.contains("add a title"));
        assert!(text.contains("[REPAIR ATTEMPT]") && text.contains("missing required property"));
        assert!(
            text.contains("{\"oops\": true}"),
            "the previous attempt: {text}"
        );
        // Attempt 1 of the revision round starts from the comment, not the old errors.
        let earlier_round = PreviousArtifact { round: 1, ..failed };
        let text = envelope_for(2, &earlier_round, Some("add a title"));
        assert!(
            !text.contains("[REPAIR ATTEMPT]") && !text.contains("[RETRY]"),
            "{text}"
        );
    }
}
