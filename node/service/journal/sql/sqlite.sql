-- The journal's queries for SQLite. Each is named (-- name: x) and called by that name from
-- the journal's Python; postgresql.sql holds the same names in PostgreSQL's own spelling.
-- Parameters are named (:x). A write runs inside BEGIN IMMEDIATE, which holds SQLite's one
-- write lock, so a row read there is locked until the commit.

-- === the queue ================================================================================

-- name: job
SELECT * FROM jobs WHERE id = :id

-- name: job_to_move
-- read inside BEGIN IMMEDIATE: nobody else writes until the commit
SELECT * FROM jobs WHERE id = :id

-- name: latest_job_by_key
SELECT * FROM jobs WHERE key = :key ORDER BY id DESC LIMIT 1

-- name: latest_job_by_content
SELECT * FROM jobs WHERE sha256 = :sha256 AND destination = :destination
    AND profile = :profile ORDER BY id DESC LIMIT 1

-- name: latest_job_by_source
SELECT * FROM jobs WHERE source = :source ORDER BY id DESC LIMIT 1

-- name: insert_job
INSERT INTO jobs (source, sidecar, sha256, size, profile, destination, after, state, created,
                  updated, key, memory, form, priority)
VALUES (:source, :sidecar, :sha256, :size, :profile, :destination, :after, :state, :now, :now,
        :key, :memory, :form, :priority)
RETURNING id

-- name: move_hands
-- a move that changes only the state and who holds the job (a claim, the sending mark, a
-- recovery): the narrowest write, as the node makes two of these per job
UPDATE jobs SET state = :state, attempts = :attempts, owner = :owner,
    lease_until = :lease_until, updated = :updated
WHERE id = :id AND state = :from_state AND owner IS :from_owner
    AND updated = :from_updated

-- name: move_job
-- a move: the state and what a step records; the indexed content columns (source,
-- sha256) are not written, so their index entries are left alone. It changes the job only
-- if it is still as it was read (its state, hands and time of its last change; else no row:
-- read it again)
UPDATE jobs SET state = :state, attempts = :attempts, next_attempt = :next_attempt,
    last_error = :last_error, error_class = :error_class, alert = :alert,
    series_uid = :series_uid, study_uid = :study_uid, instances = :instances,
    delivered = :delivered, quarantine_path = :quarantine_path, owner = :owner,
    lease_until = :lease_until, commit_uid = :commit_uid, updated = :updated
WHERE id = :id AND state = :from_state AND owner IS :from_owner
    AND updated = :from_updated

-- name: move_job_content
-- a move that also changes what the job is made of (queued again with a new path, a
-- repaired file released from quarantine)
UPDATE jobs SET state = :state, source = :source, sidecar = :sidecar,
    sha256 = :sha256, size = :size, attempts = :attempts,
    next_attempt = :next_attempt, last_error = :last_error, error_class = :error_class,
    alert = :alert, series_uid = :series_uid, study_uid = :study_uid,
    instances = :instances, delivered = :delivered, quarantine_path = :quarantine_path,
    owner = :owner, lease_until = :lease_until, commit_uid = :commit_uid, updated = :updated
WHERE id = :id AND state = :from_state AND owner IS :from_owner
    AND updated = :from_updated

-- name: note_job
UPDATE jobs SET last_error = :text, updated = :now WHERE id = :id

-- name: next_due
-- the most urgent, then oldest, due job of a destination that is not paused and not at its
-- cap (:full, a JSON list); an urgent job goes even while its destination's schedule is
-- closed (:closed, a JSON list). The partial index jobs_claim holds the waiting jobs in this
-- order: the first due entry is read, nothing is sorted. BEGIN IMMEDIATE serializes claims
SELECT * FROM jobs INDEXED BY jobs_claim WHERE state IN ('queued', 'retry-wait')
    AND next_attempt <= :now AND destination NOT IN (SELECT name FROM paused)
    AND (:full = '[]' OR destination NOT IN (SELECT value FROM json_each(:full)))
    AND (priority > 0 OR :closed = '[]'
         OR destination NOT IN (SELECT value FROM json_each(:closed)))
ORDER BY priority DESC, next_attempt, id LIMIT 1

-- name: siblings
-- the other jobs of one file (its other destinations, routed together)
SELECT * FROM jobs WHERE source = :source AND sha256 = :sha256 AND id <> :id ORDER BY id

-- name: renew_leases
UPDATE jobs SET lease_until = :until WHERE owner = :owner AND state IN ('converting', 'sending')

-- name: active_jobs
SELECT * FROM jobs WHERE state IN ('converting', 'sending')

-- name: jobs_in_state
SELECT * FROM jobs WHERE state = :state ORDER BY id

-- name: jobs_page
SELECT * FROM jobs WHERE (:state IS NULL OR state = :state) ORDER BY id
LIMIT coalesce(:limit, -1)

