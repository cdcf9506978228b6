-- What the node running on this data directory started with, for
-- `esorisk status`: one row, replaced at every start. A node without a
-- risk model queues studies and scores none, which its log says once at
-- start; this row lets a monitoring check say it for as long as it lasts.
CREATE TABLE node (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    pid               INTEGER NOT NULL,
    started_at        TEXT NOT NULL,
    version           TEXT NOT NULL,     -- esorisk's version
    pipeline_enabled  INTEGER NOT NULL,  -- pipeline.enabled
    model_version     TEXT,              -- the risk model scoring; NULL: none
    model_error       TEXT               -- why none was loaded
);
