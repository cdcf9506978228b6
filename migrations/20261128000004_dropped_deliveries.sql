-- A dead delivery that its destination no longer wants (the destination
-- left pipeline.destinations, or its objects no longer include that
-- object) is dropped by `esorisk retry` instead of being sent again:
--   dropped  not sent, and not to be; last_error says why
CREATE TABLE deliveries_new (
    id                  INTEGER PRIMARY KEY,
    job_id              INTEGER NOT NULL REFERENCES jobs(id),
    sop_instance_uid    TEXT NOT NULL REFERENCES outputs(sop_instance_uid),
    destination         TEXT NOT NULL,          -- AE@host:port
    state               TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead', 'dropped')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TEXT NOT NULL,
    last_error          TEXT,
    sent_at             TEXT,
    UNIQUE (sop_instance_uid, destination)
);
INSERT INTO deliveries_new (id, job_id, sop_instance_uid, destination, state, attempts,
                            next_attempt_at, last_error, sent_at)
    SELECT id, job_id, sop_instance_uid, destination, state, attempts,
           next_attempt_at, last_error, sent_at FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
