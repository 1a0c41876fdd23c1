//! The phase graph of a template: the phases each phase needs (by default the one
//! before it), fan-outs over an array in an earlier phase's artifact, and conditions on
//! an earlier phase's artifact. Checked once when a template is loaded (cycles, unknown
//! needs, fan-outs and conditions over phases that are not upstream), and read by the
//! engine when a phase is accepted (`crate::advance::schedule`).

use super::{Problem, WorkflowTemplate, problem};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Most elements a fan-out may declare (`max_items`), and most items a run's fan-outs
/// may declare in all.
pub const MAX_FAN_OUT_ITEMS: u32 = 1000;

/// One job per element of an array in an earlier phase's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOut {
    /// `<phase>#<JSON pointer>`: the array, in the artifact of a phase this one needs
    /// (`spec#/requirements`; `spec#` for an artifact that is itself an array).
    #[schema(max_length = 1024, example = "spec#/requirements")]
    pub over: String,
    /// The name the element has in each item's prompt.
    #[serde(default = "default_item_name", rename = "as")]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub as_name: String,
    /// Most elements; a longer array fails the run with an error naming the phase.
    #[serde(default = "default_max_items")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_items: u32,
}

fn default_item_name() -> String {
    "item".into()
}
fn default_max_items() -> u32 {
    100
}

impl FanOut {
    /// The phase and the JSON pointer of `over` (`None` without a `#`).
    #[must_use]
    pub fn source(&self) -> Option<(&str, &str)> {
        self.over.split_once('#')
    }

    /// The elements of the array at the pointer of `artifact`.
    ///
    /// # Errors
    /// A message naming what is wrong: no artifact, no array there, too many elements.
    pub fn items(&self, artifact: Option<&Value>) -> Result<Vec<Value>, String> {
        let (phase, pointer) = self.source().unwrap_or((self.over.as_str(), ""));
        let found = artifact
            .ok_or_else(|| format!("phase {phase} has no accepted artifact to fan out over"))?
            .pointer(pointer);
        let Some(Value::Array(items)) = found else {
            return Err(format!(
                "{} is not an array in phase {phase}'s artifact ({})",
                if pointer.is_empty() { "/" } else { pointer },
                found.map_or("absent", json_type)
            ));
        };
        if items.len() > self.max_items as usize {
            return Err(format!(
                "{} has {} elements, more than max_items ({})",
                self.over,
                items.len(),
                self.max_items
            ));
        }
        Ok(items.clone())
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A phase runs only when a value in an earlier phase's artifact is (or is not) what
/// it names; otherwise it is skipped, and the phases that need it go on without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// An upstream phase (one this phase needs, directly or through others).
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub artifact: String,
    /// A JSON pointer into its artifact (`/verdict`).
    #[schema(max_length = 1024)]
    pub pointer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    /// The value is one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 100)]
    pub one_of: Option<Vec<Value>>,
}

impl Condition {
    /// Whether the condition holds for `artifact` (the upstream phase's accepted
    /// artifact; `None` when it has none, e.g. it was skipped: only `not_equals` holds).
    #[must_use]
    pub fn holds(&self, artifact: Option<&Value>) -> bool {
        let value = artifact.and_then(|a| a.pointer(&self.pointer));
        if let Some(expected) = &self.equals {
            value == Some(expected)
        } else if let Some(unwanted) = &self.not_equals {
            value != Some(unwanted)
        } else {
            self.one_of
                .as_ref()
                .is_some_and(|set| value.is_some_and(|v| set.contains(v)))
        }
    }

    /// The condition in words, for events and errors.
    #[must_use]
    pub fn describe(&self) -> String {
        let (op, v) = match (&self.equals, &self.not_equals, &self.one_of) {
            (Some(v), _, _) => ("equals", v.to_string()),
            (_, Some(v), _) => ("not_equals", v.to_string()),
            (_, _, Some(set)) => ("in", Value::Array(set.clone()).to_string()),
            _ => ("?", String::new()),
        };
        format!("{}#{} {op} {v}", self.artifact, self.pointer)
    }
}

/// The part of a JSON Schema that describes the value at `pointer` of an instance
/// (through `properties` and `items`; `None` where the schema does not say).
#[must_use]
pub fn subschema_at<'a>(schema: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut at = schema;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match at.get("properties").and_then(|p| p.get(&token)) {
            Some(next) => next,
            None if token.parse::<usize>().is_ok() || token == "-" => at.get("items")?,
            None => return None,
        };
    }
    Some(at)
}

