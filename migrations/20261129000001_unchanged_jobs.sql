-- A job that, once scored, used exactly the inputs of the result last sent
-- for its study and gave exactly that result ends without outputs: a PACS
-- re-sending the study in another transfer syntax, or a revised RT Plan
-- arriving without its dose, must not send a second SR of the same result.
--
-- jobs.state gains
--   unchanged  scored with the same model, the same inputs used (the SOP
--              Instance UIDs of the RT Dose(s), RT Plan(s), RT Structure Set
--              and CT slices) and the same result bit for bit (risk, learned
--              ROI, the values the SR reports) as the study's last job whose
--              outputs were written, which was a success: nothing written or
--              sent; error names that job
-- and two columns, set when a job is scored:
--   used_uids      JSON array of the SOP Instance UIDs the scoring used, sorted
--   result_digest  SHA-256 (hex) of the result the SR and RT Structure Set carry
--
-- A CHECK constraint cannot be changed in place, so the table is rebuilt.
-- job_events, outputs and deliveries reference jobs, and foreign keys are on
-- (they cannot be switched off inside the migration's transaction): the
-- checks are deferred to the commit, the rows are taken out of the old
-- table before it is dropped and put into the new one after it has taken
-- the old name. Deleting a parent row counts its children as violations
-- until a row with the same key is inserted into the table they reference;
-- copying the rows before the drop and renaming after would leave them
-- counted, and the commit would fail.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE jobs_new (
    id                  INTEGER PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    input_key           TEXT NOT NULL UNIQUE,
    input_uids          TEXT NOT NULL,
    model_version       TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'unchanged', 'failed', 'dead')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    not_before          TEXT,
    worker              TEXT,
    lease_expires_at    TEXT,
    heartbeat_at        TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    error               TEXT,
    risk                REAL,
    sr_uid              TEXT,
    rtstruct_uid        TEXT,
    predecessor_sr_uid  TEXT,
    used_uids           TEXT,
    result_digest       TEXT
);

CREATE TEMP TABLE jobs_rows AS SELECT * FROM jobs;
DELETE FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
INSERT INTO jobs (id, study_instance_uid, input_key, input_uids, model_version, state,
                  attempts, max_attempts, not_before, worker, lease_expires_at, heartbeat_at,
                  created_at, started_at, finished_at, error, risk, sr_uid, rtstruct_uid,
                  predecessor_sr_uid)
    SELECT id, study_instance_uid, input_key, input_uids, model_version, state,
           attempts, max_attempts, not_before, worker, lease_expires_at, heartbeat_at,
           created_at, started_at, finished_at, error, risk, sr_uid, rtstruct_uid,
           predecessor_sr_uid FROM jobs_rows;
DROP TABLE jobs_rows;
CREATE INDEX jobs_state ON jobs(state, not_before);
CREATE INDEX jobs_study ON jobs(study_instance_uid);
