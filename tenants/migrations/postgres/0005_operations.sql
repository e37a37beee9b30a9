-- The operator plane: per-server recording, bandwidth and session limits (NULL: follow the config) and
-- one metadata row per recorded session. A PTY session's row names its asciicast file; an exec
-- without a terminal has no file, only its command, exit and byte counts.
CREATE TABLE server_operations (
    server_id     BIGINT PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    record        BOOLEAN,
    bandwidth_bps BIGINT CHECK (bandwidth_bps IS NULL OR bandwidth_bps > 0),
    -- Seconds; 0 = no limit for this server even when the config sets one.
    idle_timeout_secs BIGINT CHECK (idle_timeout_secs IS NULL OR idle_timeout_secs >= 0),
    max_duration_secs BIGINT CHECK (max_duration_secs IS NULL OR max_duration_secs >= 0),
    -- Concurrent session channels; 0 = no limit.
    max_sessions      BIGINT CHECK (max_sessions IS NULL OR max_sessions >= 0)
);

-- An account's session limits: its idle and duration limits apply to servers that set none of
-- their own; its max_sessions caps the sessions of all its servers together.
CREATE TABLE account_operations (
    account_id        BIGINT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    idle_timeout_secs BIGINT CHECK (idle_timeout_secs IS NULL OR idle_timeout_secs >= 0),
    max_duration_secs BIGINT CHECK (max_duration_secs IS NULL OR max_duration_secs >= 0),
    max_sessions      BIGINT CHECK (max_sessions IS NULL OR max_sessions >= 0)
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
