-- The W3C trace context of the span that submitted a run: its phase jobs carry it
-- across the queue so every phase attempt continues the run's one trace.
ALTER TABLE runs ADD COLUMN traceparent TEXT;
