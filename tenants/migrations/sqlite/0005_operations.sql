-- The operator plane: per-server recording and bandwidth settings (NULL: follow the config) and
-- one metadata row per recorded session. A PTY session's row names its asciicast file; an exec
-- without a terminal has no file, only its command, exit and byte counts.
CREATE TABLE server_operations (
    server_id     BIGINT PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    record        BOOLEAN,
    bandwidth_bps BIGINT CHECK (bandwidth_bps IS NULL OR bandwidth_bps > 0)
);

CREATE TABLE recordings (
    id          TEXT   PRIMARY KEY,
    server      BIGINT NOT NULL,
    account     TEXT   NOT NULL,
    peer        TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    command     TEXT,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT NOT NULL,
    file        TEXT,
    bytes       BIGINT NOT NULL DEFAULT 0,
    bytes_in    BIGINT NOT NULL DEFAULT 0,
    bytes_out   BIGINT NOT NULL DEFAULT 0,
    exit        TEXT,
    note        TEXT
);
CREATE INDEX recordings_server ON recordings(server, started_at);
CREATE INDEX recordings_started ON recordings(started_at);
