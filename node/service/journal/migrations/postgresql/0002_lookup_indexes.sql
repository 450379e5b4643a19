-- A node's heartbeat renews the leases of the jobs it holds, and a late sidecar finds its job
-- by source path: both scanned every job the journal ever held.
CREATE INDEX jobs_owner ON jobs(owner) WHERE state IN ('converting', 'sending');
CREATE INDEX jobs_source ON jobs(source);
