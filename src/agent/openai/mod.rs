//! An OpenAI-compatible Chat Completions client with tool calling (OpenRouter, OpenAI,
//! Ollama, vLLM, llama.cpp), and the prices of models whose provider reports no cost.

mod client;
mod pricing;
mod types;

pub use client::{CallError, CallLog, CallOutcome, ChatClient, RetryPolicy};
pub use pricing::price_usd;
pub use types::{ChatRequest, ChatResponse, Message, ToolCall, ToolCallFunction, ToolDef, Usage};
