-- The journal's queries for PostgreSQL, under the same names as sqlite.sql, in PostgreSQL's
-- own spelling. Parameters are psycopg's named ones (%(x)s); a parameter that may be NULL is
-- cast, so the server knows its type. Rows a write depends on are locked (FOR UPDATE); a claim
-- skips the rows other nodes are claiming (SKIP LOCKED), so nodes claim different jobs at once.

-- === the queue ================================================================================

-- name: job
SELECT * FROM jobs WHERE id = %(id)s

-- name: job_to_move
-- not locked: the move's UPDATE checks that the job is still as read (see move_job)
SELECT * FROM jobs WHERE id = %(id)s

-- name: latest_job_by_key
SELECT * FROM jobs WHERE key = %(key)s ORDER BY id DESC LIMIT 1 FOR UPDATE

-- name: latest_job_by_content
SELECT * FROM jobs WHERE sha256 = %(sha256)s AND destination = %(destination)s
    AND profile = %(profile)s ORDER BY id DESC LIMIT 1 FOR UPDATE

-- name: latest_job_by_source
SELECT * FROM jobs WHERE source = %(source)s ORDER BY id DESC LIMIT 1

-- name: insert_job
INSERT INTO jobs (source, sidecar, sha256, size, profile, destination, after, state, created,
                  updated, key, memory, form, priority)
VALUES (%(source)s, %(sidecar)s, %(sha256)s, %(size)s, %(profile)s, %(destination)s,
        %(after)s, %(state)s, %(now)s, %(now)s, %(key)s, %(memory)s, %(form)s::text,
        %(priority)s)
RETURNING id

-- name: move_hands
-- a move that changes only the state and who holds the job (a claim, the sending mark, a
-- recovery): the narrowest write, as the node makes two of these per job
WITH moved AS (
UPDATE jobs SET state = %(state)s, attempts = %(attempts)s, owner = %(owner)s,
    lease_until = %(lease_until)s, updated = %(updated)s
WHERE id = %(id)s AND state = %(from_state)s AND owner IS NOT DISTINCT FROM %(from_owner)s
    AND updated = %(from_updated)s
    RETURNING id)
INSERT INTO history (job_id, at, from_state, to_state, attempt, owner, detail)
SELECT id, %(updated)s, %(from_state)s, %(state)s, %(line_attempt)s::integer, %(line_owner)s::text,
    %(line_detail)s::text FROM moved

-- name: move_job
-- a move: the state and what a step records; the indexed content columns (source,
-- sha256) are not written, so their index entries are left alone. It changes the job only
-- if it is still as it was read (its state, hands and time of its last change; else no row:
-- read it again)
WITH moved AS (
UPDATE jobs SET state = %(state)s, attempts = %(attempts)s, next_attempt = %(next_attempt)s,
    last_error = %(last_error)s, error_class = %(error_class)s, alert = %(alert)s,
    series_uid = %(series_uid)s, study_uid = %(study_uid)s, instances = %(instances)s,
    delivered = %(delivered)s, quarantine_path = %(quarantine_path)s, owner = %(owner)s,
    lease_until = %(lease_until)s, commit_uid = %(commit_uid)s, updated = %(updated)s
WHERE id = %(id)s AND state = %(from_state)s AND owner IS NOT DISTINCT FROM %(from_owner)s
    AND updated = %(from_updated)s
    RETURNING id)
INSERT INTO history (job_id, at, from_state, to_state, attempt, owner, detail)
SELECT id, %(updated)s, %(from_state)s, %(state)s, %(line_attempt)s::integer, %(line_owner)s::text,
    %(line_detail)s::text FROM moved

-- name: move_job_content
-- a move that also changes what the job is made of (queued again with a new path, a
-- repaired file released from quarantine)
WITH moved AS (
UPDATE jobs SET state = %(state)s, source = %(source)s, sidecar = %(sidecar)s,
    sha256 = %(sha256)s, size = %(size)s, attempts = %(attempts)s,
    next_attempt = %(next_attempt)s, last_error = %(last_error)s, error_class = %(error_class)s,
    alert = %(alert)s, series_uid = %(series_uid)s, study_uid = %(study_uid)s,
    instances = %(instances)s, delivered = %(delivered)s, quarantine_path = %(quarantine_path)s,
    owner = %(owner)s, lease_until = %(lease_until)s, commit_uid = %(commit_uid)s,
    updated = %(updated)s
WHERE id = %(id)s AND state = %(from_state)s AND owner IS NOT DISTINCT FROM %(from_owner)s
    AND updated = %(from_updated)s
    RETURNING id)
