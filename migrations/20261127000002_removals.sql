-- Studies whose rows were removed (retention, purge) and whose files are
-- being deleted. The row goes in the same transaction as the study's rows
-- and away once its files are gone: one left by a crash makes the next
-- start finish the deletion instead of indexing the files again.
CREATE TABLE removals (
    study_instance_uid  TEXT PRIMARY KEY,
    started_at          TEXT NOT NULL,
    files               TEXT NOT NULL   -- JSON array of paths relative to the data directory
);
