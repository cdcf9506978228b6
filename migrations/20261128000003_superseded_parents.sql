-- A re-sent instance that moved to another study or series: its old file is
-- listed until a start of the node has seen it gone (the receiver removes
-- it at once, but only a start removes it durably and drops the row), and
-- the old series and study are named, so that the rows they are left
-- without instances go with the move.
ALTER TABLE superseded_files ADD COLUMN series_instance_uid TEXT;
ALTER TABLE superseded_files ADD COLUMN study_instance_uid TEXT;

DROP TRIGGER instances_moved;
CREATE TRIGGER instances_moved AFTER UPDATE OF file_path ON instances
WHEN OLD.file_path <> NEW.file_path
BEGIN
    INSERT INTO superseded_files (sop_instance_uid, file_path, series_instance_uid, study_instance_uid)
    VALUES (OLD.sop_instance_uid, OLD.file_path, OLD.series_instance_uid, OLD.study_instance_uid);
END;