INSERT INTO history (job_id, at, from_state, to_state, attempt, owner, detail)
SELECT id, %(updated)s, %(from_state)s, %(state)s, %(line_attempt)s::integer, %(line_owner)s::text,
    %(line_detail)s::text FROM moved

-- name: note_job
UPDATE jobs SET last_error = %(text)s, updated = %(now)s WHERE id = %(id)s

-- name: next_due
-- the most urgent, then oldest, due job of a destination that is not paused and not at its
-- cap; an urgent job goes even while its destination's schedule is closed (urgent jobs first
-- on every node sharing the journal). The partial index jobs_claim holds the waiting jobs in
-- this order: the first due entry is read, nothing is sorted
SELECT * FROM jobs WHERE state IN ('queued', 'retry-wait') AND next_attempt <= %(now)s
    AND destination NOT IN (SELECT name FROM paused)
    AND NOT (destination = ANY(%(full)s::text[]))
    AND (priority > 0 OR NOT (destination = ANY(%(closed)s::text[])))
ORDER BY priority DESC, next_attempt, id LIMIT 1 FOR UPDATE SKIP LOCKED

-- name: siblings
-- the other jobs of one file (its other destinations, routed together)
SELECT * FROM jobs WHERE source = %(source)s AND sha256 = %(sha256)s AND id <> %(id)s
ORDER BY id

-- name: renew_leases
UPDATE jobs SET lease_until = %(until)s
WHERE owner = %(owner)s AND state IN ('converting', 'sending')

-- name: active_jobs
SELECT * FROM jobs WHERE state IN ('converting', 'sending')

-- name: jobs_in_state
SELECT * FROM jobs WHERE state = %(state)s ORDER BY id

-- name: jobs_page
SELECT * FROM jobs WHERE (%(state)s::text IS NULL OR state = %(state)s::text) ORDER BY id
LIMIT %(limit)s::bigint

-- name: backlog_by_destination
-- what waits to be sent, per destination (the console's backlog)
SELECT destination, count(*) FROM jobs WHERE state IN ('queued', 'retry-wait')
GROUP BY destination

-- name: count_by_state
SELECT state, count(*) FROM jobs GROUP BY state

-- name: oldest_waiting
SELECT * FROM jobs WHERE state IN ('queued', 'retry-wait') ORDER BY created LIMIT 1

-- name: last_errors
SELECT * FROM jobs WHERE last_error IS NOT NULL ORDER BY updated DESC LIMIT %(n)s

-- name: alerts
SELECT * FROM jobs WHERE alert = 1 AND state = 'retry-wait' ORDER BY updated DESC

-- name: find_jobs
SELECT * FROM jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(destination)s::text IS NULL OR destination = %(destination)s::text)
  AND (%(text)s::text IS NULL OR strpos(source, %(text)s::text) > 0
       OR strpos(coalesce(series_uid, ''), %(text)s::text) > 0)
  AND (%(since)s::float8 IS NULL OR created >= %(since)s::float8)
  AND (%(until)s::float8 IS NULL OR created < %(until)s::float8)
ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s

-- name: count_found
SELECT count(*) FROM jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(destination)s::text IS NULL OR destination = %(destination)s::text)
  AND (%(text)s::text IS NULL OR strpos(source, %(text)s::text) > 0
       OR strpos(coalesce(series_uid, ''), %(text)s::text) > 0)
  AND (%(since)s::float8 IS NULL OR created >= %(since)s::float8)
  AND (%(until)s::float8 IS NULL OR created < %(until)s::float8)

-- name: insert_history
INSERT INTO history (job_id, at, from_state, to_state, attempt, owner, detail)
VALUES (%(job_id)s, %(at)s, %(from_state)s, %(to_state)s, %(attempt)s, %(owner)s, %(detail)s)

-- name: history
SELECT at, from_state, to_state, attempt, owner, detail FROM history
WHERE job_id = %(job_id)s ORDER BY at, id

-- name: done_since
SELECT at FROM history WHERE to_state = 'done' AND at >= %(since)s

-- name: record_instance
INSERT INTO instances (job_id, sop_instance_uid, status, outcome)
VALUES (%(job_id)s, %(uid)s, %(status)s, %(outcome)s)
ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET status = EXCLUDED.status,
    outcome = EXCLUDED.outcome

