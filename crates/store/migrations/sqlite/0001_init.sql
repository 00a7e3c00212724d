-- plinth's state: commit events, runs and their logs, locks, tokens, the audit log, and the
-- branch heads seen so far. Times are milliseconds since the Unix epoch.

CREATE TABLE refs (
    branch      TEXT PRIMARY KEY,
    sha         TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    branch      TEXT,
    commit_sha  TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    -- Why the event made no runs, when it made none (no stack changed, bad config).
    note        TEXT
);

CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     INTEGER NOT NULL REFERENCES events(id),
    stack        TEXT NOT NULL,
    path         TEXT NOT NULL,
    workspace    TEXT,
    environment  TEXT,
    lock_key     TEXT NOT NULL,
    terraform    TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    branch       TEXT,
    mode         TEXT NOT NULL CHECK (mode IN ('apply', 'plan')),
    status       TEXT NOT NULL,
    wave         INTEGER NOT NULL,
    depends_on   TEXT NOT NULL DEFAULT '[]',
    created_by   TEXT NOT NULL,
    approved_by  TEXT,
    reason       TEXT,
    plan         TEXT,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX runs_by_status ON runs(status);
CREATE INDEX runs_by_lock ON runs(lock_key, id);
CREATE INDEX runs_by_stack ON runs(stack, id);

CREATE TABLE run_logs (
    run_id  INTEGER NOT NULL REFERENCES runs(id),
    seq     INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    line    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- One row per held lock: a run is planning, applying or waiting for approval, or its apply
-- was interrupted and an admin must unlock it.
CREATE TABLE locks (
    lock_key  TEXT PRIMARY KEY,
    stack     TEXT NOT NULL,
    run_id    INTEGER NOT NULL REFERENCES runs(id),
    since     INTEGER NOT NULL,
    reason    TEXT NOT NULL
);

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    roles       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked_at IS NULL;

-- Append-only: plinth never updates or deletes a row here.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    object   TEXT NOT NULL,
    result   TEXT NOT NULL,
    details  TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
