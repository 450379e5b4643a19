-- PostgreSQL's history had its id from the start (0001); SQLite's gets it in this version.
COMMENT ON TABLE history IS 'one line per state change of a job, ordered by (at, id)';
