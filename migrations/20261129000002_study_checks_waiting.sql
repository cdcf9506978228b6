-- 1 while the watcher holds a study back because an association that
-- stored instances of it is open (or ended less than pipeline.stable_seconds
-- ago): such a study is looked at again at every poll, not only when an
-- instance arrives, until it is stable.
ALTER TABLE study_checks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;
