-- Scoring jobs, their event log, the objects they produced and the
-- deliveries of those objects. Timestamps as in the store schema (UTC,
-- RFC 3339 with milliseconds, sortable as text).

-- One scoring of one study's inputs with one model.
--   queued    waiting (not before not_before)
--   running   claimed by a worker holding a lease until lease_expires_at
--   succeeded risk computed, outputs written and queued for delivery
--   failed    the study cannot be scored; error says why (not retried)
--   dead      a transient error repeated max_attempts times; error says why
CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    -- Hash of the model version and the input files' contents: the same
    -- inputs and model are never scored twice.
    input_key           TEXT NOT NULL UNIQUE,
    input_uids          TEXT NOT NULL,          -- JSON array of SOP Instance UIDs
    model_version       TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    not_before          TEXT,                   -- retry back-off
    worker              TEXT,
    lease_expires_at    TEXT,
    heartbeat_at        TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    error               TEXT,
    risk                REAL,
    sr_uid              TEXT,                   -- SOP Instance UID of the SR sent
    rtstruct_uid        TEXT,                   -- of the RT Structure Set sent
    predecessor_sr_uid  TEXT                    -- earlier SR of the same study
);
CREATE INDEX jobs_state ON jobs(state, not_before);
CREATE INDEX jobs_study ON jobs(study_instance_uid);

-- Append-only log an admin can tail (`esorisk jobs --follow`).
CREATE TABLE job_events (
    id       INTEGER PRIMARY KEY,
    job_id   INTEGER NOT NULL REFERENCES jobs(id),
    at       TEXT NOT NULL,
    event    TEXT NOT NULL,   -- queued, claimed, heartbeat-lost, retry, succeeded, failed, dead, sent, delivery-dead, requeued
    detail   TEXT
);
CREATE INDEX job_events_job ON job_events(job_id);

CREATE TRIGGER job_events_append_only_update BEFORE UPDATE ON job_events
BEGIN SELECT RAISE(ABORT, 'job_events is append-only'); END;
CREATE TRIGGER job_events_append_only_delete BEFORE DELETE ON job_events
BEGIN SELECT RAISE(ABORT, 'job_events is append-only'); END;

-- Objects esorisk wrote (under out/), fsynced before the row.
CREATE TABLE outputs (
    sop_instance_uid    TEXT PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id),
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('sr', 'rtstruct', 'sr-not-scored')),
    file_path           TEXT NOT NULL,          -- out/<study>/<sop>.dcm
    created_at          TEXT NOT NULL
);

-- One output to one destination.
--   pending  to be sent (not before next_attempt_at)
--   sent     C-STORE answered with success
--   dead     refused or unreachable max_attempts times; last_error says why
CREATE TABLE deliveries (
    id                  INTEGER PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id),
    sop_instance_uid    TEXT NOT NULL REFERENCES outputs(sop_instance_uid),
    destination         TEXT NOT NULL,          -- AE@host:port
    state               TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TEXT NOT NULL,
    last_error          TEXT,
    sent_at             TEXT,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);

-- The arrival time of a study's latest instance when the pipeline last
-- looked at it, so a stable study is examined once per change.
CREATE TABLE study_checks (
    study_instance_uid  TEXT PRIMARY KEY,
    last_received_at    TEXT NOT NULL,
    checked_at          TEXT NOT NULL,
    outcome             TEXT NOT NULL   -- queued, unchanged, incomplete: ...
);