impl Condition {
    /// Why the condition can never hold for an artifact valid against `schema`, when
    /// the schema lists the values allowed at its pointer (`enum`, `const`).
    #[must_use]
    pub fn never_holds_under(&self, schema: &Value) -> Option<String> {
        let at = subschema_at(schema, &self.pointer)?;
        let allowed: Vec<Value> = match (at.get("enum"), at.get("const")) {
            (Some(Value::Array(values)), _) => values.clone(),
            (_, Some(value)) => vec![value.clone()],
            _ => return None,
        };
        let wanted: Vec<&Value> = match (&self.equals, &self.one_of) {
            (Some(v), _) => vec![v],
            (_, Some(set)) => set.iter().collect(),
            _ => return None,
        };
        (!wanted.iter().any(|w| allowed.contains(w))).then(|| {
            format!(
                "{} can only be one of {} there, so the condition never holds and the phase could never run",
                Value::Array(wanted.into_iter().cloned().collect()),
                Value::Array(allowed)
            )
        })
    }
}

impl FanOut {
    /// Why `over` cannot be an array in an artifact valid against `schema`, when the
    /// schema gives the type there.
    #[must_use]
    pub fn not_an_array_under(&self, schema: &Value) -> Option<String> {
        let (_, pointer) = self.source()?;
        let ty = subschema_at(schema, pointer)?.get("type")?;
        let is_array = ty == "array" || ty.as_array().is_some_and(|t| t.contains(&json!("array")));
        (!is_array).then(|| format!("{} is of type {ty} in the schema, not an array", self.over))
    }
}

impl WorkflowTemplate {
    /// The phases phase `i` needs: as declared, or the phase before it.
    #[must_use]
    pub fn needs_of(&self, i: usize) -> Vec<&str> {
        match &self.phases.get(i).and_then(|p| p.needs.as_ref()) {
            Some(needs) => needs.iter().map(String::as_str).collect(),
            None if i > 0 => vec![self.phases[i - 1].key.as_str()],
            None => Vec::new(),
        }
    }

    /// The phases in an order where each comes after everything it needs (template
    /// order where the graph allows): the positions a run stores, so that "later" means
    /// downstream (a later phase's file replaces an earlier one's at the same path).
    /// Phases of a cycle (refused at load) come last.
    #[must_use]
    pub fn topological_order(&self) -> Vec<usize> {
        let n = self.phases.len();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while order.len() < n {
            let next = (0..n).find(|&i| {
                !placed[i]
                    && self
                        .needs_of(i)
                        .iter()
                        .all(|need| self.phase(need).is_none_or(|(j, _)| placed[j]))
            });
            let Some(i) = next.or_else(|| (0..n).find(|&i| !placed[i])) else {
                break;
            };
            placed[i] = true;
            order.push(i);
        }
        order
    }

