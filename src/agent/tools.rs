//! The agent's tools over its phase workspace: ls, read_file, write_file, edit_file,
//! glob, grep, and `submit_artifact` when the phase expects an artifact. Writing or
//! submitting the expected artifact validates it at once: the result says "accepted"
//! (the attempt ends) or lists every error. Arguments come from the model and are untrusted: bad JSON,
//! missing fields, NUL or control characters, over-long arguments and paths outside
//! the workspace are answered with an error message the model can act on, never a
//! panic, a database error or a retry. `glob` and `grep` run in time linear in the
//! workspace (globset and regex compile to automata; patterns are length-capped), and
//! the caller runs every tool off the async threads under a deadline.

use super::artifact::{ArtifactCheck, SUBMIT_TOOL};
use super::openai::ToolDef;
use super::workspace::{Workspace, check_relative_path};
use serde_json::{Value, json};

const MAX_OUTPUT: usize = 20_000;
/// Largest arguments text accepted (a 1 MiB file, JSON-escaped, fits).
pub const MAX_ARGUMENT_BYTES: usize = 3 * 1024 * 1024;
/// Longest glob or grep pattern.
pub const MAX_PATTERN_BYTES: usize = 1000;
const FILE_TOOLS: &[&str] = &["ls", "read_file", "write_file", "edit_file", "glob", "grep"];

/// What a tool call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The call did what it was asked (a written artifact that does not validate is
    /// still `ok`: the file was written).
    pub ok: bool,
    /// What the model reads.
    pub text: String,
    /// The expected artifact was written or submitted and is valid: the attempt ends.
    pub accepted: bool,
}

/// The tool definitions sent to the model: the file tools, and `submit_artifact` with
/// the artifact's schema as its parameters when the phase expects one (unless the
/// artifact comes back as the reply, `response_format`). Serialized once per phase:
/// every turn sends the same text, and a phase waiting on the model holds only that.
///
/// # Errors
/// Serialization errors (none for these values; typed for the caller's sake).
pub fn definitions(
    submit: Option<(&ArtifactCheck, bool)>,
) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
    static FILE_TOOLS: std::sync::LazyLock<Vec<ToolDef>> = std::sync::LazyLock::new(file_tools);
    let submit = submit.map(|(artifact, strict)| artifact.submit_tool(strict));
    let all: Vec<&ToolDef> = FILE_TOOLS.iter().chain(submit.as_ref()).collect();
    serde_json::value::to_raw_value(&all)
}

fn file_tools() -> Vec<ToolDef> {
    let def = |name: &str, description: &str, params: Value| ToolDef {
        kind: "function",
        function: json!({ "name": name, "description": description, "parameters": params }),
    };
    let path = json!({ "type": "string", "description": "path relative to the workspace root" });
    vec![
        def(
            "ls",
            "List files in the workspace (optionally under a directory).",
            json!({ "type": "object", "properties": { "path": path }, "additionalProperties": false }),
        ),
        def(
            "read_file",
            "Read a file.",
            json!({ "type": "object", "properties": { "path": path }, "required": ["path"], "additionalProperties": false }),
        ),
        def(
            "write_file",
            "Create or replace a file.",
            json!({ "type": "object", "properties": { "path": path, "content": { "type": "string" } }, "required": ["path", "content"], "additionalProperties": false }),
        ),
        def(
            "edit_file",
            "Replace exactly one occurrence of old_text with new_text in a file.",
            json!({ "type": "object", "properties": { "path": path, "old_text": { "type": "string" }, "new_text": { "type": "string" } }, "required": ["path", "old_text", "new_text"], "additionalProperties": false }),
        ),
        def(
            "glob",
            "Find files whose path matches a glob (* within a segment, ** across, ?, [abc], {a,b}).",
            json!({ "type": "object", "properties": { "pattern": { "type": "string" } }, "required": ["pattern"], "additionalProperties": false }),
        ),
        def(
            "grep",
            "Find lines matching a regular expression, in all files or under a path.",
            json!({ "type": "object", "properties": { "pattern": { "type": "string", "description": "a regular expression" }, "path": path }, "required": ["pattern"], "additionalProperties": false }),
        ),
    ]
}

/// A name or text as it may be shown back: control characters escaped, bounded.
#[must_use]
pub fn printable(s: &str, max_chars: usize) -> String {
    let escaped: String = s.chars().flat_map(char::escape_default).collect();
    if escaped.chars().count() > max_chars {
        let cut: String = escaped.chars().take(max_chars).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

fn parse_arguments(
    name: &str,
    arguments: &str,
    artifact: Option<&ArtifactCheck>,
) -> Result<Value, String> {
    let known = FILE_TOOLS.contains(&name) || (name == SUBMIT_TOOL && artifact.is_some());
    if !known {
        let mut names = FILE_TOOLS.to_vec();
        if artifact.is_some() {
            names.push(SUBMIT_TOOL);
        }
        return Err(format!(
            "error: unknown tool {}; tools are {}",
            printable(name, 64),
            names.join(", ")
        ));
    }
    if arguments.len() > MAX_ARGUMENT_BYTES {
        return Err(format!(
            "error: arguments are {} bytes; at most {MAX_ARGUMENT_BYTES}",
            arguments.len()
        ));
    }
    let text = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) if crate::validate::has_nul(&v) => {
            Err("error: arguments contain a NUL character (\\u0000); send text without it".into())
        }
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("error: arguments must be a JSON object".into()),
        Err(e) => Err(format!(
            "error: arguments are not valid JSON ({e}); send a JSON object"
        )),
    }
}

