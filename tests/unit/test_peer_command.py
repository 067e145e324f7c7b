"""The HA key's forced command: which requests of the master a slave runs (pure decision)."""

from __future__ import annotations

import shlex

import pytest

from xivo_ha import peer_command, sync

SLAVE = peer_command.Allowed(
    "/", ("/etc/asterisk/extensions_extra.d", "/var/lib/asterisk/agi-bin"),
    ("/var/spool/asterisk/voicemail", "/var/spool/asterisk/monitor"),
)
ROOTED = peer_command.Allowed("/srv/slave", SLAVE.directories, SLAVE.failback)
# What rsync 3.2.7 and 3.5 send to the other side for xivo-sync's push and failback.
RECEIVE = "rsync --server -logDtpre.iLsfxCIvu --log-format=%i --timeout=30 --delete-after --mkpath . "
SEND = "rsync --server --sender -lDtrRe.iLsfxCIvu --timeout=30 --ignore-missing-args --no-implied-dirs . "

ALLOWED = [
    ("true", "true", SLAVE),
    ("xivo-ha doctor --facts", "xivo-ha", SLAVE),
    ("xivo-ha status --json", "xivo-ha", SLAVE),
    ("xivo-ha --version", "xivo-ha", SLAVE),
    ("/usr/bin/xivo-ha status --json", "xivo-ha", SLAVE),
    (RECEIVE + "/etc/asterisk/extensions_extra.d/", "receive", SLAVE),
    (RECEIVE + "/var/lib/asterisk/agi-bin", "receive", SLAVE),
    ("rsync --server -logDtpre.iLsfxCIvu --timeout=30 --delete-after . /etc/asterisk/extensions_extra.d/",
     "receive", SLAVE),
    (RECEIVE + "/srv/slave/etc/asterisk/extensions_extra.d/", "receive", ROOTED),
    (SEND + "/./var/spool/asterisk/voicemail /./var/spool/asterisk/monitor", "send", SLAVE),
    (SEND + "/srv/slave/./var/spool/asterisk/monitor", "send", ROOTED),
]

REFUSED = [
    ("", "is not a command the master runs", SLAVE),
    ("id", "is not a command the master runs", SLAVE),
    ("true; id", "is not a command the master runs", SLAVE),
    ("sh -c true", "is not a command the master runs", SLAVE),
    ("xivo-ha enable master 10.0.0.1", "is not a command the master runs", SLAVE),
    ("xivo-ha doctor --facts --json", "is not a command the master runs", SLAVE),
    ("/tmp/xivo-ha status --json", "is not a command the master runs", SLAVE),
    ("scp -t /etc/passwd", "is not a command the master runs", SLAVE),
    ("/usr/bin/rsync --server . /etc/asterisk/extensions_extra.d/", "is not a command the master runs", SLAVE),
    # a receive anywhere but into one configured directory
    (RECEIVE + "/etc/", "not one of this slave's [sync] directories", SLAVE),
    (RECEIVE + "/etc/asterisk/extensions_extra.d/sub/", "not one of this slave's [sync] directories", SLAVE),
    (RECEIVE + "/etc/asterisk/extensions_extra.d/../../passwd", "not a normalised absolute path", SLAVE),
    (RECEIVE + "/etc/asterisk/./extensions_extra.d/", "not a normalised absolute path", SLAVE),
    (RECEIVE + "etc/asterisk/extensions_extra.d/", "not a normalised absolute path", SLAVE),
    (RECEIVE + "/etc/asterisk/extensions_extra.d/", "not one of this slave's [sync] directories", ROOTED),
    (RECEIVE + "/etc/asterisk/extensions_extra.d /var/lib/asterisk/agi-bin", "more than one path", SLAVE),
    (RECEIVE.replace(" . ", " "), "not an rsync server request", SLAVE),
    (RECEIVE + "", "without a path", SLAVE),
    # options that write elsewhere, follow links or change owners
    ("rsync --server -logDtpre.iLsfxCIvu --backup-dir=/tmp . /etc/asterisk/extensions_extra.d/",
     "--backup-dir=/tmp is not allowed", SLAVE),
    ("rsync --server -logDtpre.iLsfxCIvu --temp-dir=/etc . /etc/asterisk/extensions_extra.d/",
     "--temp-dir=/etc is not allowed", SLAVE),
    ("rsync --server -logDtpre.iLsfxCIvu --link-dest=/etc . /etc/asterisk/extensions_extra.d/",
     "--link-dest=/etc is not allowed", SLAVE),
    ("rsync --server -KlogDtpre.iLsfxCIvu . /etc/asterisk/extensions_extra.d/", "-K (in", SLAVE),
    ("rsync --server -Llogtpre.iLsfxCIvu . /etc/asterisk/extensions_extra.d/", "-L (in", SLAVE),
    ("rsync --server -logDtpRre.iLsfxCIvu . /etc/asterisk/extensions_extra.d/", "-R (in", SLAVE),
    ("rsync --server -logDtpre.iLs/fx . /etc/asterisk/extensions_extra.d/", "is not allowed", SLAVE),
    ("rsync --server -logDtpr --timeout=x . /etc/asterisk/extensions_extra.d/", "--timeout=x is not allowed", SLAVE),
    ("rsync --server -logDtpr --chown=0:0 . /etc/asterisk/extensions_extra.d/", "--chown=0:0 is not allowed", SLAVE),
    ("rsync --server -logDtpr extra . /etc/asterisk/extensions_extra.d/", "'extra' is not an option", SLAVE),
    # the failback pull: only the failback directories, read without deleting or writing on the slave
    (SEND + "/./etc/shadow", "not one of this slave's [sync] failback_directories", SLAVE),
    (SEND + "/./var/spool/asterisk/monitor/../../../etc", "not /./<directory>", SLAVE),
    (SEND + "/var/spool/asterisk/monitor", "not /./<directory>", SLAVE),
    (SEND + "/./var/spool/asterisk/monitor/", "not /./<directory>", SLAVE),
    (SEND + "/./var/spool/asterisk", "not one of this slave's [sync] failback_directories", SLAVE),
    (SEND + "/./var/spool/asterisk/monitor /./root/.ssh", "not one of this slave's [sync] failback_directories",
     SLAVE),
    (SEND.replace("--sender", "--sender --remove-source-files") + "/./var/spool/asterisk/monitor",
     "--remove-source-files is not allowed", SLAVE),
    (SEND.replace("--sender", "--sender --delete") + "/./var/spool/asterisk/monitor",
     "--delete is not allowed", SLAVE),
    (SEND.replace("--timeout=30", "--log-file=/etc/passwd") + "/./var/spool/asterisk/monitor",
     "--log-file=/etc/passwd is not allowed", SLAVE),
    (SEND.replace("-lDtrRe", "-LlDtrRe") + "/./var/spool/asterisk/monitor", "-L (in", SLAVE),
    (SEND.replace("--ignore-missing-args", "--mkpath") + "/./var/spool/asterisk/monitor", "--mkpath is not allowed",
     SLAVE),
    (SEND + "/./var/spool/asterisk/voicemail", "not /srv/slave/./<directory>", ROOTED),
]


