"""Fixtures shared by the integration tests, each defined next to the helpers it builds on.

``sshd`` (a real sshd on a loopback port, its root the slave's), ``lab`` and
``witness_lab`` (network namespaces), ``slave_services`` (real daemons behind init
scripts), ``kamailio`` (a real registrar), ``pair`` (a master and a slave over ssh, from
test_doctor), ``slave``/``syslog`` (a slave in a namespace lab, from test_check_master),
``master_db``/``slave_db``/``master_node`` (two asterisk databases and a master node, from
test_replication) ``master`` (a master node with an HA key, from test_sync) and ``syslog_socket`` (a real
syslog datagram socket).
"""

from __future__ import annotations

from kamailio_fixture import kamailio
from netns import lab, slave_services, witness_lab
from sshd_fixture import sshd
from syslog_fixture import syslog_socket
from test_check_master import slave, syslog
from test_doctor import pair
from test_replication import master_db, master_node, slave_db
from test_sync import master

__all__ = ["kamailio", "lab", "master", "master_db", "master_node", "pair", "slave", "slave_db", "slave_services",
           "sshd", "syslog", "syslog_socket", "witness_lab"]
