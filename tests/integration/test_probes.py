"""The probes against real hosts: a master in a network namespace, registrars on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from kamailio_fixture import kamailio_binary
from xivo_ha import probes

pytestmark = pytest.mark.integration

PROBE = """
import json, sys
from xivo_ha import probes
observation = getattr(probes, sys.argv[1])(**json.loads(sys.argv[2]))
print(json.dumps(observation.to_dict()))
"""


def probe_from_slave(lab, kind: str, **kwargs) -> dict:
    """Run probes.<kind>(**kwargs) inside the slave's namespace and return its observation."""
    result = lab.run_in_slave([sys.executable, "-c", PROBE, kind, json.dumps(kwargs)], timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fast_ping(lab, address=None, count=1):
    return probe_from_slave(
        lab, "ping", address=address or lab.master_address, count=count, interval=0.2, timeout=1
    )


# --- ICMP ---------------------------------------------------------------------------


def test_master_alive(lab):
    observation = fast_ping(lab, count=2)
    assert observation["alive"] is True
    assert observation["what"] == "icmp"
    assert observation["target"] == lab.master_address
    assert observation["detail"].startswith("2/2 replies, rtt avg ")


def test_master_link_down_is_dead(lab):
    lab.master_link(False)
    observation = fast_ping(lab, count=2)
    assert observation["alive"] is False
    assert observation["detail"].startswith("0/2 replies")
    lab.master_link(True)
    assert fast_ping(lab, count=3)["alive"] is True


ASK = """
import json, sys
from xivo_ha import probes
try:
    observation = getattr(probes, sys.argv[1])(**json.loads(sys.argv[2]))
except probes.ProbeError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps(observation.to_dict()))
"""


def ask_from_slave(lab, kind: str, env: dict | None = None, **kwargs) -> dict:
    """probes.<kind>(**kwargs) in the slave's namespace: its observation, or {"error": ...}."""
    result = lab.run_in_slave([sys.executable, "-c", ASK, kind, json.dumps(kwargs)], timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_master_namespace_removed_cannot_be_probed(lab):
    """With the namespace goes the slave's end of the link: no route, ping exits 2."""
    lab.remove_master()
    answer = ask_from_slave(lab, "ping", address=lab.master_address, count=1, interval=0.2, timeout=1)
    assert answer["error"].startswith(f"icmp probe of {lab.master_address} could not run: ping exited with 2")


@pytest.mark.parametrize("body, detail", [
    ('exec /usr/bin/ping -W nan "$@"', "ping exited with 2 (/usr/bin/ping: bad linger time: nan"),
    ("exit 7", "ping exited with 7 (no output)"),
    ("sleep 60", "did not finish within"),
])
def test_ping_that_cannot_answer_is_an_error_not_dead(lab, tmp_path, body, detail):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ping").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "ping").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    answer = ask_from_slave(lab, "ping", env=env, address=lab.master_address, count=1, interval=0.2, timeout=0.5)
    assert "error" in answer, answer
    assert detail in answer["error"]


def test_missing_ping_is_an_error(lab, tmp_path):
    (tmp_path / "ip").symlink_to(shutil.which("ip"))  # `ip netns exec` itself, and no ping
    env = {**os.environ, "PATH": str(tmp_path)}
    answer = ask_from_slave(lab, "ping", env=env, address=lab.master_address, count=1, interval=0.2, timeout=1)
    assert answer == {"error": "the ping program is missing: install iputils-ping"}


def test_any_reply_means_alive(lab):
    """Every other echo request is dropped on the master: half the pings answer, it is alive."""
    rules = (
        "table inet xha_test {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    icmp type echo-request numgen inc mod 2 == 1 drop\n"
        "  }\n"
        "}\n"
    )
    subprocess.run(lab.in_master(["nft", "-f", "-"]), input=rules, text=True, check=True, timeout=30)
    observation = fast_ping(lab, count=4)
    assert observation["alive"] is True
    assert observation["detail"].startswith("2/4 replies")


def test_witness_probe(witness_lab):
    observation = probe_from_slave(
        witness_lab, "ping", address=witness_lab.witness_address, count=1, interval=0.2, timeout=1, what="witness"
    )
    assert observation["what"] == "witness" and observation["alive"] is True
    witness_lab.witness_link(False)
    observation = probe_from_slave(
        witness_lab, "ping", address=witness_lab.witness_address, count=1, interval=0.2, timeout=1, what="witness"
    )
    assert observation["alive"] is False


def test_ping_command_is_xivos():
    assert probes.ping_command("10.0.0.1", 3, 10.0, 1.0) == [
        "ping", "-n", "-q", "-c", "3", "-i", "10", "-W", "1", "10.0.0.1"
    ]
    assert probes.ping_command("10.0.0.1", 1, 0.2, 0.5)[5:9] == ["-i", "0.2", "-W", "0.5"]


# --- SIP OPTIONS ----------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registrar(threading.Thread):
    """A UDP peer on loopback that answers each request with the given responses (or nothing)."""

    def __init__(self, responses: list[int] | None = None, bogus_call_id: bool = False):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.responses = responses or []
        self.bogus_call_id = bogus_call_id
        self.received: list[bytes] = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.received.append(data)
            if len(self.received) > 1:
                continue  # answer the first copy only; retransmissions are just counted
            head = data.decode().split("\r\n\r\n")[0].split("\r\n")
            copied = [h for h in head[1:] if h.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq")]
            if self.bogus_call_id:
                copied = [h if not h.startswith("Call-ID") else "Call-ID: somebody-else" for h in copied]
            for code in self.responses:
                reason = {100: "Trying", 180: "Ringing", 200: "OK", 404: "Not Found", 503: "Service Unavailable"}
                lines = [f"SIP/2.0 {code} {reason[code]}", *copied, "Content-Length: 0", "", ""]
                self.sock.sendto("\r\n".join(lines).encode(), peer)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(5)
        self.sock.close()


def test_sip_nothing_listening_is_dead_at_once():
    observation = probes.sip_options("127.0.0.1", free_udp_port(), timeout=32)
    assert observation.alive is False
    assert observation.what == "sip"
    assert observation.detail == "port unreachable (ICMP)"


def test_sip_socket_error_is_an_error_not_dead():
    """The kernel refuses the socket (a broadcast address without SO_BROADCAST): nothing is
    sent, nothing is learnt about any registrar."""
    with pytest.raises(probes.ProbeError, match=r"^sip probe of 255\.255\.255\.255:5060 could not run: "
                                                 r"cannot address it: Permission denied$"):
        probes.sip_options("255.255.255.255", 5060, timeout=1)


@pytest.mark.parametrize("code", [200, 404, 503])
def test_sip_any_final_response_is_alive(code):
    with Registrar([code]) as registrar:
        observation = probes.sip_options("127.0.0.1", registrar.port, timeout=5)
    assert observation.alive is True
    assert observation.target == f"127.0.0.1:{registrar.port}"
    assert observation.detail.startswith(str(code))


def test_sip_provisional_then_final_is_alive():
    with Registrar([100, 200]) as registrar:
        observation = probes.sip_options("127.0.0.1", registrar.port, timeout=5)
    assert observation.alive is True and observation.detail == "200 OK"


def test_sip_provisional_only_keeps_waiting_then_dead():
    with Registrar([100]) as registrar:
        observation = probes.sip_options("127.0.0.1", registrar.port, timeout=1.5)
    assert observation.alive is False
    assert "last provisional 100 Trying" in observation.detail


def test_sip_silent_registrar_is_retransmitted_to_then_dead():
    with Registrar([]) as registrar:
        observation = probes.sip_options("127.0.0.1", registrar.port, timeout=2.0)
        received = list(registrar.received)
    assert observation.alive is False
    assert observation.detail.startswith("no final response after ")
    assert len(received) >= 2  # T1 retransmissions
    assert len(set(received)) == 1  # the same request, same branch, every time
    request = received[0].decode()
    assert request.startswith(f"OPTIONS sip:127.0.0.1:{registrar.port} SIP/2.0\r\n")
    assert "\r\nCSeq: 1 OPTIONS\r\n" in request and ";branch=z9hG4bK" in request


def test_sip_response_to_another_transaction_is_ignored():
    with Registrar([200], bogus_call_id=True) as registrar:
        observation = probes.sip_options("127.0.0.1", registrar.port, timeout=1.0)
    assert observation.alive is False


def test_sip_master_in_namespace_without_registrar_is_dead(lab):
    observation = probe_from_slave(lab, "sip_options", host=lab.master_address, port=5060, timeout=5)
    assert observation["alive"] is False
    assert observation["detail"] == "port unreachable (ICMP)"


def test_sip_master_link_down_is_dead_after_timeout(lab):
    lab.master_link(False)
    observation = probe_from_slave(lab, "sip_options", host=lab.master_address, port=5060, timeout=1.5)
    assert observation["alive"] is False


# --- against a real Kamailio registrar -------------------------------------------------

needs_kamailio = pytest.mark.skipif(kamailio_binary() is None, reason="kamailio is not installed")


@needs_kamailio
def test_sip_kamailio_answers(kamailio):
    observation = probes.sip_options("127.0.0.1", kamailio.port, timeout=5)
    assert observation.alive is True
    assert observation.detail == "200 OK"


@needs_kamailio
def test_sip_kamailio_killed_is_dead(kamailio):
    kamailio.kill()
    observation = probes.sip_options("127.0.0.1", kamailio.port, timeout=5)
    assert observation.alive is False
    assert observation.detail == "port unreachable (ICMP)"


@needs_kamailio
def test_sip_kamailio_hung_is_dead_after_timeout_then_alive_again(kamailio):
    """A frozen registrar keeps its port (no ICMP error) but never answers: Timer F decides."""
    os.killpg(kamailio.pid, signal.SIGSTOP)
    try:
        observation = probes.sip_options("127.0.0.1", kamailio.port, timeout=2)
    finally:
        os.killpg(kamailio.pid, signal.SIGCONT)
    assert observation.alive is False
    assert observation.detail.startswith("no final response after ")
    assert probes.sip_options("127.0.0.1", kamailio.port, timeout=5).alive is True
