-- The journal as release 0.1.0 left it (SQLite). A journal made by that release is adopted at
-- this version without running this file (migrations.py).
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    sidecar TEXT,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    profile TEXT NOT NULL,
    destination TEXT NOT NULL,
    after TEXT NOT NULL DEFAULT 'move',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    error_class TEXT,
    alert INTEGER NOT NULL DEFAULT 0,
    series_uid TEXT,
    study_uid TEXT,
    instances INTEGER,
    delivered INTEGER NOT NULL DEFAULT 0,
    quarantine_path TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    key TEXT,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    memory INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs(state, next_attempt);
CREATE INDEX jobs_identity ON jobs(sha256, destination, profile);
CREATE INDEX jobs_key ON jobs(key);
CREATE INDEX jobs_updated ON jobs(updated);
CREATE TABLE instances (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_instance_uid TEXT NOT NULL,
    status INTEGER,
    outcome TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE instance_timeouts (
    job_id INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);
CREATE TABLE history (
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
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
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    stopped REAL
);
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    study_values TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE study_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_number INTEGER,
    PRIMARY KEY (study_uid, series_uid)
);
CREATE TABLE paused (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE destinations (
    name TEXT PRIMARY KEY,
    checked REAL NOT NULL,
    ok INTEGER NOT NULL,
    message TEXT NOT NULL,
    latency_ms REAL
);
