-- The jobs table churns (every job is updated two or three times) while it may also
-- hold a long finished history. With the default scale factors, autovacuum waits for
-- 20% of the whole table to be dead, so the bigger the history, the longer dead
-- versions of claimed jobs pile up in the claim index. Vacuum after a fixed amount of
-- churn instead, whatever the table's size.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
