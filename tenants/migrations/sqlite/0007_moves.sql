-- A server on its way to another node (`berth server move`): while set, fronts and nodes
-- refuse new logins to it, so nothing restarts the source copy during the transfer. Cleared
-- by the move's switch (node_id becomes the target) or its abort.
ALTER TABLE placements ADD COLUMN moving_to INTEGER NULL REFERENCES nodes(id);
