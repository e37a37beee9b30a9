-- Live sessions across fronts: each front process publishes its running session channels here
-- (a row per channel, byte counters batched, refreshed at most every few seconds) and marks
-- itself alive in fronts.last_seen; `berth session kill` on any host sets kill_requested_at,
-- the owning front polls for it, ends the session and removes the row. A single host with its
-- control socket never writes this table.
CREATE TABLE live_sessions (
    front             TEXT    NOT NULL REFERENCES fronts(name) ON DELETE CASCADE,
    local_id          BIGINT  NOT NULL,
    server            BIGINT  NOT NULL,
    account           TEXT    NOT NULL,
    peer              TEXT    NOT NULL,
    kind              TEXT    NOT NULL,
    started_at        BIGINT  NOT NULL,
    last_active_at    BIGINT  NOT NULL,
    bytes_in          BIGINT  NOT NULL DEFAULT 0,
    bytes_out         BIGINT  NOT NULL DEFAULT 0,
    recording         BOOLEAN NOT NULL,
    updated_at        BIGINT  NOT NULL,
    kill_requested_at BIGINT,
    kill_message      TEXT,
    PRIMARY KEY (front, local_id)
);
CREATE INDEX live_sessions_server ON live_sessions(server);
CREATE INDEX live_sessions_kill ON live_sessions(front) WHERE kill_requested_at IS NOT NULL;
