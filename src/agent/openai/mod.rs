//! An OpenAI-compatible Chat Completions client with tool calling (OpenRouter, OpenAI,
//! Ollama, vLLM, llama.cpp), and what a call cost.

mod client;
mod pricing;
mod types;

pub use client::{
    ApiKey, BeforeSend, CallError, CallLog, CallOutcome, ChatClient, DEFAULT_MAX_RESPONSE_BYTES,
    RetryPolicy,
};
pub use pricing::{Cost, CostSource, call_cost};
pub use types::{ChatRequest, ChatResponse, Message, ToolCall, ToolCallFunction, ToolDef, Usage};
