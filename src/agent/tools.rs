//! The agent's file tools over its phase workspace: ls, read_file, write_file,
//! edit_file, glob, grep. Arguments come from the model and are untrusted: bad JSON,
//! missing fields and paths outside the workspace are answered with an error message
//! the model can act on, never a panic.

use super::openai::ToolDef;
use super::workspace::{Workspace, check_relative_path};
use serde_json::{Value, json};

const MAX_OUTPUT: usize = 20_000;

/// The tool definitions sent to the model.
#[must_use]
pub fn definitions() -> Vec<ToolDef> {
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
            "Find files whose path matches a pattern (* within a segment, ** across, ?).",
            json!({ "type": "object", "properties": { "pattern": { "type": "string" } }, "required": ["pattern"], "additionalProperties": false }),
        ),
        def(
            "grep",
            "Find lines containing a text, in all files or under a path.",
            json!({ "type": "object", "properties": { "text": { "type": "string" }, "path": path }, "required": ["text"], "additionalProperties": false }),
        ),
    ]
}

/// Run one tool call. Returns (ok, output for the model).
pub fn execute(ws: &mut Workspace, name: &str, arguments: &str) -> (bool, String) {
    let args: Value = match serde_json::from_str(if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    }) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return (false, "error: arguments must be a JSON object".into()),
        Err(e) => {
            return (
                false,
                format!("error: arguments are not valid JSON ({e}); send a JSON object"),
            );
        }
    };
    let s = |k: &str| args.get(k).and_then(Value::as_str);
    let need = |k: &str| {
        s(k).map(str::to_owned)
            .ok_or_else(|| format!("error: missing string argument `{k}`"))
    };
    let result: Result<String, String> = (|| match name {
        "ls" => {
            let prefix = match s("path") {
                Some(p) if !p.is_empty() && p != "." => {
                    check_relative_path(p.trim_end_matches('/'))?;
                    format!("{}/", p.trim_end_matches('/'))
                }
                _ => String::new(),
            };
            let files: Vec<&str> = ws.paths().filter(|p| p.starts_with(&prefix)).collect();
            Ok(if files.is_empty() {
                "(no files)".into()
            } else {
                files.join("\n")
            })
        }
        "read_file" => ws.read(&need("path")?).map(str::to_owned),
        "write_file" => {
            let path = need("path")?;
            let content = need("content")?;
            ws.write(&path, content.clone())?;
            Ok(format!("wrote {} bytes to {path}", content.len()))
        }
        "edit_file" => {
            let path = need("path")?;
            let old = need("old_text")?;
            let new = need("new_text")?;
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
            let pattern = need("pattern")?;
            let hits: Vec<&str> = ws.paths().filter(|p| glob_match(&pattern, p)).collect();
            Ok(if hits.is_empty() {
                "(no match)".into()
            } else {
                hits.join("\n")
            })
        }
        "grep" => {
            let text = need("text")?;
            let prefix = s("path").unwrap_or("").to_owned();
            let mut out = Vec::new();
            for p in ws.paths().filter(|p| p.starts_with(&prefix)) {
                for (i, line) in ws.get(p).unwrap_or_default().lines().enumerate() {
                    if line.contains(text.as_str()) {
                        out.push(format!("{p}:{}: {line}", i + 1));
                    }
                }
            }
            Ok(if out.is_empty() {
                "(no match)".into()
            } else {
                out.join("\n")
            })
        }
        other => Err(format!(
            "error: unknown tool {other:?}; tools are ls, read_file, write_file, edit_file, glob, grep"
        )),
    })();
    let (ok, mut text) = match result {
        Ok(t) => (true, t),
        Err(e) if e.starts_with("error:") => (false, e),
        Err(e) => (false, format!("error: {e}")),
    };
    if text.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n… (truncated)");
    }
    (ok, text)
}

/// `*` matches within a path segment, `**` across segments, `?` one character.
#[must_use]
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => {
                let rest = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=s.len()).any(|i| go(rest, &s[i..]))
            }
            [b'*', rest @ ..] => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(rest, &s[i..])),
            [b'?', rest @ ..] => !s.is_empty() && s[0] != b'/' && go(rest, &s[1..]),
            [c, rest @ ..] => !s.is_empty() && s[0] == *c && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_work_and_refuse_bad_input() {
        let mut ws = Workspace::default();
        assert!(
            execute(
                &mut ws,
                "write_file",
                r#"{"path":"a/b.json","content":"{\"x\":1}\nsecond"}"#
            )
            .0
        );
        assert_eq!(
            execute(&mut ws, "read_file", r#"{"path":"a/b.json"}"#).1,
            "{\"x\":1}\nsecond"
        );
        assert!(
            execute(
                &mut ws,
                "edit_file",
                r#"{"path":"a/b.json","old_text":"second","new_text":"2nd"}"#
            )
            .0
        );
        assert_eq!(execute(&mut ws, "ls", "{}").1, "a/b.json");
        assert_eq!(
            execute(&mut ws, "glob", r#"{"pattern":"**/*.json"}"#).1,
            "a/b.json"
        );
        assert_eq!(
            execute(&mut ws, "grep", r#"{"text":"2nd"}"#).1,
            "a/b.json:2: 2nd"
        );
        for (name, args) in [
            ("write_file", r#"{"path":"../x","content":""}"#),
            ("write_file", r#"{"path":"/etc/passwd","content":""}"#),
            ("read_file", r#"{"path":"a/../../etc/passwd"}"#),
            ("read_file", "{not json"),
            ("read_file", "[1]"),
            ("write_file", r#"{"path":"x"}"#),
            (
                "edit_file",
                r#"{"path":"a/b.json","old_text":"nope","new_text":""}"#,
            ),
            ("rm", "{}"),
        ] {
            let (ok, out) = execute(&mut ws, name, args);
            assert!(!ok && out.starts_with("error:"), "{name} {args} -> {out}");
        }
        assert_eq!(
            ws.paths().count(),
            1,
            "nothing written outside or by failed calls"
        );
    }

    #[test]
    fn glob_semantics() {
        assert!(glob_match("*.json", "a.json"));
        assert!(!glob_match("*.json", "d/a.json"));
        assert!(glob_match("**/*.json", "d/e/a.json"));
        assert!(glob_match("**/*.json", "a.json"));
        assert!(glob_match("d/?.json", "d/a.json"));
    }
}
