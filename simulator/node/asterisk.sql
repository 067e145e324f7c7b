-- Reference subset of XiVO's `asterisk` database: the tables that HA touches.
-- Table and column names and types are XiVO's; columns that neither HA nor
-- the simulator use are left out (voicemail.user_id is ours: it gives the
-- replication tests a circular pair of foreign keys).
-- Load into an empty database created with UTF8 encoding:
--   createdb -E UTF8 -T template0 asterisk && psql -d asterisk -f asterisk.sql
-- Replicated to the slave: configuration (users, lines, extensions, voicemail, SIP,
-- contexts, DHCP, trunks) and the registrar's bindings (location, Kamailio's table
-- standing in for usersip's registration columns).  Excluded by default: network
-- configuration (netiface, resolvconf), support configuration (mail, monitoring),
-- provisioning, event data (queue_log, cel, call_log*, stat_*), and alembic_version
-- (compared, not copied).

BEGIN;

CREATE TABLE alembic_version (
    version_num varchar(32) PRIMARY KEY
);
INSERT INTO alembic_version VALUES ('2c1b3ad2b9d7');

CREATE TABLE context (
    name varchar(39) PRIMARY KEY,
    displayname varchar(128) NOT NULL DEFAULT '',
    entity varchar(64),
    contexttype varchar(40) NOT NULL DEFAULT 'internal',
    commented integer NOT NULL DEFAULT 0,
    description text NOT NULL DEFAULT ''
);

CREATE TABLE userfeatures (
    id serial PRIMARY KEY,
    uuid varchar(38) NOT NULL UNIQUE,
    firstname varchar(128) NOT NULL DEFAULT '',
    lastname varchar(128) NOT NULL DEFAULT '',
    email varchar(254),
    callerid varchar(160),
    language varchar(20),
    voicemailid integer,
    -- the XiVO Client (CTI) account: xivo-dao maps loginclient/passwdclient to username/password
    enableclient integer NOT NULL DEFAULT 0,
    loginclient varchar(64) NOT NULL DEFAULT '',
    passwdclient varchar(64) NOT NULL DEFAULT '',
    enablednd integer NOT NULL DEFAULT 0,
    enableunc integer NOT NULL DEFAULT 0,
    destunc varchar(128) NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    commented integer NOT NULL DEFAULT 0
);

-- voicemail <-> userfeatures: the circular pair of foreign keys.
CREATE TABLE voicemail (
    uniqueid serial PRIMARY KEY,
    context varchar(39) NOT NULL REFERENCES context (name),
    mailbox varchar(40) NOT NULL,
    password varchar(80) NOT NULL DEFAULT '',
    fullname varchar(80) NOT NULL DEFAULT '',
    email varchar(80),
    user_id integer REFERENCES userfeatures (id),
    commented integer NOT NULL DEFAULT 0,
    UNIQUE (mailbox, context)
);
ALTER TABLE userfeatures
    ADD CONSTRAINT userfeatures_voicemailid_fkey FOREIGN KEY (voicemailid) REFERENCES voicemail (uniqueid);

-- XiVO's enumerated types for the SIP tables.
CREATE TYPE trunk_protocol AS ENUM ('sip', 'iax', 'sccp', 'custom');
CREATE TYPE useriax_type AS ENUM ('friend', 'peer', 'user');
CREATE TYPE useriax_category AS ENUM ('user', 'trunk');

