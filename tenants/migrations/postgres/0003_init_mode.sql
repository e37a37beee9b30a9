-- What runs as PID 1 in the server's container (NULL: tini; 'systemd': systemd with its
-- privileges). Set only by the operator (`berth server create/set --init`), never from an
-- image label.
ALTER TABLE servers ADD COLUMN init_mode TEXT;
