-- The journal as release 0.1.0 left it (PostgreSQL). A journal made by that release is adopted
-- at this version without running this file (migrations.py).
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    sidecar TEXT,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    profile TEXT NOT NULL,
    destination TEXT NOT NULL,
    after TEXT NOT NULL DEFAULT 'move',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT,
    error_class TEXT,
    alert INTEGER NOT NULL DEFAULT 0,
    series_uid TEXT,
    study_uid TEXT,
    instances INTEGER,
    delivered INTEGER NOT NULL DEFAULT 0,
    quarantine_path TEXT,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    key TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs(state, next_attempt);
CREATE INDEX jobs_identity ON jobs(sha256, destination, profile);
-- two nodes watching one folder enqueue a file once: one of two racing inserts fails here
CREATE UNIQUE INDEX jobs_key ON jobs(key) WHERE key IS NOT NULL
    AND state NOT IN ('failed', 'cancelled');
CREATE INDEX jobs_updated ON jobs(updated);
CREATE TABLE instances (
    job_id BIGINT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE instance_timeouts (
    job_id BIGINT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE history (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT,
    detail TEXT
);
CREATE INDEX history_job ON history(job_id, at);
CREATE INDEX history_done ON history(to_state, at);
CREATE TABLE nodes (
    owner TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL,
    stopped DOUBLE PRECISION
);
CREATE TABLE paused (
    name TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    who TEXT NOT NULL
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE destinations (
    name TEXT PRIMARY KEY,
    checked DOUBLE PRECISION NOT NULL,
    ok INTEGER NOT NULL,
    message TEXT NOT NULL,
    latency_ms DOUBLE PRECISION
);
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    study_values TEXT NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE TABLE study_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_number INTEGER,
    PRIMARY KEY (study_uid, series_uid)
);
