//! The invariants of ARCHITECTURE.md as queries: run after a chaos test (or by an operator via
//! `phasefleet admin check`) to prove nothing was lost or done twice. Each check
//! returns the rows that break it; an empty list means it holds.

use crate::ids::RunId;
use serde::Serialize;
use sqlx::PgConnection;

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// One check: a name and a query returning one text row per violation. `$1` is the
/// optional set of runs to look at (NULL = all), `$2` the lease grace in seconds.
const CHECKS: &[(&str, &str)] = &[
    (
        "every accepted run ends or waits on a human (an active run has a ready job or a live lease)",
        "SELECT r.id::text || ' is ' || r.state::text FROM runs r
          WHERE ($1::uuid[] IS NULL OR r.id = ANY($1)) AND r.state IN ('queued', 'running')
            AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id
                             AND (j.state = 'ready' OR (j.state = 'running' AND j.lease_expires_at > now())))",
    ),
    (
        "a run awaiting approval has a pending request (one per phase that waits)",
        "SELECT r.id::text || ' has ' || count(a.id) || ' pending requests for '
                || (SELECT count(*) FROM run_phases p WHERE p.run_id = r.id AND p.state = 'awaiting_approval')
                || ' phases awaiting approval' FROM runs r
           LEFT JOIN (approval_requests a
                      JOIN run_phases ph ON ph.run_id = a.run_id AND ph.phase_key = a.phase_key
                                        AND ph.round = a.round AND ph.state = 'awaiting_approval')
                  ON a.run_id = r.id AND a.state = 'pending'
          WHERE ($1::uuid[] IS NULL OR r.id = ANY($1)) AND r.state = 'awaiting_approval'
          GROUP BY r.id
         HAVING count(a.id) = 0 OR count(a.id) <> (SELECT count(*) FROM run_phases p
                                                    WHERE p.run_id = r.id AND p.state = 'awaiting_approval')",
    ),
    (
        "a phase starts only after every phase it needs was accepted or skipped",
        "SELECT p.run_id::text || ' phase ' || p.phase_key || ' started before its need ' || n.need || ' was done'
           FROM run_phases p
           LEFT JOIN run_phases fan ON fan.run_id = p.run_id AND fan.phase_key = p.parent
           CROSS JOIN LATERAL unnest(COALESCE(fan.needs, p.needs)) AS n(need)
           JOIN LATERAL (SELECT min(e.seq) AS seq FROM run_events e
                          WHERE e.run_id = p.run_id AND e.phase_key = p.phase_key AND e.kind = 'phase.started') s
             ON s.seq IS NOT NULL
           LEFT JOIN LATERAL (SELECT min(e.seq) AS seq FROM run_events e
                               WHERE e.run_id = p.run_id AND e.phase_key = n.need
                                 AND e.kind IN ('phase.completed', 'phase.skipped')) d ON true
          WHERE ($1::uuid[] IS NULL OR p.run_id = ANY($1)) AND (d.seq IS NULL OR d.seq > s.seq)",
    ),
    (
        "a fan-out's gathered artifact holds one element per item",
        "SELECT a.run_id::text || ' phase ' || a.phase_key || ' gathered ' || jsonb_array_length(a.content::jsonb)
                || ' elements for ' || count(i.phase_key) || ' items'
           FROM artifacts a JOIN run_phases i ON i.run_id = a.run_id AND i.parent = a.phase_key
          WHERE ($1::uuid[] IS NULL OR a.run_id = ANY($1)) AND a.attempt = 0
          GROUP BY a.id, a.run_id, a.phase_key, a.content
         HAVING jsonb_array_length(a.content::jsonb) <> count(i.phase_key)",
    ),
    (
        "no job runs without a live lease",
        "SELECT 'job ' || j.id || ' running, lease expired ' || round(EXTRACT(EPOCH FROM now() - j.lease_expires_at)) || ' s ago'
           FROM jobs j WHERE ($1::uuid[] IS NULL OR j.run_id = ANY($1)) AND j.state = 'running'
            AND j.lease_expires_at < now() - make_interval(secs => $2)",
    ),
    (
        "each phase completes at most once per round",
        "SELECT run_id::text || ' phase ' || phase_key || ' round ' || (data->>'round') || ' completed ' || count(*) || ' times'
           FROM run_events WHERE ($1::uuid[] IS NULL OR run_id = ANY($1)) AND kind = 'phase.completed'
          GROUP BY run_id, phase_key, data->>'round' HAVING count(*) > 1",
    ),
    (
        "at most one valid artifact per phase round (no phase re-run after it succeeded)",
        "SELECT run_id::text || ' phase ' || phase_key || ' round ' || round || ': ' || count(*) || ' valid artifacts'
           FROM artifacts WHERE ($1::uuid[] IS NULL OR run_id = ANY($1)) AND valid
          GROUP BY run_id, phase_key, round HAVING count(*) > 1",
    ),
    (
        "at most one approval request per phase round",
        "SELECT run_id::text || ' phase ' || phase_key || ' round ' || round || ': ' || count(*) || ' requests'
           FROM approval_requests WHERE ($1::uuid[] IS NULL OR run_id = ANY($1))
          GROUP BY run_id, phase_key, round HAVING count(*) > 1",
    ),
    (
        "event sequences are dense and the next seq follows the last",
        "SELECT r.id::text || ': ' || count(e.seq) || ' events, max seq ' || COALESCE(max(e.seq), 0) || ', next ' || r.next_event_seq
           FROM runs r LEFT JOIN run_events e ON e.run_id = r.id
          WHERE ($1::uuid[] IS NULL OR r.id = ANY($1))
          GROUP BY r.id, r.next_event_seq
         HAVING count(e.seq) <> COALESCE(max(e.seq), 0) OR r.next_event_seq <> COALESCE(max(e.seq), 0) + 1",
    ),
    (
        "every ended run has its report, in its final state",
        "SELECT r.id::text || ' ' || r.state::text || ' report ' || COALESCE(p.final_state::text, 'missing') FROM runs r
           LEFT JOIN reports p ON p.run_id = r.id
          WHERE ($1::uuid[] IS NULL OR r.id = ANY($1))
            AND r.state IN ('completed', 'failed', 'aborted', 'cancelled')
            AND (p.run_id IS NULL OR p.final_state <> r.state)",
    ),
    (
        "a completed run has every phase completed (or skipped by its condition)",
        "SELECT r.id::text || ' phase ' || p.phase_key || ' is ' || p.state::text FROM runs r
           JOIN run_phases p ON p.run_id = r.id
          WHERE ($1::uuid[] IS NULL OR r.id = ANY($1)) AND r.state = 'completed'
            AND p.state NOT IN ('completed', 'skipped')",
    ),
    (
        "no run has a job it could still execute after it ended",
        "SELECT 'job ' || j.id || ' is ' || j.state::text || ' for ended run ' || r.id FROM runs r
           JOIN jobs j ON j.run_id = r.id
          WHERE ($1::uuid[] IS NULL OR r.id = ANY($1))
            AND r.state IN ('completed', 'failed', 'aborted', 'cancelled')
            AND j.state = 'ready' AND j.run_at < now() - interval '1 minute'",
    ),
];

/// Run every check. `runs` limits them to those runs; `lease_grace_secs` is how long
/// an expired lease may wait for its rescue before it counts as a violation.
///
/// # Errors
/// Database errors.
pub async fn check(
    conn: &mut PgConnection,
    runs: Option<&[RunId]>,
    lease_grace_secs: f64,
) -> Result<Vec<Violation>, sqlx::Error> {
    let ids: Option<Vec<uuid::Uuid>> = runs.map(|r| r.iter().map(|id| id.0).collect());
    let mut out = Vec::new();
    for (invariant, sql) in CHECKS {
        let rows: Vec<(String,)> = sqlx::query_as(*sql)
            .bind(&ids)
            .bind(lease_grace_secs)
            .fetch_all(&mut *conn)
            .await?;
        out.extend(
            rows.into_iter()
                .map(|(detail,)| Violation { invariant, detail }),
        );
    }
    Ok(out)
}
