-- Environments on request: made from templates, changed by requests (the request log, S4.3)
-- that run one at a time per account, with CIDR blocks from pools (S4.8). Runs of an
-- environment's kept root name it, and may destroy instead of apply.

CREATE TABLE environments (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL,
    product             TEXT NOT NULL,
    template            TEXT NOT NULL,
    -- The main branch commit the template was read at.
    template_commit     TEXT NOT NULL,
    -- The plinth.toml environment whose policy and secrets apply.
    policy_environment  TEXT NOT NULL,
    account             TEXT NOT NULL,
    params              TEXT NOT NULL,
    status              TEXT NOT NULL,
    reason              TEXT,
    owner               TEXT NOT NULL,
    requested_by        TEXT NOT NULL,
    fqdn                TEXT,
    services            TEXT NOT NULL DEFAULT '[]',
    cidr                TEXT,
    cidr_pool           TEXT,
    -- Terraform outputs after the last apply; sensitive values are never stored.
    outputs             TEXT NOT NULL DEFAULT '{}',
    workspace           TEXT,
    terraform           TEXT NOT NULL,
    review_branch       TEXT,
    review_slug         TEXT,
    review_head         TEXT,
    pushed_at           INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    destroyed_at        INTEGER
);

-- A name belongs to at most one environment that still exists.
CREATE UNIQUE INDEX environments_live_name ON environments (name) WHERE status NOT IN ('destroyed', 'failed');
CREATE INDEX environments_by_name ON environments (name, id);
CREATE INDEX environments_by_product ON environments (product, name);
CREATE INDEX environments_by_status ON environments (status);
CREATE INDEX environments_review ON environments (review_branch) WHERE review_branch IS NOT NULL;

-- The blocks handed out, per pool; a row goes when its environment is destroyed.
CREATE TABLE cidr_allocations (
    pool            TEXT NOT NULL,
    cidr            TEXT NOT NULL,
    environment_id  INTEGER NOT NULL REFERENCES environments(id),
    PRIMARY KEY (pool, cidr)
);

CREATE TABLE environment_requests (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    environment_id  INTEGER NOT NULL REFERENCES environments(id),
    kind            TEXT NOT NULL CHECK (kind IN ('create', 'update', 'destroy')),
    status          TEXT NOT NULL,
    account         TEXT NOT NULL,
    requested_by    TEXT NOT NULL,
    template        TEXT NOT NULL,
    params          TEXT NOT NULL,
    outcome         TEXT,
    runs            TEXT NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER
);
CREATE INDEX environment_requests_by_env ON environment_requests (environment_id, id);
CREATE INDEX environment_requests_unfinished ON environment_requests (status);

ALTER TABLE runs ADD COLUMN destroy INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN provisioned_env INTEGER REFERENCES environments(id);