    /// Every phase `key` depends on, directly or through others.
    #[must_use]
    pub fn upstream_of(&self, key: &str) -> BTreeSet<String> {
        let index: HashMap<&str, usize> = self
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.as_str(), i))
            .collect();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = index
            .get(key)
            .map(|i| self.needs_of(*i))
            .unwrap_or_default();
        while let Some(k) = todo.pop() {
            if seen.insert(k.to_owned())
                && let Some(i) = index.get(k)
            {
                todo.extend(self.needs_of(*i));
            }
        }
        seen
    }

    /// The graph's problems: needs that name no phase (or the phase itself, or one
    /// twice), cycles, fan-outs over a phase that is not a need, conditions on a phase
    /// that is not upstream or that can never hold.
    pub(super) fn check_graph(&self) -> Result<(), Problem> {
        for i in 0..self.phases.len() {
            self.check_needs(i)?;
        }
        self.check_acyclic()?;
        for (i, p) in self.phases.iter().enumerate() {
            if let Some(f) = &p.fan_out {
                self.check_fan_out(i, f)?;
            }
            if let Some(c) = &p.when {
                self.check_condition(i, c)?;
            }
        }
        let items: u32 = self
            .phases
            .iter()
            .filter_map(|p| p.fan_out.as_ref().map(|f| f.max_items))
            .sum();
        if items > MAX_FAN_OUT_ITEMS {
            return Err(problem(
                "phases",
                format!(
                    "the fan-outs' max_items add up to {items}; a run has at most {MAX_FAN_OUT_ITEMS} items in all"
                ),
            ));
        }
        Ok(())
    }

    fn check_needs(&self, i: usize) -> Result<(), Problem> {
        let at = format!("phases[{i}].needs");
        let needs = self.needs_of(i);
        if needs.len() > 100 {
            return Err(problem(
                at,
                format!("at most 100 needs, found {}", needs.len()),
            ));
        }
        let mut seen = BTreeSet::new();
        for need in needs {
            if need == self.phases[i].key {
                return Err(problem(at, format!("phase {need:?} cannot need itself")));
            }
            if self.phase(need).is_none() {
                return Err(problem(
                    at,
                    format!(
                        "unknown phase {need:?} (phases: {:?})",
                        self.phases.iter().map(|p| &p.key).collect::<Vec<_>>()
                    ),
                ));
            }
            if !seen.insert(need) {
                return Err(problem(at, format!("{need:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// Depth-first search; a phase met again while on the path closes a cycle, which
    /// the error spells out (`a -> b -> a`).
    fn check_acyclic(&self) -> Result<(), Problem> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        fn visit(
            t: &WorkflowTemplate,
            i: usize,
            marks: &mut [Mark],
            path: &mut Vec<usize>,
        ) -> Result<(), Problem> {
            marks[i] = Mark::OnPath;
            path.push(i);
            for need in t.needs_of(i) {
                let Some((j, _)) = t.phase(need) else {
                    continue;
                };
                match marks[j] {
                    Mark::OnPath => {
                        let from = path.iter().position(|k| *k == j).unwrap_or(0);
                        let mut cycle: Vec<&str> = path[from..]
                            .iter()
                            .map(|k| t.phases[*k].key.as_str())
                            .collect();
                        cycle.push(t.phases[j].key.as_str());
                        return Err(problem(
                            format!("phases[{j}].needs"),
                            format!(
                                "cycle: {} (none of them could ever start)",
                                cycle.join(" needs ")
                            ),
                        ));
                    }
                    Mark::New => visit(t, j, marks, path)?,
                    Mark::Done => {}
                }
            }
            path.pop();
            marks[i] = Mark::Done;
            Ok(())
        }
        let mut marks = vec![Mark::New; self.phases.len()];
        for i in 0..self.phases.len() {
            if marks[i] == Mark::New {
                visit(self, i, &mut marks, &mut Vec::new())?;
            }
        }
        Ok(())
    }

    fn check_fan_out(&self, i: usize, f: &FanOut) -> Result<(), Problem> {
        let at = |f: &str| format!("phases[{i}].fan_out.{f}");
        let Some((source, pointer)) = f.source() else {
            return Err(problem(
                at("over"),
                format!(
                    "{:?} is not <phase>#<JSON pointer> (spec#/requirements)",
                    f.over
                ),
            ));
        };
        if !self.needs_of(i).contains(&source) {
            return Err(problem(
                at("over"),
                format!("fans out over phase {source:?}, which is not one of this phase's needs"),
            ));
        }
        check_pointer(&at("over"), pointer)?;
        if self
            .phase(source)
            .is_some_and(|(_, p)| p.expected_artifact.is_none())
        {
            return Err(problem(
                at("over"),
                format!("phase {source:?} has no expected_artifact to fan out over"),
            ));
        }
        if self.phases[i].expected_artifact.is_none() {
            return Err(problem(
                format!("phases[{i}].expected_artifact"),
                "a fan-out phase needs an expected_artifact: its items' artifacts are gathered into one array",
            ));
        }
        if !super::template::is_identifier(&f.as_name) {
            return Err(problem(
                at("as"),
                "names use letters, digits, '_', '-', '.'",
            ));
        }
        if !(1..=MAX_FAN_OUT_ITEMS).contains(&f.max_items) {
            return Err(problem(
                at("max_items"),
                format!("must be 1..={MAX_FAN_OUT_ITEMS}, got {}", f.max_items),
            ));
        }
        Ok(())
    }

    fn check_condition(&self, i: usize, c: &Condition) -> Result<(), Problem> {
        let at = |f: &str| format!("phases[{i}].when.{f}");
        if !self.upstream_of(&self.phases[i].key).contains(&c.artifact) {
            return Err(problem(
                at("artifact"),
                format!(
                    "phase {:?} is not upstream of this phase (only a phase it needs, directly or through others, has finished when it starts)",
                    c.artifact
                ),
            ));
        }
        if self
            .phase(&c.artifact)
            .is_some_and(|(_, p)| p.expected_artifact.is_none())
        {
            return Err(problem(
                at("artifact"),
                format!("phase {:?} has no expected_artifact to test", c.artifact),
            ));
        }
        check_pointer(&at("pointer"), &c.pointer)?;
        let given = [
            c.equals.is_some(),
            c.not_equals.is_some(),
            c.one_of.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(problem(
                format!("phases[{i}].when"),
                "give exactly one of equals, not_equals, in (to test for null, use `in: [null]`)",
            ));
        }
        match &c.one_of {
            Some(set) if set.is_empty() => Err(problem(
                at("in"),
                "an empty list never holds: the phase would be unreachable",
            )),
            Some(set) if set.len() > 100 => Err(problem(
                at("in"),
                format!("at most 100 values, found {}", set.len()),
            )),
            _ => Ok(()),
        }
    }
}

fn check_pointer(field: &str, pointer: &str) -> Result<(), Problem> {
    if !(pointer.is_empty() || pointer.starts_with('/')) || pointer.len() > 1024 {
        return Err(problem(
            field,
            format!("{pointer:?} is not a JSON pointer (empty, or starting with '/')"),
        ));
    }
    Ok(())
}
