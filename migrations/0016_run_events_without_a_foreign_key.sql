-- An event is appended only by the statement that bumps its run's next_event_seq
-- (store/events.rs: the UPDATE of the run's row, which then stays locked), so its run
-- exists whenever an event is inserted. The foreign key checked that again for every
-- inserted row, a third of the engine's phases/s in engine-bench (bench/README.md).
-- Pruning deletes a run's events in the statement that deletes the run.
ALTER TABLE run_events DROP CONSTRAINT IF EXISTS run_events_run_id_fkey;
