"""Fixtures shared by the integration tests, each defined next to the helpers it builds on.

``sshd`` (a real sshd on a loopback port, its root the slave's), ``lab`` and
``witness_lab`` (network namespaces), ``slave_services`` (real daemons behind init
scripts), ``kamailio`` (a real registrar), ``pair`` (a master and a slave over ssh, from
test_doctor) and ``slave``/``syslog`` (a slave in a namespace lab, from test_check_master).
"""

from __future__ import annotations

from kamailio_fixture import kamailio
from netns import lab, slave_services, witness_lab
from sshd_fixture import sshd
from test_check_master import slave, syslog
from test_doctor import pair

__all__ = ["kamailio", "lab", "pair", "slave", "slave_services", "sshd", "syslog", "witness_lab"]
