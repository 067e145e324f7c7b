"""Phones read their registrar pair from their own provisioning file, served by the node's stand-in."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from xivo_ha_simulator.phone import Credentials, mac_of, provisioned_line, provisioned_pair

STAND_IN = Path(__file__).resolve().parents[2] / "simulator" / "node" / "provd-stand-in"


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    loader = importlib.machinery.SourceFileLoader("provd_stand_in", str(STAND_IN))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    monkeypatch.setattr(module, "JSONDB", tmp_path)
    (tmp_path / "devices").mkdir()
    (tmp_path / "configs").mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), module.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield module, tmp_path, server.server_address[1]
    server.shutdown()
    server.server_close()


def add_phone(jsondb: Path, module, number: int, line: dict) -> None:
    mac = module.mac_of(str(number))
    (jsondb / "devices" / f"d{number}").write_text(json.dumps({"id": f"d{number}", "mac": mac, "config": f"c{number}"}))
    (jsondb / "configs" / f"c{number}").write_text(json.dumps(
        {"id": f"c{number}", "X_type": "device", "raw_config": {"sip_lines": {"1": line}}}))


def test_the_phone_and_the_stand_in_agree_on_the_mac(stand_in):
    module, _, _ = stand_in
    assert module.mac_of("1001").replace(":", "") == mac_of(1001) == "00163e0003e9"


def test_a_phone_learns_the_backup_only_once_its_config_has_it(stand_in):
    module, jsondb, port = stand_in
    add_phone(jsondb, module, 1001, {"registrar_ip": "10.0.0.10", "proxy_ip": "10.0.0.10"})
    assert provisioned_pair("127.0.0.1", 1001, port=port) == ("10.0.0.10", None)
    add_phone(jsondb, module, 1001, {"registrar_ip": "10.0.0.10", "proxy_ip": "10.0.0.10",
                                     "backup_registrar_ip": "10.0.0.11", "backup_proxy_ip": "10.0.0.11"})
    assert provisioned_pair("127.0.0.1", 1001, port=port) == ("10.0.0.10", "10.0.0.11")


def test_an_unknown_phone_gets_404(stand_in):
    _, _, port = stand_in
    with pytest.raises(OSError, match="HTTP 404"):
        provisioned_pair("127.0.0.1", 1002, port=port)


def test_a_phone_takes_its_line_credentials_from_its_file(stand_in):
    module, jsondb, port = stand_in
    add_phone(jsondb, module, 1001, {"registrar_ip": "10.0.0.10", "username": "user1", "auth_username": "user1",
                                     "password": "s3cret"})
    line = provisioned_line("127.0.0.1", 1001, port=port)
    assert line.credentials == Credentials("user1", "s3cret")
    add_phone(jsondb, module, 1001, {"registrar_ip": "10.0.0.10"})
    assert provisioned_line("127.0.0.1", 1001, port=port).credentials is None
