"""Fixtures of the end-to-end tests: the docker engine, images built from the
project's own scripts (cached by the scripts), and the .debs of ``make deb``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "simulator" / "node"
DIST = REPO / "dist"

BASE_IMAGE = os.environ.get("XIVO_HA_BASE_IMAGE", "xivo-ha/bookworm-base:latest")
PG_IMAGE = os.environ.get("XIVO_HA_PG_IMAGE", "xivo-ha/bookworm-pg:latest")

# Building an image from nothing: debootstrap, then apt-get inside docker.
IMAGE_BUILD_TIMEOUT = 1200


def run_script(*argv: str) -> None:
    """Run one of the image scripts; on failure, fail with what it printed."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=IMAGE_BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}",
            pytrace=False,
        )


def image_exists(name: str) -> bool:
    result = subprocess.run(["docker", "image", "inspect", name], capture_output=True)
    return result.returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """The docker engine answers (``make check`` starts it with ``make dockerd``)."""
    if shutil.which("docker") is None:
        pytest.fail("the docker client is not installed: apt-get install docker.io")
    result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"the docker engine is not reachable (start it with `make dockerd`): {result.stderr.strip()}")


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """Debian bookworm minbase image, built with simulator/node/build-base when missing."""
    if not image_exists(BASE_IMAGE):
        run_script(str(NODE_DIR / "build-base"))
    return BASE_IMAGE


@pytest.fixture(scope="session")
def pg_image(base_image) -> str:
    """The base image with PostgreSQL 15 installed (cluster 15/main, stopped).

    build-images rebuilds it only when the base image or its recipe changed.
    """
    run_script(str(NODE_DIR / "build-images"), "pg")
    return PG_IMAGE


@pytest.fixture(scope="session")
def debs() -> dict[str, Path]:
    """The binary packages in dist/ by package name, e.g. ``debs["xivo-ha"]``."""
    found: dict[str, Path] = {}
    for path in sorted(DIST.glob("*.deb")):
        package = path.name.split("_", 1)[0]
        if package in found:
            pytest.fail(f"two builds of {package} in {DIST}: {found[package].name}, {path.name}; run `make deb`")
        found[package] = path
    if not found:
        pytest.fail(f"no .deb in {DIST}: run `make deb` first")
    return found