/// Run one tool call (CPU work: call it off the async threads). `artifact` is the
/// phase's expected artifact, checked whenever the call writes or submits it.
pub fn execute(
    ws: &mut Workspace,
    name: &str,
    arguments: &str,
    artifact: Option<&ArtifactCheck>,
) -> ToolOutput {
    let result = parse_arguments(name, arguments, artifact).and_then(|args| {
        if name == SUBMIT_TOOL {
            return artifact.map_or_else(
                || Err("error: this phase expects no artifact".to_owned()),
                |a| Ok(submit(ws, a, args)),
            );
        }
        let text = dispatch(ws, name, &args)?;
        let wrote = args.get("path").and_then(Value::as_str);
        Ok(match artifact {
            Some(a) if matches!(name, "write_file" | "edit_file") && wrote == Some(&a.path) => {
                check_written(ws, a, text)
            }
            _ => (text, false),
        })
    });
    let (ok, mut text, accepted) = match result {
        Ok((t, accepted)) => (true, t, accepted),
        Err(e) if e.starts_with("error:") => (false, e, false),
        Err(e) => (false, format!("error: {e}"), false),
    };
    if text.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n… (truncated)");
    }
    ToolOutput { ok, text, accepted }
}

/// `submit_artifact`: the arguments are the artifact. Written to the expected path
/// (valid or not, so the next check and a repair see the latest), then checked.
fn submit(ws: &mut Workspace, artifact: &ArtifactCheck, value: Value) -> (String, bool) {
    let verdict = artifact.check_value(&value);
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    if let Err(e) = ws.write(&artifact.path, text) {
        return (
            format!("error: the artifact could not be stored: {e}"),
            false,
        );
    }
    (verdict.message(&artifact.path), verdict.accepted())
}

/// A file tool wrote the expected artifact: check what the file now holds.
fn check_written(ws: &Workspace, artifact: &ArtifactCheck, done: String) -> (String, bool) {
    let content = ws.get(&artifact.path).unwrap_or_default();
    let verdict = artifact.check_text(content);
    (
        format!("{done}\n{}", verdict.message(&artifact.path)),
        verdict.accepted(),
    )
}

fn dispatch(ws: &mut Workspace, name: &str, args: &Value) -> Result<String, String> {
    let s = |k: &str| args.get(k).and_then(Value::as_str);
    let need = |k: &str| {
        s(k).map(str::to_owned)
            .ok_or_else(|| format!("error: missing string argument `{k}`"))
    };
    match name {
        "ls" => {
            let prefix = match s("path") {
                Some(p) if !p.is_empty() && p != "." => {
                    check_relative_path(p.trim_end_matches('/'))?;
                    format!("{}/", p.trim_end_matches('/'))
                }
                _ => String::new(),
            };
            Ok(listing(&ws.listing(&prefix), "(no files)"))
        }
        "read_file" => ws.read(&need("path")?).map(str::to_owned),
        "write_file" => {
            let path = need("path")?;
            let content = need("content")?;
            let n = content.len();
            ws.write(&path, content)?;
            Ok(format!("wrote {n} bytes to {path}"))
        }
        "edit_file" => {
            let path = need("path")?;
            let old = need("old_text")?;
            let new = need("new_text")?;
            if old.is_empty() {
                return Err("error: old_text is empty".into());
            }
            let current = ws.read(&path)?.to_owned();
            match current.matches(old.as_str()).count() {
                1 => {
                    ws.write(&path, current.replacen(old.as_str(), &new, 1))?;
                    Ok(format!("edited {path}"))
                }
                0 => Err(format!("error: old_text not found in {path}")),
                n => Err(format!(
                    "error: old_text occurs {n} times in {path}; make it unique"
                )),
            }
        }
        "glob" => {
            let matcher = glob_matcher(&need("pattern")?)?;
            let hits: Vec<&str> = ws.paths().filter(|p| matcher.is_match(p)).collect();
            Ok(listing(&hits, "(no match)"))
        }
        "grep" => grep(ws, &need("pattern")?, s("path").unwrap_or("")),
        other => Err(format!("error: unknown tool {}", printable(other, 64))),
    }
}

