-- Files a run carries: its inputs (a directory, a git repository at a ref, an upload)
-- and what its accepted phases wrote. Content is stored once per sha256, whichever run
-- or team brought it; a run's manifest names each path's content.
CREATE TABLE file_blobs (
    sha256      TEXT PRIMARY KEY,
    content     BYTEA       NOT NULL,
    size        BIGINT      NOT NULL,
    -- Not UTF-8 text without NUL: listed to the agent, never loaded as text.
    is_binary   BOOLEAN     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per path a run holds. `origin` is '' for the run's inputs, else the key of
-- the phase that wrote the file (an accepted attempt; a later round replaces it).
CREATE TABLE run_files (
    run_id      UUID        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    origin      TEXT        NOT NULL,
    path        TEXT        NOT NULL,
    sha256      TEXT        NOT NULL REFERENCES file_blobs (sha256),
    round       INT         NOT NULL DEFAULT 0,
    attempt     INT         NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, origin, path)
);
CREATE INDEX run_files_sha256_idx ON run_files (sha256);

-- Content a team uploaded over the API: a team may submit runs naming these (and only
-- these) by sha256.
CREATE TABLE team_uploads (
    team        TEXT        NOT NULL,
    sha256      TEXT        NOT NULL REFERENCES file_blobs (sha256),
    uploaded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (team, sha256)
);
CREATE INDEX team_uploads_sha256_idx ON team_uploads (sha256);

-- A phase may expect no artifact: its output is the files it writes. Its accepted
-- attempt still has an artifacts row (approvals refer to it), without path or schema.
ALTER TABLE artifacts ALTER COLUMN path DROP NOT NULL;
ALTER TABLE artifacts ALTER COLUMN schema_id DROP NOT NULL;
