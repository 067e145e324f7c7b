"""Every well-known path of a node, resolved under ``$XIVO_HA_ROOT`` (default ``/``).

This module is the only place where absolute node paths are spelled.  Tests point
``XIVO_HA_ROOT`` at a temporary tree and run the real code against it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "XIVO_HA_ROOT"
SHARE_ENV = "XIVO_HA_SHARE_DIR"

# Node paths, as XiVO and its runbooks spell them (absolute, before rooting).
HA_CONF = "/etc/xivo/ha.conf"
SETTINGS = "/etc/xivo-ha/xivo-ha.conf"
CRON_MASTER = "/etc/cron.d/xivo-ha-master"
CRON_SLAVE = "/etc/cron.d/xivo-ha-slave"
CRON_DIR = "/etc/cron.d"
SENTINEL_PRIMARY = "/var/lib/xivo/is-primary"
SENTINEL_SECONDARY = "/var/lib/xivo/is-secondary"
PROVD_CONFIGS = "/var/lib/xivo-provd/jsondb/configs"
PROVD_DEVICES = "/var/lib/xivo-provd/jsondb/devices"
PROVD_PLUGINS = "/var/lib/xivo-provd/plugins"
STATE_DIR = "/var/lib/xivo-ha"
LOG_FILE = "/var/log/xivo-ha.log"
ROOT_SSH = "/root/.ssh"
CC_CUSTOM_ENV = "/etc/docker/xivo/custom.env"
CC_LOG_DIR = "/var/log/xivo-db-replication"
CC_SENTINEL = "/var/lib/xivo/xc_enabled"
PROMETHEUS_TEXTFILE = "/var/lib/prometheus/node-exporter/xivo_ha.prom"
# The HA key's forced command on the slave (authorized_keys command="...").
PEER_COMMAND = "/usr/lib/xivo-ha/peer-command"


def root() -> Path:
    """The directory every node path is resolved under."""
    return Path(os.environ.get(ROOT_ENV) or "/")


def node(path: str | os.PathLike) -> Path:
    """Resolve an absolute node path (``/etc/...``) under the root prefix."""
    text = os.fspath(path)
    if not text.startswith("/"):
        raise ValueError(f"node paths are absolute, got {text!r}")
    return root() / text.lstrip("/")


def state(name: str) -> Path:
    """A file of ours under ``/var/lib/xivo-ha``."""
    return node(STATE_DIR) / name


def share_dir() -> Path:
    """Where the configspec and templates live.

    ``$XIVO_HA_SHARE_DIR`` wins; then the source tree's ``conf/`` (running from a
    checkout or an editable install); then the packaged ``/usr/share/xivo-ha``.
    Package data is not node state, so it is not under the root prefix.
    """
    explicit = os.environ.get(SHARE_ENV)
    if explicit:
        return Path(explicit)
    source_conf = Path(__file__).resolve().parents[2] / "conf"
    if (source_conf / "xivo-ha.spec").is_file():
        return source_conf
    return Path("/usr/share/xivo-ha")


def template_dir() -> Path:
    return share_dir() / "templates"


def configspec() -> Path:
    return share_dir() / "xivo-ha.spec"
