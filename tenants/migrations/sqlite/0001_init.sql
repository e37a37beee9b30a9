-- berth store, SQLite dialect. Times are unix seconds (BIGINT) so both dialects share one model.
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT,
    enabled       BOOLEAN NOT NULL DEFAULT 1,
    created_at    BIGINT  NOT NULL
);

CREATE TABLE account_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    fingerprint TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    key_line    TEXT    NOT NULL,
    comment     TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL,
    UNIQUE (account_id, fingerprint)
);

-- AUTOINCREMENT: ids are never reused, even after a row is deleted (sqlite_sequence keeps the max).
-- A live server must have an owner: removing an account that owns one fails on the CHECK.
CREATE TABLE servers (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id      INTEGER REFERENCES accounts(id) ON DELETE SET NULL,
    owner_name    TEXT    NOT NULL,
    image         TEXT,
    memory_bytes  BIGINT,
    nano_cpus     BIGINT,
    pids_limit    BIGINT,
    desired_state TEXT    NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running', 'stopped')),
    created_at    BIGINT  NOT NULL,
    deleted_at    BIGINT,
    CHECK (deleted_at IS NOT NULL OR owner_id IS NOT NULL)
);
CREATE INDEX servers_owner ON servers(owner_id);

CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        BIGINT NOT NULL,
    kind      TEXT   NOT NULL,
    server    BIGINT,
    account   TEXT,
    peer      TEXT,
    method    TEXT,
    outcome   TEXT   NOT NULL,
    detail    TEXT   NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events(at);
