-- Releases: what CI published for a service and environment, immutable once recorded. And the
-- services a `ci` token may publish for.

CREATE TABLE releases (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    service       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    -- JSON object: container name -> image.
    images        TEXT NOT NULL,
    commit_sha    TEXT,
    -- What picked the environment: `env`, `branch:NAME` or `tag:NAME`.
    source        TEXT NOT NULL,
    published_by  TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE INDEX releases_by_service ON releases (service, environment, id);

CREATE TRIGGER releases_are_immutable BEFORE UPDATE ON releases
BEGIN
    SELECT RAISE(ABORT, 'releases are immutable');
END;

CREATE TRIGGER releases_are_kept BEFORE DELETE ON releases
BEGIN
    SELECT RAISE(ABORT, 'releases are kept');
END;

ALTER TABLE tokens ADD COLUMN services TEXT NOT NULL DEFAULT '[]';