-- name: backlog_by_destination
-- what waits to be sent, per destination (the console's backlog)
SELECT destination, count(*) FROM jobs WHERE state IN ('queued', 'retry-wait')
GROUP BY destination

-- name: count_by_state
SELECT state, count(*) FROM jobs GROUP BY state

-- name: oldest_waiting
SELECT * FROM jobs WHERE state IN ('queued', 'retry-wait') ORDER BY created LIMIT 1

-- name: last_errors
SELECT * FROM jobs WHERE last_error IS NOT NULL ORDER BY updated DESC LIMIT :n

-- name: alerts
SELECT * FROM jobs WHERE alert = 1 AND state = 'retry-wait' ORDER BY updated DESC

-- name: find_jobs
SELECT * FROM jobs
WHERE (:state IS NULL OR state = :state)
  AND (:destination IS NULL OR destination = :destination)
  AND (:text IS NULL OR instr(source, :text) > 0 OR instr(coalesce(series_uid, ''), :text) > 0)
  AND (:since IS NULL OR created >= :since)
  AND (:until IS NULL OR created < :until)
ORDER BY id DESC LIMIT :limit OFFSET :offset

-- name: count_found
SELECT count(*) FROM jobs
WHERE (:state IS NULL OR state = :state)
  AND (:destination IS NULL OR destination = :destination)
  AND (:text IS NULL OR instr(source, :text) > 0 OR instr(coalesce(series_uid, ''), :text) > 0)
  AND (:since IS NULL OR created >= :since)
  AND (:until IS NULL OR created < :until)

-- name: insert_history
INSERT INTO history (job_id, at, from_state, to_state, attempt, owner, detail)
VALUES (:job_id, :at, :from_state, :to_state, :attempt, :owner, :detail)

-- name: history
SELECT at, from_state, to_state, attempt, owner, detail FROM history WHERE job_id = :job_id
ORDER BY at, id

-- name: done_since
SELECT at FROM history WHERE to_state = 'done' AND at >= :since

-- name: record_instance
INSERT INTO instances (job_id, sop_instance_uid, status, outcome)
VALUES (:job_id, :uid, :status, :outcome)
ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET status = excluded.status,
    outcome = excluded.outcome

-- name: delivered_instances
SELECT sop_instance_uid FROM instances WHERE job_id = :job_id
    AND outcome IN ('success', 'warning', 'duplicate', 'committed')

-- name: count_timeout
INSERT INTO instance_timeouts (job_id, sop_instance_uid, count) VALUES (:job_id, :uid, 1)
ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET count = instance_timeouts.count + 1
RETURNING count

-- === studies =================================================================================

-- name: lock_study
-- BEGIN IMMEDIATE holds the database's one write lock already
SELECT :study_uid

-- name: study_values
SELECT study_values FROM studies WHERE study_uid = :study_uid

-- name: put_study_values
INSERT INTO studies (study_uid, study_values, updated) VALUES (:study_uid, :study_values, :now)
ON CONFLICT (study_uid) DO UPDATE SET study_values = excluded.study_values,
    updated = excluded.updated

-- name: series_number
SELECT series_number FROM study_series WHERE study_uid = :study_uid AND series_uid = :series_uid

-- name: series_numbers
SELECT series_number FROM study_series WHERE study_uid = :study_uid

-- name: put_series_number
INSERT INTO study_series (study_uid, series_uid, series_number)
VALUES (:study_uid, :series_uid, :number)
ON CONFLICT (study_uid, series_uid) DO UPDATE SET series_number = excluded.series_number

-- === destinations: paused, echoes, latest outcomes ===========================================

-- name: pause
INSERT INTO paused (name, at, who) VALUES (:name, :now, :who) ON CONFLICT (name) DO NOTHING

-- name: resume
DELETE FROM paused WHERE name = :name

-- name: paused
SELECT name, at, who FROM paused

-- name: record_echo
INSERT INTO destinations (name, checked, ok, message, latency_ms)
VALUES (:name, :now, :ok, :message, :latency_ms)
ON CONFLICT (name) DO UPDATE SET checked = excluded.checked, ok = excluded.ok,
    message = excluded.message, latency_ms = excluded.latency_ms

-- name: echo_of
SELECT ok FROM destinations WHERE name = :name

-- name: echoes
SELECT name, checked, ok, message FROM destinations ORDER BY name

-- name: echo_latencies
SELECT name, latency_ms FROM destinations

-- name: last_outcomes
-- SQLite takes the bare columns from the row that holds the MAX: one pass, not n^2
SELECT destination, MAX(updated), state, last_error FROM jobs
WHERE state IN ('done', 'retry-wait', 'failed') GROUP BY destination

-- === audit ====================================================================================

-- name: audit
INSERT INTO audit (at, who, via, action, target, result)
VALUES (:now, :who, :via, :action, :target, :result)

-- name: audit_log
SELECT id, at, who, via, action, target, result FROM audit ORDER BY id DESC
LIMIT :limit OFFSET :offset

-- === nodes ====================================================================================

-- name: register_node
INSERT INTO nodes (owner, pid, host, version, started, heartbeat, stopped)
VALUES (:owner, :pid, :host, :version, :now, :now, NULL)
ON CONFLICT (owner) DO UPDATE SET pid = excluded.pid, host = excluded.host,
    version = excluded.version, started = excluded.started, heartbeat = excluded.heartbeat,
    stopped = NULL

-- name: heartbeat
UPDATE nodes SET heartbeat = :now WHERE owner = :owner

-- name: node_stopped
UPDATE nodes SET stopped = :now WHERE owner = :owner

-- name: nodes
SELECT owner, pid, host, version, started, heartbeat, stopped FROM nodes
ORDER BY heartbeat DESC

-- name: jobs_held
SELECT owner, count(*) FROM jobs WHERE state IN ('converting', 'sending') GROUP BY owner

-- === schema migrations (migrations.py) ======================================================

-- name: create_migration_log
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied REAL NOT NULL
)

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied) VALUES (:version, :name, :now)

