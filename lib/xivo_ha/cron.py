"""The HA cron file of a role, rendered from the templates in ``conf/templates``."""

from __future__ import annotations

from pathlib import Path

from . import paths
from .replication.stream import CONTINUOUS
from .role import HaConfig, Role

CRON_FILES = {Role.MASTER: paths.CRON_MASTER, Role.SLAVE: paths.CRON_SLAVE}


def render(config: HaConfig, mode: str) -> str | None:
    """The cron file content for ``config`` with ``[replication] mode`` ``mode``; None when
    the role has no cron file.  A continuous master also repairs the stream every minute."""
    if config.role not in CRON_FILES:
        return None
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    text = env.get_template(f"cron-{config.role.value}.j2").render(
        peer=config.remote_address, repair_stream=mode == CONTINUOUS)
    return text if text.endswith("\n") else text + "\n"


def desired_files(config: HaConfig, mode: str) -> dict[Path, str | None]:
    """Every HA cron file and what it must contain (None: must not exist)."""
    content = render(config, mode)
    return {
        paths.node(name): (content if role is config.role else None)
        for role, name in CRON_FILES.items()
    }


def present_files() -> list[str]:
    return [name for name in CRON_FILES.values() if paths.node(name).exists()]
