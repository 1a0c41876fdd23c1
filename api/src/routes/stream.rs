//! `GET /v1/runs/{id}/events/stream`: live events over Server-Sent Events. Every event
//! is read from PostgreSQL by seq; the `id:` of each SSE message is the seq, so a
//! client reconnecting with `Last-Event-ID` (or `?after=`) resumes exactly where it
//! stopped. The stream ends with an `end` message once the run has ended and every
//! event was sent.

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use phasefleet::RunId;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

/// Streams poll PostgreSQL this often even without a wake-up.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this seq (the `Last-Event-ID` header wins when both are given).
    #[param(default = 0)]
    pub after: Option<i64>,
}

/// One event as a stream sends it (the `data` of an SSE message).
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    pub seq: i64,
    pub kind: String,
    /// The phase it concerns, if any.
    pub phase: Option<String>,
    pub data: serde_json::Value,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Live events of a run (SSE). Needs the `read` role.
#[utoipa::path(get, operation_id = "stream_run_events", path = "/v1/runs/{id}/events/stream", tag = "runs",
    params(("id" = String, Path, format = Uuid), StreamQuery,
           ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "resume after this seq (wins over `after`)")),
    responses((status = 200, content_type = "text/event-stream", body = String,
               description = "Server-sent events, one message per event: `id` is its seq, `event` its kind, `data` a `StreamEvent` as JSON; after the last event of an ended run, `event: end` with `data: {}`"),
              (status = 404, body = ErrorBody, description = "no such run in the caller's team")),
    security(("bearer" = ["read"])))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Role::Read)?;
    let last = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event seq"))?,
        ),
        None => None,
    };
    let after = last.or(q.after).unwrap_or(0);
    super::runs::visible_run(&state, &caller, id).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(pump(state, id, after, tx));
    metrics::counter!("phasefleet_api_sse_streams_total").increment(1);
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// Send events after `after` until the run ends, the client goes away or the server
/// shuts down.
async fn pump(
    state: AppState,
    run: RunId,
    mut after: i64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut wake = state.bus.subscribe();
    loop {
        // 1. Read what is new, and whether the run has ended.
        match read_news(&state, run, after).await {
            Ok((events, ended)) => {
                let drained = events.len() < usize::from(PAGE);
                // End after a read that found nothing more of a run already ended: a
                // retry can take a failed run back to running between the two reads.
                let finished = ended && events.is_empty();
                // 2. Send it.
                if !send_events(&tx, events, &mut after).await {
                    return;
                }
                if finished {
                    let _ = tx.send(Ok(Event::default().event("end").data("{}"))).await;
                    return;
                }
                if !drained || ended {
                    // More to read, or an ended run to confirm with one more read.
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(run_id = %run, error = %e, "event stream: database error; retrying")
            }
        }
        // 3. Wait for a wake-up for this run or the poll interval.
        if !wait_for_news(&state, run, &tx, &mut wake).await {
            return;
        }
    }
}

/// Events read per statement.
const PAGE: u16 = 500;

/// The run's events after `after` (at most [`PAGE`]), and whether the run had ended
/// before they were read.
async fn read_news(
    state: &AppState,
    run: RunId,
    after: i64,
) -> Result<(Vec<phasefleet::events::Event>, bool), sqlx::Error> {
    let mut conn = state.pool.acquire().await?;
    // The run's state first: a run's last events commit with its end, so a run seen
    // ended here has all its events in the read below. Read the other way round, a
    // run ending in between ended the stream before its last events.
    let ended = phasefleet::store::runs::runs_get(&mut conn, run)
        .await?
        .is_none_or(|r| r.state.is_terminal());
    let events =
        phasefleet::store::events::events_list(&mut conn, run, after, i64::from(PAGE)).await?;
    Ok((events, ended))
}

/// Send `events` to the client, `after` moving to each one sent: `false` when the
/// client went away.
async fn send_events(
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    events: Vec<phasefleet::events::Event>,
    after: &mut i64,
) -> bool {
    for e in events {
        *after = e.seq;
        let msg = Event::default().id(e.seq.to_string()).event(&e.kind);
        let data = StreamEvent {
            seq: e.seq,
            kind: e.kind,
            phase: e.phase_key,
            data: e.data,
            at: e.created_at,
        };
        let msg = msg
            .json_data(&data)
            .unwrap_or_else(|_| Event::default().comment("unserializable event"));
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}

/// Wait for a wake-up for `run` or the poll interval: `false` when the client went
/// away or the server shuts down.
async fn wait_for_news(
    state: &AppState,
    run: RunId,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    wake: &mut tokio::sync::broadcast::Receiver<RunId>,
) -> bool {
    let deadline = tokio::time::sleep(POLL);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return false,
            () = tx.closed() => return false,
            () = &mut deadline => return true,
            r = wake.recv() => match r {
                Ok(r) if r == run => return true,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    *wake = state.bus.subscribe();
                    return true;
                }
            },
        }
    }
}
