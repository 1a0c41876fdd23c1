-- Every attempt to deliver a notification to an operator-configured webhook: which
-- delivery (the id a receiver deduplicates on), which attempt, and how it ended.
CREATE TABLE webhook_deliveries (
    id           BIGSERIAL   PRIMARY KEY,
    delivery_id  TEXT        NOT NULL,
    webhook      TEXT        NOT NULL,
    notification TEXT        NOT NULL,
    run_id       UUID        NOT NULL,
    event_seq    BIGINT      NOT NULL,
    attempt      INT         NOT NULL,
    status_code  INT,
    ok           BOOLEAN     NOT NULL,
    error        TEXT,
    duration_ms  BIGINT      NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_at_idx ON webhook_deliveries (at DESC, id DESC);
CREATE INDEX webhook_deliveries_delivery_idx ON webhook_deliveries (delivery_id);
