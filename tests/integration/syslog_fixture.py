"""A unix datagram socket standing in for /dev/log (``XIVO_HA_SYSLOG_SOCKET`` points at it)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


class Syslog:
    """What a syslog daemon would receive: one datagram per log line, read without waiting."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def drain(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(65535).decode(errors="replace").rstrip("\0\n"))
            except BlockingIOError:
                return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def syslog_socket(tmp_path):
    catcher = Syslog(tmp_path / "log.sock")
    yield catcher
    catcher.close()