-- SIP accounts: phones' lines (category 'user') and SIP trunks (category 'trunk').
CREATE TABLE usersip (
    id serial PRIMARY KEY,
    name varchar(40) NOT NULL,
    type useriax_type NOT NULL,
    username varchar(80),
    secret varchar(80) NOT NULL DEFAULT '',
    md5secret varchar(32) NOT NULL DEFAULT '',
    context varchar(39) REFERENCES context (name),
    language varchar(20),
    callerid varchar(160),
    host varchar(255) NOT NULL DEFAULT 'dynamic',
    port integer,
    qualify varchar(4),
    ipaddr varchar(255) NOT NULL DEFAULT '',
    regseconds integer NOT NULL DEFAULT 0,
    lastms varchar(15) NOT NULL DEFAULT '',
    protocol trunk_protocol NOT NULL DEFAULT 'sip',
    category useriax_category NOT NULL,
    transport varchar(255),
    commented integer NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX usersip__uidx__name ON usersip (name);
CREATE INDEX usersip__idx__category ON usersip (category);

CREATE TABLE linefeatures (
    id serial PRIMARY KEY,
    protocol trunk_protocol NOT NULL,
    protocolid integer NOT NULL REFERENCES usersip (id),
    device varchar(32),
    configregistrar varchar(128),
    name varchar(128) NOT NULL UNIQUE,
    number varchar(40),
    context varchar(39) NOT NULL REFERENCES context (name),
    provisioningid integer NOT NULL,
    num integer DEFAULT 0,
    ipfrom varchar(15),
    commented integer NOT NULL DEFAULT 0,
    description text,
    UNIQUE (protocol, protocolid)
);

CREATE TYPE extenumbers_type AS ENUM ('extenfeatures', 'featuremap', 'generalfeatures', 'group', 'incall',
                                      'meetme', 'outcall', 'queue', 'user', 'voicemenu');

CREATE TABLE extensions (
    id serial PRIMARY KEY,
    commented integer NOT NULL DEFAULT 0,
    context varchar(39) NOT NULL DEFAULT '' REFERENCES context (name),
    exten varchar(40) NOT NULL DEFAULT '',
    type extenumbers_type NOT NULL,
    typeval varchar(255) NOT NULL DEFAULT '',
    UNIQUE (exten, context)
);

CREATE TABLE user_line (
    id serial,
    user_id integer REFERENCES userfeatures (id),
    line_id integer NOT NULL REFERENCES linefeatures (id),
    extension_id integer REFERENCES extensions (id),
    main_user boolean NOT NULL,
    main_line boolean NOT NULL,
    PRIMARY KEY (id, line_id),
    UNIQUE (user_id, line_id)
);

-- Asterisk sip.conf as rows: [general] options (HA forces minexpiry/maxexpiry/
-- defaultexpiry) and the trunks' `register` lines
-- (var_val `[peer?][transport://]user[@domain][:secret[:authuser]]@host[:port][/exten][~expiry]`).
-- commented = 1: the row is not written to sip.conf.
CREATE TABLE staticsip (
    id serial PRIMARY KEY,
    cat_metric integer NOT NULL DEFAULT 0,
    var_metric integer NOT NULL DEFAULT 0,
    commented integer NOT NULL DEFAULT 0,
    filename varchar(128) NOT NULL,
    category varchar(128) NOT NULL,
    var_name varchar(128) NOT NULL,
    var_val varchar(255)
);
CREATE INDEX staticsip__idx__category ON staticsip (category);

-- A trunk: its account is the row `protocolid` of the protocol's table (usersip
-- for 'sip', hence no foreign key); its registration is the staticsip row
-- `registerid` (0: none), disabled when registercommented = 1.
CREATE TABLE trunkfeatures (
    id serial PRIMARY KEY,
    protocol trunk_protocol NOT NULL,
    protocolid integer NOT NULL,
    registerid integer NOT NULL DEFAULT 0,
    registercommented integer NOT NULL DEFAULT 0,
    description text NOT NULL,
    UNIQUE (protocol, protocolid)
);
CREATE INDEX trunkfeatures__idx__registerid ON trunkfeatures (registerid);

-- The registrar's bindings: Kamailio's usrloc table (schema version 9, Kamailio
-- 5.6, /usr/share/kamailio/postgres/usrloc-create.sql; only this table and
-- the indexes its queries use).  It stands in for the realtime registration
-- columns of XiVO's usersip (ipaddr, port, regseconds, fullcontact,
-- useragent, ...), which Asterisk writes on each REGISTER.  Replicated: the
-- slave's registrar loads the rows when it starts.
CREATE TABLE location (
    id serial PRIMARY KEY,
    ruid varchar(64) NOT NULL DEFAULT '',
    username varchar(64) NOT NULL DEFAULT '',
    domain varchar(64) DEFAULT NULL,
    contact varchar(512) NOT NULL DEFAULT '',
    received varchar(128) DEFAULT NULL,
    path varchar(512) DEFAULT NULL,
    expires timestamp without time zone NOT NULL DEFAULT '2030-05-28 21:32:15',
    q real NOT NULL DEFAULT 1.0,
    callid varchar(255) NOT NULL DEFAULT 'Default-Call-ID',
    cseq integer NOT NULL DEFAULT 1,
    last_modified timestamp without time zone NOT NULL DEFAULT '2000-01-01 00:00:01',
    flags integer NOT NULL DEFAULT 0,
    cflags integer NOT NULL DEFAULT 0,
    user_agent varchar(255) NOT NULL DEFAULT '',
    socket varchar(64) DEFAULT NULL,
    methods integer DEFAULT NULL,
    instance varchar(255) DEFAULT NULL,
    reg_id integer NOT NULL DEFAULT 0,
    server_id integer NOT NULL DEFAULT 0,
    connection_id integer NOT NULL DEFAULT 0,
    keepalive integer NOT NULL DEFAULT 0,
    partition integer NOT NULL DEFAULT 0,
    CONSTRAINT location_ruid_idx UNIQUE (ruid)
);
CREATE INDEX location_account_contact_idx ON location (username, domain, contact);
CREATE INDEX location_expires_idx ON location (expires);
-- Incoming calls from trunks (XiVO's incall): the DID is an extension of type
-- 'incall' (typeval = incall.id) in the context 'from-extern'; where the call
-- goes is the incall's dialaction for the event 'answer' (category 'incall',
-- categoryval = incall.id as text), e.g. action 'user' with actionarg1 =
-- userfeatures.id as text.
CREATE TABLE incall (
    id serial PRIMARY KEY,
    exten varchar(40),
    context varchar(39),
    preprocess_subroutine varchar(39),
    commented integer NOT NULL DEFAULT 0,
    description text,
    UNIQUE (exten, context)
);
CREATE INDEX incall__idx__exten ON incall (exten);
CREATE INDEX incall__idx__context ON incall (context);

