-- A history line gets the id PostgreSQL's always had: both engines order a job's timeline
-- by (at, id), and a copy into PostgreSQL (journal migrate --to) keeps the ids. An INTEGER
-- PRIMARY KEY is SQLite's rowid under a name: the same table, the lines' rowids kept as ids.
CREATE TABLE history_with_id (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT,
    detail TEXT
);
INSERT INTO history_with_id (id, job_id, at, from_state, to_state, attempt, owner, detail)
    SELECT rowid, job_id, at, from_state, to_state, attempt, owner, detail FROM history;
DROP TABLE history;
ALTER TABLE history_with_id RENAME TO history;
CREATE INDEX history_job ON history(job_id, at);
CREATE INDEX history_done ON history(to_state, at);
