-- Many hosts: the nodes that run tenants, the fronts allowed on their hop endpoints, and where
-- each server lives. A store with no node rows is a single-host store (every server is local).
CREATE TABLE nodes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    advertise  TEXT    NOT NULL DEFAULT '',
    host_key   TEXT    NOT NULL DEFAULT '',
    labels     TEXT    NOT NULL DEFAULT '{}',
    capacity   BIGINT  NOT NULL DEFAULT 0 CHECK (capacity >= 0),
    drained    BOOLEAN NOT NULL DEFAULT 0,
    last_seen  BIGINT,
    created_at BIGINT  NOT NULL
);

CREATE TABLE fronts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT   NOT NULL UNIQUE,
    key_line   TEXT   NOT NULL,
    last_seen  BIGINT,
    created_at BIGINT NOT NULL
);

-- One row per placed server (primary key: never two homes); a node with servers cannot be
-- removed (no cascade).
CREATE TABLE placements (
    server_id INTEGER PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    node_id   INTEGER NOT NULL REFERENCES nodes(id),
    placed_at BIGINT  NOT NULL
);
CREATE INDEX placements_node ON placements(node_id);
