-- The outbox (issue 25). A job's events are its history lines, written in the same statement
-- or transaction as each move; operator actions are the audit table; what is neither (a node
-- started or stopped, a destination down or back, a console login) is an event here, written
-- when it happens. Each receiver (webhook, email, audit collector) reads the three in order
-- from its own cursor, advanced only once the receiver has the event: at least once, a
-- stable id per event, and the journal is the spool while a receiver is away.
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT,
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT,
    owner TEXT
);
CREATE INDEX events_at ON events(at);
CREATE TABLE receivers (
    name TEXT PRIMARY KEY,
    history_id INTEGER NOT NULL DEFAULT 0,
    audit_id INTEGER NOT NULL DEFAULT 0,
    event_id INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated REAL NOT NULL DEFAULT 0
);
