-- Secrets: one row per (environment, scope, name), holding only the current version, sealed
-- (AES-256-GCM under a data key of its own, which is stored wrapped by the master key). A new
-- value replaces the row's ciphertext; removing a secret deletes its row. `secure_delete` is on
-- for every connection, so freed pages are overwritten rather than left in the file.

CREATE TABLE secrets (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    environment  TEXT NOT NULL,
    scope_kind   TEXT NOT NULL CHECK (scope_kind IN ('environment', 'stack', 'service')),
    scope_name   TEXT NOT NULL,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    key_id       TEXT NOT NULL,
    wrapped_key  BLOB NOT NULL,
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_by   TEXT NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (environment, scope_kind, scope_name, name)
);

CREATE INDEX secrets_by_key ON secrets (key_id);