-- name: latest_migration
SELECT max(version) FROM schema_migrations

-- name: migration_log
SELECT version, name, applied FROM schema_migrations ORDER BY version

-- name: table_names
SELECT name FROM sqlite_master WHERE type = 'table'

-- name: job_by_commit_uid
SELECT * FROM jobs WHERE commit_uid = :uid AND state = 'committing'

-- name: committing_due
SELECT * FROM jobs WHERE state = 'committing' AND next_attempt <= :now ORDER BY id

-- name: job_instance_uids
SELECT sop_instance_uid FROM instances WHERE job_id = :job_id

-- === the outbox (events for webhooks, email and audit collectors) ===========================

-- name: record_event
INSERT INTO events (at, kind, subject, outcome, detail, owner)
VALUES (:at, :kind, :subject, :outcome, :detail, :owner)

-- name: receiver
SELECT name, history_id, audit_id, event_id, delivered, dropped, last_error, updated
FROM receivers WHERE name = :name

-- name: receivers
SELECT name, history_id, audit_id, event_id, delivered, dropped, last_error, updated
FROM receivers ORDER BY name

-- name: add_receiver
-- a new receiver starts at the end: it gets what happens from now on, not the past
INSERT INTO receivers (name, history_id, audit_id, event_id, updated)
VALUES (:name, (SELECT coalesce(max(id), 0) FROM history),
        (SELECT coalesce(max(id), 0) FROM audit), (SELECT coalesce(max(id), 0) FROM events),
        :now)
ON CONFLICT (name) DO NOTHING

-- name: advance_receiver
UPDATE receivers SET history_id = max(history_id, :history_id),
    audit_id = max(audit_id, :audit_id), event_id = max(event_id, :event_id),
    delivered = delivered + :delivered, dropped = dropped + :dropped,
    last_error = :last_error, updated = :now
WHERE name = :name

-- name: note_receiver
UPDATE receivers SET last_error = :last_error, updated = :now WHERE name = :name

-- name: history_after
SELECT h.id, h.at, h.job_id, h.from_state, h.to_state, h.attempt, h.owner, h.detail,
    j.source, j.destination, j.profile, j.series_uid, j.study_uid, j.instances, j.delivered,
    j.error_class, j.priority, j.alert
FROM history h JOIN jobs j ON j.id = h.job_id
WHERE h.id > :after AND h.at <= :before ORDER BY h.id LIMIT :limit

-- name: audit_after
SELECT id, at, who, via, action, target, result FROM audit
WHERE id > :after AND at <= :before ORDER BY id LIMIT :limit

-- name: events_after
SELECT id, at, kind, subject, outcome, detail, owner FROM events
WHERE id > :after AND at <= :before ORDER BY id LIMIT :limit

-- name: pending_counts
SELECT (SELECT count(*) FROM history WHERE id > :history_id)
     + (SELECT count(*) FROM audit WHERE id > :audit_id)
     + (SELECT count(*) FROM events WHERE id > :event_id),
    min((SELECT coalesce(min(at), 1e300) FROM history WHERE id > :history_id),
        (SELECT coalesce(min(at), 1e300) FROM audit WHERE id > :audit_id),
        (SELECT coalesce(min(at), 1e300) FROM events WHERE id > :event_id))

-- name: id_at_or_before
-- the last id of each stream at or before a time (a receiver over its bound skips to it)
SELECT (SELECT coalesce(max(id), 0) FROM history WHERE at <= :at),
       (SELECT coalesce(max(id), 0) FROM audit WHERE at <= :at),
       (SELECT coalesce(max(id), 0) FROM events WHERE at <= :at)

-- name: pending_time_at
-- the time of the event with :keep newer ones waiting after it (a receiver over its count
-- bound keeps the newest :keep)
SELECT at FROM (SELECT at FROM history WHERE id > :history_id
                UNION ALL SELECT at FROM audit WHERE id > :audit_id
                UNION ALL SELECT at FROM events WHERE id > :event_id) AS p
ORDER BY at DESC LIMIT 1 OFFSET :keep