-- name: delivered_instances
SELECT sop_instance_uid FROM instances WHERE job_id = %(job_id)s
    AND outcome IN ('success', 'warning', 'duplicate', 'committed')

-- name: count_timeout
INSERT INTO instance_timeouts AS t (job_id, sop_instance_uid, count)
VALUES (%(job_id)s, %(uid)s, 1)
ON CONFLICT (job_id, sop_instance_uid) DO UPDATE SET count = t.count + 1
RETURNING count

-- === studies =================================================================================

-- name: lock_study
-- one writer per study until the commit, also while it has no row yet
SELECT pg_advisory_xact_lock(hashtext(%(study_uid)s))

-- name: study_values
SELECT study_values FROM studies WHERE study_uid = %(study_uid)s

-- name: put_study_values
INSERT INTO studies (study_uid, study_values, updated)
VALUES (%(study_uid)s, %(study_values)s, %(now)s)
ON CONFLICT (study_uid) DO UPDATE SET study_values = EXCLUDED.study_values,
    updated = EXCLUDED.updated

-- name: series_number
SELECT series_number FROM study_series
WHERE study_uid = %(study_uid)s AND series_uid = %(series_uid)s

-- name: series_numbers
SELECT series_number FROM study_series WHERE study_uid = %(study_uid)s

-- name: put_series_number
INSERT INTO study_series (study_uid, series_uid, series_number)
VALUES (%(study_uid)s, %(series_uid)s, %(number)s)
ON CONFLICT (study_uid, series_uid) DO UPDATE SET series_number = EXCLUDED.series_number

-- === destinations: paused, echoes, latest outcomes ===========================================

-- name: pause
INSERT INTO paused (name, at, who) VALUES (%(name)s, %(now)s, %(who)s)
ON CONFLICT (name) DO NOTHING

-- name: resume
DELETE FROM paused WHERE name = %(name)s

-- name: paused
SELECT name, at, who FROM paused

-- name: record_echo
INSERT INTO destinations (name, checked, ok, message, latency_ms)
VALUES (%(name)s, %(now)s, %(ok)s, %(message)s, %(latency_ms)s)
ON CONFLICT (name) DO UPDATE SET checked = EXCLUDED.checked, ok = EXCLUDED.ok,
    message = EXCLUDED.message, latency_ms = EXCLUDED.latency_ms

-- name: echo_of
SELECT ok FROM destinations WHERE name = %(name)s

-- name: echoes
SELECT name, checked, ok, message FROM destinations ORDER BY name

-- name: echo_latencies
SELECT name, latency_ms FROM destinations

-- name: last_outcomes
SELECT DISTINCT ON (destination) destination, updated, state, last_error FROM jobs
WHERE state IN ('done', 'retry-wait', 'failed') ORDER BY destination, updated DESC

-- === audit ====================================================================================

-- name: audit
INSERT INTO audit (at, who, via, action, target, result)
VALUES (%(now)s, %(who)s, %(via)s, %(action)s, %(target)s, %(result)s)

-- name: audit_log
SELECT id, at, who, via, action, target, result FROM audit ORDER BY id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- === nodes ====================================================================================

-- name: register_node
INSERT INTO nodes (owner, pid, host, version, started, heartbeat, stopped)
VALUES (%(owner)s, %(pid)s, %(host)s, %(version)s, %(now)s, %(now)s, NULL)
ON CONFLICT (owner) DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host,
    version = EXCLUDED.version, started = EXCLUDED.started, heartbeat = EXCLUDED.heartbeat,
    stopped = NULL

-- name: heartbeat
UPDATE nodes SET heartbeat = %(now)s WHERE owner = %(owner)s

-- name: node_stopped
UPDATE nodes SET stopped = %(now)s WHERE owner = %(owner)s

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
    applied DOUBLE PRECISION NOT NULL
)

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied) VALUES (%(version)s, %(name)s, %(now)s)

-- name: latest_migration
SELECT max(version) FROM schema_migrations

-- name: migration_log
SELECT version, name, applied FROM schema_migrations ORDER BY version

-- name: table_names
SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()

-- name: lock_schema
-- one migrator at a time, until the commit (several nodes may start at once)
SELECT pg_advisory_xact_lock(4711)

-- name: legacy_version
SELECT max(version) FROM schema_version

-- name: mark_version
-- the number release 0.1.0 reads: it refuses a newer journal instead of misreading it
UPDATE schema_version SET version = %(version)s

