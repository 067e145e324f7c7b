-- Demo users for the reference schema: each user gets a SIP account, a line, an
-- extension (1000 + n), a voicemail box, the user/line link, a DID (0100
-- followed by the extension: an incall in 'from-extern' answered by the user)
-- and a XiVO Client (CTI) account (login user<n>, password cti<n>).  Idempotent
-- for a given range.  Usage: psql -v first=1 -v count=200 -d asterisk -f demo-users.sql
\set ON_ERROR_STOP on
BEGIN;
CREATE TEMP TABLE demo_range AS
    SELECT n FROM generate_series(:first::int, :first::int + :count::int - 1) AS n
    WHERE NOT EXISTS (SELECT 1 FROM usersip WHERE name = 'user' || n);
INSERT INTO usersip (name, type, username, secret, context, callerid, category)
    SELECT 'user' || n, 'friend', 'user' || n, md5('secret' || n), 'default',
           '"User ' || n || '" <' || (1000 + n) || '>', 'user'
    FROM demo_range;
INSERT INTO userfeatures (uuid, firstname, lastname, callerid, language, enableclient, loginclient, passwdclient)
    SELECT md5('uuid' || n)::uuid::text, 'User', n::text, '"User ' || n || '"', 'en_US',
           1, 'user' || n, 'cti' || n
    FROM demo_range;
INSERT INTO voicemail (context, mailbox, password, fullname, user_id)
    SELECT 'default', (1000 + n)::text, (1000 + n)::text, 'User ' || n, u.id
    FROM demo_range JOIN userfeatures u ON u.uuid = md5('uuid' || n)::uuid::text;
UPDATE userfeatures u SET voicemailid = v.uniqueid
    FROM voicemail v WHERE v.user_id = u.id AND u.voicemailid IS NULL;
INSERT INTO linefeatures (protocol, protocolid, name, number, context, provisioningid)
    SELECT 'sip', s.id, s.name, (1000 + n)::text, 'default', 100000 + n
    FROM demo_range JOIN usersip s ON s.name = 'user' || n;
INSERT INTO extensions (context, exten, type, typeval)
    SELECT 'default', (1000 + n)::text, 'user', u.id::text
    FROM demo_range JOIN userfeatures u ON u.uuid = md5('uuid' || n)::uuid::text;
INSERT INTO user_line (user_id, line_id, extension_id, main_user, main_line)
    SELECT u.id, l.id, e.id, true, true
    FROM demo_range
    JOIN userfeatures u ON u.uuid = md5('uuid' || n)::uuid::text
    JOIN linefeatures l ON l.name = 'user' || n
    JOIN extensions e ON e.exten = (1000 + n)::text AND e.context = 'default';
INSERT INTO incall (exten, context, description)
    SELECT '0100' || (1000 + n), 'from-extern', 'DID of user ' || n
    FROM demo_range;
INSERT INTO extensions (context, exten, type, typeval)
    SELECT 'from-extern', i.exten, 'incall', i.id::text
    FROM demo_range JOIN incall i ON i.exten = '0100' || (1000 + n) AND i.context = 'from-extern';
INSERT INTO dialaction (event, category, categoryval, action, actionarg1, linked)
    SELECT 'answer', 'incall', i.id::text, 'user', u.id::text, 1
    FROM demo_range
    JOIN incall i ON i.exten = '0100' || (1000 + n) AND i.context = 'from-extern'
    JOIN userfeatures u ON u.uuid = md5('uuid' || n)::uuid::text;
COMMIT;