CREATE TYPE dialaction_event AS ENUM ('answer', 'noanswer', 'congestion', 'busy', 'chanunavail', 'inschedule',
                                      'outschedule', 'qwaittime', 'qwaitratio');
CREATE TYPE dialaction_category AS ENUM ('callfilter', 'group', 'incall', 'queue', 'schedule', 'user', 'outcall');
CREATE TYPE dialaction_action AS ENUM ('none', 'endcall:busy', 'endcall:congestion', 'endcall:hangup', 'user',
                                       'group', 'queue', 'meetme', 'voicemail', 'trunk', 'schedule', 'voicemenu',
                                       'extension', 'outcall', 'application:callbackdisa', 'application:disa',
                                       'application:directory', 'application:faxtomail',
                                       'application:voicemailmain', 'application:password', 'sound',
                                       'custom');

CREATE TABLE dialaction (
    event dialaction_event NOT NULL,
    category dialaction_category NOT NULL,
    categoryval varchar(128) NOT NULL DEFAULT '',
    action dialaction_action NOT NULL,
    actionarg1 varchar(255),
    actionarg2 varchar(255),
    linked integer NOT NULL DEFAULT 0,
    PRIMARY KEY (event, category, categoryval)
);
CREATE INDEX dialaction__idx__action_actionarg1 ON dialaction (action, actionarg1);

CREATE TABLE dhcp (
    id serial PRIMARY KEY,
    active integer NOT NULL DEFAULT 0,
    pool_start varchar(64) NOT NULL DEFAULT '',
    pool_end varchar(64) NOT NULL DEFAULT '',
    extra_ifaces varchar(255) NOT NULL DEFAULT ''
);

-- Excluded from replication: each node keeps its own.
CREATE TABLE netiface (
    id serial PRIMARY KEY,
    ifname varchar(64) NOT NULL UNIQUE,
    hwtypeid integer NOT NULL DEFAULT 65534,
    networktype varchar(16) NOT NULL DEFAULT 'voip',
    type varchar(8) NOT NULL DEFAULT 'iface',
    family varchar(8) NOT NULL DEFAULT 'inet',
    method varchar(8) DEFAULT 'static',
    address varchar(39),
    netmask varchar(39),
    broadcast varchar(15),
    gateway varchar(39),
    mtu integer,
    disable integer NOT NULL DEFAULT 0,
    description text
);

CREATE TABLE resolvconf (
    id serial PRIMARY KEY,
    hostname varchar(63) NOT NULL DEFAULT 'xivo',
    domain varchar(255) NOT NULL DEFAULT '',
    nameserver1 varchar(255),
    nameserver2 varchar(255),
    nameserver3 varchar(255),
    search varchar(255),
    description text
);

CREATE TABLE mail (
    id serial PRIMARY KEY,
    mydomain varchar(255) NOT NULL DEFAULT '0',
    origin varchar(255) NOT NULL DEFAULT 'xivo-clients.proformatique.com',
    relayhost varchar(255),
    fallback_relayhost varchar(255),
    canonical text NOT NULL DEFAULT ''
);