-- name: create_legacy_version
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)

-- name: insert_legacy_version
INSERT INTO schema_version (version) SELECT %(version)s
WHERE NOT EXISTS (SELECT 1 FROM schema_version)

-- name: job_by_commit_uid
SELECT * FROM jobs WHERE commit_uid = %(uid)s AND state = 'committing'

-- name: committing_due
SELECT * FROM jobs WHERE state = 'committing' AND next_attempt <= %(now)s ORDER BY id

-- name: job_instance_uids
SELECT sop_instance_uid FROM instances WHERE job_id = %(job_id)s

-- === the outbox (events for webhooks, email and audit collectors) ===========================

-- name: record_event
INSERT INTO events (at, kind, subject, outcome, detail, owner)
VALUES (%(at)s, %(kind)s, %(subject)s::text, %(outcome)s, %(detail)s::text, %(owner)s::text)

-- name: receiver
SELECT name, history_id, audit_id, event_id, delivered, dropped, last_error, updated
FROM receivers WHERE name = %(name)s

-- name: receivers
SELECT name, history_id, audit_id, event_id, delivered, dropped, last_error, updated
FROM receivers ORDER BY name

-- name: add_receiver
-- a new receiver starts at the end: it gets what happens from now on, not the past
INSERT INTO receivers (name, history_id, audit_id, event_id, updated)
VALUES (%(name)s, (SELECT coalesce(max(id), 0) FROM history),
        (SELECT coalesce(max(id), 0) FROM audit), (SELECT coalesce(max(id), 0) FROM events),
        %(now)s)
ON CONFLICT (name) DO NOTHING

-- name: advance_receiver
UPDATE receivers SET history_id = GREATEST(history_id, %(history_id)s),
    audit_id = GREATEST(audit_id, %(audit_id)s), event_id = GREATEST(event_id, %(event_id)s),
    delivered = delivered + %(delivered)s, dropped = dropped + %(dropped)s,
    last_error = %(last_error)s::text, updated = %(now)s
WHERE name = %(name)s

-- name: note_receiver
UPDATE receivers SET last_error = %(last_error)s::text, updated = %(now)s WHERE name = %(name)s

-- name: history_after
SELECT h.id, h.at, h.job_id, h.from_state, h.to_state, h.attempt, h.owner, h.detail,
    j.source, j.destination, j.profile, j.series_uid, j.study_uid, j.instances, j.delivered,
    j.error_class, j.priority, j.alert
FROM history h JOIN jobs j ON j.id = h.job_id
WHERE h.id > %(after)s AND h.at <= %(before)s ORDER BY h.id LIMIT %(limit)s

-- name: audit_after
SELECT id, at, who, via, action, target, result FROM audit
WHERE id > %(after)s AND at <= %(before)s ORDER BY id LIMIT %(limit)s

-- name: events_after
SELECT id, at, kind, subject, outcome, detail, owner FROM events
WHERE id > %(after)s AND at <= %(before)s ORDER BY id LIMIT %(limit)s

-- name: pending_counts
SELECT (SELECT count(*) FROM history WHERE id > %(history_id)s)
     + (SELECT count(*) FROM audit WHERE id > %(audit_id)s)
     + (SELECT count(*) FROM events WHERE id > %(event_id)s),
    LEAST((SELECT coalesce(min(at), 1e300) FROM history WHERE id > %(history_id)s),
        (SELECT coalesce(min(at), 1e300) FROM audit WHERE id > %(audit_id)s),
        (SELECT coalesce(min(at), 1e300) FROM events WHERE id > %(event_id)s))

-- name: id_at_or_before
-- the last id of each stream at or before a time (a receiver over its bound skips to it)
SELECT (SELECT coalesce(max(id), 0) FROM history WHERE at <= %(at)s),
       (SELECT coalesce(max(id), 0) FROM audit WHERE at <= %(at)s),
       (SELECT coalesce(max(id), 0) FROM events WHERE at <= %(at)s)

-- name: pending_time_at
-- the time of the event with "keep" newer ones waiting after it (a receiver over its count
-- bound keeps the newest)
SELECT at FROM (SELECT at FROM history WHERE id > %(history_id)s
                UNION ALL SELECT at FROM audit WHERE id > %(audit_id)s
                UNION ALL SELECT at FROM events WHERE id > %(event_id)s) AS p
ORDER BY at DESC LIMIT 1 OFFSET %(keep)s
