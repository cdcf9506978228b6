-- Index of everything the node has received.
-- Timestamps are UTC, RFC 3339 with milliseconds ("2026-11-26T14:38:23.123Z"),
-- so they sort as text. File paths are relative to storage.data_dir.

CREATE TABLE patients (
    id            INTEGER PRIMARY KEY,
    patient_id    TEXT NOT NULL UNIQUE,      -- (0010,0020); '' when absent
    patient_name  TEXT,                      -- (0010,0010), as last received
    birth_date    TEXT,                      -- (0010,0030)
    sex           TEXT,                      -- (0010,0040)
    updated_at    TEXT NOT NULL
);

CREATE TABLE studies (
    study_instance_uid  TEXT PRIMARY KEY,
    patient_pk          INTEGER NOT NULL REFERENCES patients(id),
    study_date          TEXT,
    study_time          TEXT,
    accession_number    TEXT,
    study_id            TEXT,
    description         TEXT,
    first_received_at   TEXT NOT NULL,
    last_received_at    TEXT NOT NULL        -- arrival of the latest instance
);
CREATE INDEX studies_last_received ON studies(last_received_at);
CREATE INDEX studies_patient ON studies(patient_pk);

CREATE TABLE series (
    series_instance_uid     TEXT PRIMARY KEY,
    study_instance_uid      TEXT NOT NULL REFERENCES studies(study_instance_uid),
    modality                TEXT,
    series_number           INTEGER,
    description             TEXT,
    frame_of_reference_uid  TEXT,
    first_received_at       TEXT NOT NULL,
    last_received_at        TEXT NOT NULL
);
CREATE INDEX series_study ON series(study_instance_uid);

CREATE TABLE instances (
    sop_instance_uid        TEXT PRIMARY KEY,
    series_instance_uid     TEXT NOT NULL REFERENCES series(series_instance_uid),
    study_instance_uid      TEXT NOT NULL REFERENCES studies(study_instance_uid),
    sop_class_uid           TEXT NOT NULL,
    transfer_syntax_uid     TEXT NOT NULL,
    modality                TEXT,
    instance_number         INTEGER,
    frame_of_reference_uid  TEXT,
    size_bytes              INTEGER NOT NULL,
    file_path               TEXT NOT NULL,   -- e.g. store/<study>/<series>/<sop>.dcm
    calling_ae              TEXT,            -- NULL when recovered at start-up
    called_ae               TEXT,
    peer_address            TEXT,
    received_at             TEXT NOT NULL,
    receive_count           INTEGER NOT NULL DEFAULT 1  -- > 1: re-sent and replaced
);
CREATE INDEX instances_series ON instances(series_instance_uid);
CREATE INDEX instances_study ON instances(study_instance_uid);
CREATE INDEX instances_received ON instances(received_at);

-- One row per incoming connection, accepted or not.
CREATE TABLE associations (
    id                INTEGER PRIMARY KEY,
    calling_ae        TEXT,
    called_ae         TEXT,
    peer_address      TEXT NOT NULL,
    started_at        TEXT NOT NULL,
    ended_at          TEXT,
    outcome           TEXT,   -- released, aborted, rejected: <reason>, failed: <error>
    instances_stored  INTEGER NOT NULL DEFAULT 0,
    instances_failed  INTEGER NOT NULL DEFAULT 0,
    bytes_stored      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX associations_started ON associations(started_at);

-- Arrival times of series and studies follow their instances. Kept by
-- triggers so that the receiver writes one row per instance.
CREATE TRIGGER instances_arrived_insert AFTER INSERT ON instances
BEGIN
    UPDATE series SET last_received_at = max(last_received_at, NEW.received_at)
        WHERE series_instance_uid = NEW.series_instance_uid;
    UPDATE studies SET last_received_at = max(last_received_at, NEW.received_at)
        WHERE study_instance_uid = NEW.study_instance_uid;
END;

CREATE TRIGGER instances_arrived_update AFTER UPDATE OF received_at ON instances
BEGIN
    UPDATE series SET last_received_at = max(last_received_at, NEW.received_at)
        WHERE series_instance_uid = NEW.series_instance_uid;
    UPDATE studies SET last_received_at = max(last_received_at, NEW.received_at)
        WHERE study_instance_uid = NEW.study_instance_uid;
END;

-- Old paths of re-sent instances that moved to another study or series;
-- the receiver deletes those files once the new row is committed.
CREATE TABLE superseded_files (
    sop_instance_uid  TEXT NOT NULL,
    file_path         TEXT NOT NULL
);

CREATE TRIGGER instances_moved AFTER UPDATE OF file_path ON instances
WHEN OLD.file_path <> NEW.file_path
BEGIN
    INSERT INTO superseded_files (sop_instance_uid, file_path) VALUES (OLD.sop_instance_uid, OLD.file_path);
END;