@pytest.mark.parametrize("request_text, kind, allowed", ALLOWED)
def test_what_the_master_runs_is_allowed(request_text, kind, allowed):
    decision = peer_command.decide(shlex.split(request_text), allowed)
    assert decision.allowed, decision.sentence
    assert decision.kind == kind
    assert decision.sentence


@pytest.mark.parametrize("request_text, why, allowed", REFUSED)
def test_anything_else_is_refused_with_a_reason(request_text, why, allowed):
    decision = peer_command.decide(shlex.split(request_text), allowed)
    assert not decision.allowed
    assert why in decision.sentence
    assert decision.argv == () and decision.directories == ()


def test_a_receive_runs_in_the_directory_opened_by_the_forced_command():
    decision = peer_command.decide(shlex.split(RECEIVE + "/srv/slave/var/lib/asterisk/agi-bin/"), ROOTED)
    assert decision.directories == ("/var/lib/asterisk/agi-bin",)
    assert decision.argv == (*shlex.split(RECEIVE)[:-1], ".", ".")


def test_a_send_reads_the_requested_failback_directories():
    decision = peer_command.decide(shlex.split(SEND + "/./var/spool/asterisk/monitor"), SLAVE)
    assert decision.directories == ("/var/spool/asterisk/monitor",)
    assert decision.argv == tuple(shlex.split(SEND + "/./var/spool/asterisk/monitor"))


def test_xivo_ha_runs_this_slave_s_own_xivo_ha():
    assert peer_command.decide(["/usr/bin/xivo-ha", "doctor", "--facts"], SLAVE).argv == ("xivo-ha", "doctor", "--facts")


@pytest.mark.parametrize("options, missing", [
    ('command="/usr/lib/xivo-ha/peer-command",from="10.0.0.1",restrict', []),
    ('from="10.0.0.1",restrict', ['command="/usr/lib/xivo-ha/peer-command"']),
    ('command="/bin/sh",from="10.0.0.1",restrict', ['command="/usr/lib/xivo-ha/peer-command"']),
    ('command="/usr/lib/xivo-ha/peer-command"', ['from="<master>"', "restrict"]),
    ("", ['command="/usr/lib/xivo-ha/peer-command"', 'from="<master>"', "restrict"]),
])
def test_missing_restrictions_of_an_authorized_key(options, missing):
    assert sync.missing_restrictions(options, "/usr/lib/xivo-ha/peer-command") == missing
