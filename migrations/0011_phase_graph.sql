-- Workflows beyond a straight line (docs/adr/0013): a phase names the phases it needs,
-- and a fan-out phase runs one item per element of an earlier artifact's array.
--
-- `needs` NULL means "the phase before it by position" (every run submitted before
-- this migration, and what an earlier release still inserts during a rolling upgrade),
-- so runs in flight keep their meaning. An item row has the fan-out phase as `parent`,
-- its index and its element; it shares its parent's position, so positions are no
-- longer unique (items sort after their parent by `item_index`).
ALTER TABLE run_phases ADD COLUMN needs TEXT[];
ALTER TABLE run_phases ADD COLUMN parent TEXT;
ALTER TABLE run_phases ADD COLUMN item_index INT;
ALTER TABLE run_phases ADD COLUMN item JSONB;
ALTER TABLE run_phases DROP CONSTRAINT run_phases_run_id_position_key;
