-- Routing (issue 23): one job per file per destination, each in its own form. A job keeps the
-- form its route gave it (canonical JSON of iod, compression, labelmap; NULL = the
-- destination's own) and its priority (1 = urgent: claimed before any other job, and sent
-- even while its destination's schedule is closed).
ALTER TABLE jobs ADD COLUMN form TEXT;
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- the claim order itself, over the waiting jobs only: a claim reads the first entry that is
-- due instead of sorting every waiting job
CREATE INDEX jobs_claim ON jobs(priority DESC, next_attempt, id)
    WHERE state IN ('queued', 'retry-wait');
CREATE INDEX jobs_source ON jobs(source);