CREATE TABLE monitoring (
    id serial PRIMARY KEY,
    maintenance integer NOT NULL DEFAULT 0,
    alert_emails varchar(4096),
    dahdi_monitor_ports varchar(255),
    max_call_duration integer
);

CREATE TABLE provisioning (
    id serial PRIMARY KEY,
    net4_ip varchar(39) NOT NULL,
    net4_ip_rest varchar(39) NOT NULL,
    username varchar(32) NOT NULL,
    password varchar(32) NOT NULL,
    dhcp_integration integer NOT NULL DEFAULT 0,
    rest_port integer NOT NULL,
    http_port integer NOT NULL,
    private integer NOT NULL DEFAULT 0,
    secure integer NOT NULL DEFAULT 0
);

CREATE TABLE queue_log (
    time varchar(26) DEFAULT '',
    callid varchar(32) DEFAULT '',
    queuename varchar(50) DEFAULT '',
    agent varchar(50) DEFAULT '',
    event varchar(20) DEFAULT '',
    data1 varchar(30) DEFAULT '',
    data2 varchar(30) DEFAULT '',
    data3 varchar(30) DEFAULT '',
    data4 varchar(30) DEFAULT '',
    data5 varchar(30) DEFAULT ''
);

CREATE TABLE cel (
    id serial PRIMARY KEY,
    eventtype varchar(30) NOT NULL,
    eventtime timestamp NOT NULL,
    cid_num varchar(80) NOT NULL DEFAULT '',
    exten varchar(80) NOT NULL DEFAULT '',
    context varchar(80) NOT NULL DEFAULT '',
    uniqueid varchar(150) NOT NULL,
    linkedid varchar(150) NOT NULL
);

CREATE TABLE call_log (
    id serial PRIMARY KEY,
    date timestamptz NOT NULL,
    date_answer timestamptz,
    date_end timestamptz,
    source_name varchar(255),
    source_exten varchar(255),
    destination_exten varchar(255)
);

CREATE TABLE call_log_participant (
    uuid varchar(38) PRIMARY KEY,
    call_log_id integer NOT NULL REFERENCES call_log (id) ON DELETE CASCADE,
    user_uuid varchar(38) NOT NULL,
    role varchar(16) NOT NULL
);

CREATE TABLE stat_agent (
    id serial PRIMARY KEY,
    name varchar(128) NOT NULL
);

CREATE TABLE stat_queue (
    id serial PRIMARY KEY,
    name varchar(128) NOT NULL
);

CREATE TABLE stat_call_on_queue (
    id serial PRIMARY KEY,
    callid varchar(32) NOT NULL,
    time timestamp NOT NULL,
    stat_queue_id integer REFERENCES stat_queue (id),
    stat_agent_id integer REFERENCES stat_agent (id),
    status varchar(32) NOT NULL
);

-- Reference rows of a freshly installed node (wizard passed, HA disabled).
INSERT INTO context (name, displayname, entity, contexttype) VALUES
    ('default', 'Default', 'xivo', 'internal'),
    ('from-extern', 'Incalls', 'xivo', 'incall'),
    ('to-extern', 'Outcalls', 'xivo', 'outcall');

INSERT INTO staticsip (cat_metric, var_metric, filename, category, var_name, var_val) VALUES
    (0, 0, 'sip.conf', 'general', 'context', 'default'),
    (0, 0, 'sip.conf', 'general', 'allowguest', 'no'),
    (0, 0, 'sip.conf', 'general', 'bindport', '5060'),
    (0, 0, 'sip.conf', 'general', 'minexpiry', NULL),
    (0, 0, 'sip.conf', 'general', 'maxexpiry', NULL),
    (0, 0, 'sip.conf', 'general', 'defaultexpiry', NULL),
    (0, 0, 'sip.conf', 'general', 'registertimeout', '20');

INSERT INTO netiface (ifname, address, netmask, gateway) VALUES ('eth0', '10.0.0.1', '255.255.255.0', '10.0.0.254');
INSERT INTO resolvconf (hostname, domain, nameserver1) VALUES ('xivo', 'example.invalid', '10.0.0.254');
INSERT INTO mail (mydomain) VALUES ('example.invalid');
INSERT INTO monitoring (maintenance) VALUES (0);
INSERT INTO provisioning (net4_ip, net4_ip_rest, username, password, rest_port, http_port)
    VALUES ('10.0.0.1', '127.0.0.1', 'admin', 'admin', 8666, 8667);
INSERT INTO dhcp (active) VALUES (0);

COMMIT;
