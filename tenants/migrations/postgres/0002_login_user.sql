-- The login user inside the server's container (NULL: [tenants] user, else the image's default).
ALTER TABLE servers ADD COLUMN login_user TEXT;
-- Docker-in-Docker mode of the server (NULL: [tenants] dind).
ALTER TABLE servers ADD COLUMN dind_mode TEXT;
