-- 0001: the attestations (links and layouts, the exact files) and their products' digests.
-- stored_at: microseconds since the Unix epoch, UTC. seq orders and pages (newest first).
CREATE TABLE attestations (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('link', 'layout')),
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    keyid TEXT NOT NULL,
    file_name TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('signed', 'added')),
    caller TEXT NOT NULL,
    stored_at BIGINT NOT NULL,
    content BYTEA NOT NULL
);
CREATE INDEX attestations_run ON attestations (run_id, seq);
CREATE INDEX attestations_step ON attestations (step, seq);
CREATE INDEX attestations_stored_at ON attestations (stored_at);
-- One row per product and digest algorithm: "sha256:<lowercase hex>".
CREATE TABLE products (
    digest TEXT NOT NULL,
    seq BIGINT NOT NULL REFERENCES attestations (seq) ON DELETE CASCADE,
    path TEXT NOT NULL,
    PRIMARY KEY (digest, seq, path)
);
CREATE INDEX products_seq ON products (seq);
