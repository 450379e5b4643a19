-- Storage commitment (PS3.4 Annex J): a job waits in state 'committing' for the archive's
-- report of the transaction it asked about; its Transaction UID is kept here, so a node
-- restarted (even after SIGKILL) takes the report when it comes, or asks again.
ALTER TABLE jobs ADD COLUMN commit_uid TEXT;
CREATE INDEX jobs_commit_uid ON jobs(commit_uid) WHERE commit_uid IS NOT NULL;
