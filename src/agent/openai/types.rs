//! Wire types of the Chat Completions API, tolerant of what providers actually send:
//! `content` empty or null beside tool calls, several tool calls per turn, tool
//! arguments as a JSON object instead of a string, usage details optional.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    #[must_use]
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: vec![],
            tool_call_id: None,
        }
    }
    #[must_use]
    pub fn tool_result(id: &str, content: impl Into<String>) -> Self {
        Self {
            role: "tool".into(),
            content: Some(content.into()),
            tool_calls: vec![],
            tool_call_id: Some(id.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: ToolCallFunction,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallFunction {
    pub name: String,
    /// JSON text, as the model wrote it: may not parse. Servers that send an object
    /// instead of a string get it re-serialised.
    #[serde(default, deserialize_with = "arguments_text")]
    pub arguments: String,
}

fn arguments_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [Message],
    /// The tool definitions, serialized once per phase.
    pub tools: &'a serde_json::value::RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `{"type": "json_schema", ...}` when the artifact comes back as the reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// OpenRouter: include `usage.cost` in the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// OpenRouter's cost in USD.
    #[serde(default)]
    pub cost: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
}

/// Token counts a provider reports are clamped to this: no call is larger, and sums of
/// them cannot overflow.
const MAX_TOKENS_PER_CALL: i64 = 100_000_000;

fn clamp_tokens(n: i64) -> i64 {
    n.clamp(0, MAX_TOKENS_PER_CALL)
}

impl Usage {
    /// Prompt tokens, clamped to a plausible range.
    #[must_use]
    pub fn prompt(&self) -> i64 {
        clamp_tokens(self.prompt_tokens)
    }
    /// Completion tokens, clamped to a plausible range.
    #[must_use]
    pub fn completion(&self) -> i64 {
        clamp_tokens(self.completion_tokens)
    }
    #[must_use]
    pub fn cached(&self) -> i64 {
        clamp_tokens(
            self.prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        )
        .min(self.prompt())
    }
    #[must_use]
    pub fn reasoning(&self) -> i64 {
        clamp_tokens(
            self.completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_null_content_several_tool_calls_and_usage_details() {
        let body = r#"{"id":"gen-1","choices":[{"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"a","type":"function","function":{"name":"ls","arguments":"{}"}},
                          {"id":"b","type":"function","function":{"name":"write_file","arguments":"{\"path\":\"x\"}"}}]},
            "finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},
                     "completion_tokens_details":{"reasoning_tokens":2},"cost":0.0012}}"#;
        let r: ChatResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.choices[0].message.content, None);
        assert_eq!(r.choices[0].message.tool_calls.len(), 2);
        let u = r.usage.unwrap();
        assert_eq!((u.cached(), u.reasoning(), u.cost), (4, 2, Some(0.0012)));
        let empty: ChatResponse =
            serde_json::from_str(r#"{"choices":[{"message":{"role":"assistant","content":""}}]}"#)
                .unwrap();
        assert_eq!(empty.choices[0].message.content.as_deref(), Some(""));
        let object_args: ChatResponse = serde_json::from_str(
            r#"{"choices":[{"message":{"role":"assistant","content":"","tool_calls":[
                {"id":"c","function":{"name":"submit_artifact","arguments":{"a":[1]}}}]}}]}"#,
        )
        .unwrap();
        let call = &object_args.choices[0].message.tool_calls[0];
        assert_eq!(
            (call.kind.as_str(), call.function.arguments.as_str()),
            ("function", r#"{"a":[1]}"#)
        );
    }
}
