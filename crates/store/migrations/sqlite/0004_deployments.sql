-- Deployments: one per release or rollback; one active per service and environment. Each step
-- of one is an event with a time.

CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id    INTEGER NOT NULL REFERENCES releases(id),
    service       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT,
    created_by    TEXT NOT NULL,
    approved_by   TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
);

CREATE INDEX deployments_by_service ON deployments (service, environment, id);
CREATE INDEX deployments_unfinished ON deployments (status);

CREATE TABLE deployment_events (
    deployment_id  INTEGER NOT NULL REFERENCES deployments(id),
    seq            INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    message        TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
