-- The SIP trunk to the simulator's carrier, as XiVO's web interface creates one:
-- a usersip account (category 'trunk', type 'peer', host = the carrier, context
-- 'from-extern' for its incoming calls), its `register` line in staticsip
-- (`user:secret@host:port/user~expiry`) and the trunkfeatures row that ties them.
-- Replaces a trunk of the same name.  Variables: name, secret, host, port,
-- expiry (seconds).  The secret is given on standard input (\set), never on a
-- command line:
--   printf '\\set name ...\n\\set secret ...\n...\n\\i trunk.sql\n' | psql -d asterisk
\set ON_ERROR_STOP on
BEGIN;
DELETE FROM staticsip WHERE id IN (
    SELECT t.registerid FROM trunkfeatures t JOIN usersip u ON u.id = t.protocolid
    WHERE t.protocol = 'sip' AND u.name = :'name');
DELETE FROM trunkfeatures WHERE protocol = 'sip' AND protocolid IN (SELECT id FROM usersip WHERE name = :'name');
DELETE FROM usersip WHERE name = :'name';
INSERT INTO usersip (name, type, username, secret, context, host, port, category)
    VALUES (:'name', 'peer', :'name', :'secret', 'from-extern', :'host', :'port', 'trunk');
INSERT INTO staticsip (cat_metric, var_metric, filename, category, var_name, var_val)
    VALUES (1, 0, 'sip.conf', 'general', 'register',
            :'name' || ':' || :'secret' || '@' || :'host' || ':' || :'port' || '/' || :'name' || '~' || :'expiry');
INSERT INTO trunkfeatures (protocol, protocolid, registerid, description)
    SELECT 'sip', u.id, currval(pg_get_serial_sequence('staticsip', 'id')), 'PSTN carrier'
    FROM usersip u WHERE u.name = :'name';
COMMIT;
