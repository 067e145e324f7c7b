"""A real Kamailio trunk carrier, and nodes whose trunk registers to it from their own database.

    from carrier_fixture import start_carrier, add_trunk, start_trunk_node
    carrier = start_carrier(tmp_path)                       # simulator/node/carrier.cfg.j2 on 127.0.0.2
    add_trunk(database, carrier, expiry=60)                 # XiVO's trunk rows (simulator/node/trunk.sql)
    node = start_trunk_node(tmp_path, database, port)       # the node template, its uac_reg table rendered
                                                            # by the node's render script from those rows

The carrier listens on 127.0.0.2, so that a node tells its calls (source
address: the trunk's host) from the phones' and the tests' (127.0.0.1).  The
node's trunk registration goes through the same code as on a simulated node:
``render-kamailio-cfg``'s reading of the staticsip/trunkfeatures/usersip rows,
its parser and its db_text table for Kamailio's uac_reg.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jinja2
from kamailio_fixture import (REPO, KamailioHandle, LineDatabase, _options_ping, free_udp_port, kamailio_binary,
                              start_kamailio)
from pg import _as_postgres

CARRIER_TEMPLATE = REPO / "simulator" / "node" / "carrier.cfg.j2"
TRUNK_SQL = REPO / "simulator" / "node" / "trunk.sql"
RENDER = REPO / "simulator" / "node" / "render-kamailio-cfg"
CARRIER_ADDRESS = "127.0.0.2"
TRUNK_USER = "xivo-trunk"
TRUNK_SECRET = "trunk-secret-7"


def start_carrier(tmpdir, port: int = 0, *, user: str = TRUNK_USER, secret: str = TRUNK_SECRET,
                  fr_timer: int = 2000, fr_inv_timer: int = 10000, startup_timeout: float = 15.0) -> KamailioHandle:
    """Start the carrier on ``127.0.0.2:port`` (0: a free port)."""
    binary = kamailio_binary()
    if binary is None:
        raise FileNotFoundError("kamailio is not installed (Debian package kamailio)")
    port = port or free_udp_port(CARRIER_ADDRESS)
    directory = Path(tmpdir) / f"carrier-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    cfg = directory / "kamailio.cfg"
    cfg.write_text(env.from_string(CARRIER_TEMPLATE.read_text()).render(
        listen_address=CARRIER_ADDRESS, port=port, trunk_user=user, trunk_secret=secret, children=1,
        fr_timer=fr_timer, fr_inv_timer=fr_inv_timer))
    cfg.chmod(0o600)
    log_file = open(directory / "kamailio.log", "ab")
    process = subprocess.Popen(
        [binary, "-f", str(cfg), "-DD", "-E", "-n", "1", "-P", str(directory / "kamailio.pid"), "-Y", str(directory)],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    handle = KamailioHandle(process, CARRIER_ADDRESS, port, directory, None)
    handle._log_file = log_file
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline and handle.alive:
        if _options_ping(CARRIER_ADDRESS, port, 0.3):
            return handle
    handle.stop()
    raise RuntimeError(f"the carrier did not answer on {CARRIER_ADDRESS}:{port}; its log:\n{handle.log()[-3000:]}")


def add_trunk(database: LineDatabase, carrier: KamailioHandle, expiry: int, *, user: str = TRUNK_USER,
              secret: str = TRUNK_SECRET) -> None:
    """XiVO's rows of a SIP trunk registering to ``carrier`` (simulator/node/trunk.sql), secret on stdin."""
    script = (f"\\set name '{user}'\n\\set secret '{secret}'\n\\set host '{carrier.address}'\n"
              f"\\set port '{carrier.port}'\n\\set expiry '{expiry}'\n\\i {TRUNK_SQL}\n")
    _as_postgres(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", database.server.socket_dsn(database.name)],
                 input=script)


def set_register_row(database: LineDatabase, value: str) -> None:
    database.sql("UPDATE staticsip SET var_val = '" + value.replace("'", "''") + "' WHERE var_name = 'register'")


_SETTINGS_AS_POSTGRES = """
import importlib.machinery, importlib.util, json, sys
import psycopg
loader = importlib.machinery.SourceFileLoader("render", sys.argv[1])
render = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
loader.exec_module(render)
with psycopg.connect(sys.argv[2]) as conn:
    registrations, hosts, default_expiry, timeout, warnings = render.trunk_settings(conn)
scale = float(sys.argv[3])
print(json.dumps({"tables": render.dbtext_tables(registrations, default_expiry, scale, sys.argv[4]),
                  "registrations": len(registrations), "hosts": hosts,
                  "retry": render.scaled(timeout, scale), "warnings": warnings}))
"""


def trunk_settings(database: LineDatabase, contact: str, scale: float = 1.0) -> dict:
    """What the render script reads from ``database`` (as the postgres OS user, as on a node)."""
    out = _as_postgres([sys.executable, "-c", _SETTINGS_AS_POSTGRES, str(RENDER),
                        database.server.socket_dsn(database.name), str(scale), contact])
    return json.loads(out.stdout)


def start_trunk_node(tmpdir, database: LineDatabase, port: int = 0, *, scale: float = 1.0) -> KamailioHandle:
    """A node registrar on 127.0.0.1:``port`` whose trunks register as the render script makes them."""
    port = port or free_udp_port()
    dbtext = Path(tmpdir) / f"node-{port}" / "dbtext"
    dbtext.mkdir(parents=True, exist_ok=True)
    settings = trunk_settings(database, f"127.0.0.1:{port}", scale)
    for name, content in settings["tables"].items():
        (dbtext / name).write_text(content)
    return start_kamailio(tmpdir, port, min_expires=1, max_expires=60, default_expires=10, database=database,
                          uacreg_url=f"text://{dbtext}" if settings["registrations"] else None,
                          trunk_retry=settings["retry"], trunk_hosts=settings["hosts"])
