"""Fixtures of the simulator's end-to-end tests: the node image and one cluster.

Imported by test_simulator.py (``from simulator_fixtures import *``).  The
pytest-docker fixtures are overridden here: Debian's ``docker-compose`` 1.x
(no ``--wait``), the simulator's compose file, a project of its own and its own
/24 (172.28.6.0/24 unless XIVO_HA_SIM_E2E_NET says otherwise), so that a
cluster left by ``make simulate`` does not collide with the tests'.

The cluster is brought up once per session with the real toolkit
(:meth:`Cluster.bring_up`); each test then runs ``xivo-ha-simulator run
--reuse``, which resets it first (master restored, slave standing by).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "simulator" / "node"
COMPOSE_FILE = REPO / "simulator" / "docker-compose.yml"
PROJECT = "xivo-ha-sim-e2e"
NET = os.environ.get("XIVO_HA_SIM_E2E_NET", "172.28.6")
TIME_SCALE = 10.0
PHONES = 50
IMAGE_BUILD_TIMEOUT = 1500


@pytest.fixture(scope="session")
def node_image(docker_engine, base_image) -> str:
    """xivo-ha/node:latest from dist/'s .deb, rebuilt by build-images only when an input changed."""
    result = subprocess.run([str(NODE_DIR / "build-images"), "node"], capture_output=True, text=True,
                            timeout=IMAGE_BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"simulator/node/build-images node failed:\n{result.stderr[-3000:]}")
    return os.environ.get("XIVO_HA_NODE_IMAGE", "xivo-ha/node:latest")


@pytest.fixture(scope="session")
def simulator_environment():
    """The cluster's network and time scale, for docker-compose and for the simulator."""
    wanted = {"XIVO_HA_SIM_NET": NET, "XIVO_HA_SIM_TIME_SCALE": f"{TIME_SCALE:g}"}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    yield wanted
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file(node_image, simulator_environment) -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return PROJECT


@pytest.fixture(scope="session")
def docker_setup():
    # docker-compose 1.x has no --wait: readiness is Cluster.wait_ready's job.
    return ["down --remove-orphans --timeout 5", "up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup():
    return ["down --remove-orphans --timeout 5"]


@pytest.fixture(scope="session")
def sim_cluster(docker_services, simulator_environment):
    """The e2e cluster, configured with the real toolkit (enable, sync -i, replication, sync)."""
    from xivo_ha_simulator.cluster import Cluster

    lines: list[str] = []
    cluster = Cluster(PROJECT, TIME_SCALE, NET, compose=COMPOSE_FILE, log=lines.append)
    cluster.wait_ready(timeout=180)
    try:
        info = cluster.bring_up(PHONES)
    except Exception as exc:
        pytest.fail(f"bring-up with the toolkit failed: {exc}\nprogress:\n" + "\n".join(lines))
    cluster.bring_up_info = info
    return cluster