fn listing(items: &[impl AsRef<str>], empty: &str) -> String {
    if items.is_empty() {
        empty.into()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "error: the pattern is {} bytes; at most {MAX_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    Ok(())
}

/// A glob matcher: `*` and `?` stay within a path segment, `**` crosses segments.
///
/// # Errors
/// A message for an over-long or malformed pattern.
pub fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, String> {
    check_pattern(pattern)?;
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("error: bad glob pattern: {e}"))
}

fn grep(ws: &Workspace, pattern: &str, prefix: &str) -> Result<String, String> {
    check_pattern(pattern)?;
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1024 * 1024)
        .dfa_size_limit(1024 * 1024)
        .build()
        .map_err(|e| format!("error: bad regular expression: {e}"))?;
    let mut out = Vec::new();
    let mut bytes = 0;
    'files: for (p, content) in ws.files().filter(|(p, _)| p.starts_with(prefix)) {
        for (i, line) in content.lines().enumerate() {
            if re.is_match(line) {
                let hit = format!("{p}:{}: {line}", i + 1);
                bytes += hit.len() + 1;
                out.push(hit);
                if bytes > MAX_OUTPUT {
                    break 'files;
                }
            }
        }
    }
    Ok(if out.is_empty() {
        "(no match)".into()
    } else {
        out.join("\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(ws: &mut Workspace, name: &str, args: &str) -> (bool, String) {
        let out = execute(ws, name, args, None);
        (out.ok, out.text)
    }

    #[test]
    fn tools_work_and_refuse_bad_input() {
        let mut ws = Workspace::default();
        assert!(
            exec(
                &mut ws,
                "write_file",
                r#"{"path":"a/b.json","content":"{\"x\":1}\nsecond"}"#
            )
            .0
        );
        assert_eq!(
            exec(&mut ws, "read_file", r#"{"path":"a/b.json"}"#).1,
            "{\"x\":1}\nsecond"
        );
        assert!(
            exec(
                &mut ws,
                "edit_file",
                r#"{"path":"a/b.json","old_text":"second","new_text":"2nd"}"#
            )
            .0
        );
        assert_eq!(exec(&mut ws, "ls", "{}").1, "a/b.json");
        assert_eq!(
            exec(&mut ws, "glob", r#"{"pattern":"**/*.json"}"#).1,
            "a/b.json"
        );
        assert_eq!(
            exec(&mut ws, "grep", r#"{"pattern":"2n."}"#).1,
            "a/b.json:2: 2nd"
        );
        for (name, args) in [
            ("write_file", r#"{"path":"../x","content":""}"#),
            ("write_file", r#"{"path":"/etc/passwd","content":""}"#),
            ("read_file", r#"{"path":"a/../../etc/passwd"}"#),
            ("read_file", "{not json"),
            ("read_file", "[1]"),
            ("write_file", r#"{"path":"x"}"#),
            ("write_file", r#"{"path":"x","content":"a\u0000b"}"#),
            ("write_file\u{7}", r#"{"path":"x","content":""}"#),
            (
                "edit_file",
                r#"{"path":"a/b.json","old_text":"nope","new_text":""}"#,
            ),
            ("grep", r#"{"pattern":"(unclosed"}"#),
            ("rm", "{}"),
        ] {
            let (ok, out) = exec(&mut ws, name, args);
            assert!(!ok && out.starts_with("error:"), "{name} {args} -> {out}");
            assert!(
                !out.contains('\u{7}'),
                "control characters are escaped: {out}"
            );
        }
        assert_eq!(
            ws.paths().count(),
            1,
            "nothing written outside or by failed calls"
        );
    }

    #[test]
    fn glob_semantics() {
        let m = |p: &str, s: &str| glob_matcher(p).unwrap().is_match(s);
        assert!(m("*.json", "a.json"));
        assert!(!m("*.json", "d/a.json"));
        assert!(m("**/*.json", "d/e/a.json"));
        assert!(m("**/*.json", "a.json"));
        assert!(m("d/?.json", "d/a.json"));
    }

    #[test]
    fn backtracking_patterns_finish_at_once() {
        let mut ws = Workspace::default();
        ws.write(&"a".repeat(200), "a".repeat(100_000)).unwrap();
        // A backtracking matcher never returns from these (nextest's timeout fails it).
        let (ok, out) = exec(
            &mut ws,
            "glob",
            &json!({ "pattern": format!("{}b", "*a".repeat(30)) }).to_string(),
        );
        assert!(ok && out == "(no match)", "{out}");
        let (ok, out) = exec(
            &mut ws,
            "grep",
            &json!({ "pattern": format!("{}b", "(a*)*".repeat(10)) }).to_string(),
        );
        assert!(ok && out == "(no match)", "{out}");
        let (ok, out) = exec(
            &mut ws,
            "glob",
            &json!({ "pattern": "*".repeat(MAX_PATTERN_BYTES + 1) }).to_string(),
        );
        assert!(!ok && out.contains("at most"), "{out}");
    }
}
