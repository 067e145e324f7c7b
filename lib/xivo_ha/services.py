"""The slave's telephony services: start them on failover, stop them on failback.

Which services, and how to drive them, come from the ``[services]`` settings: the
list ``slave_services`` (default ``monit, asterisk``) and argument-list templates
in which ``{service}`` is replaced by each name (``systemctl start {service}`` on a
real node, ``service {service} start`` / ``update-rc.d {service} enable`` in a
container).

* :meth:`Manager.start` enables each service at boot, then starts it, in order; with
  ``[replication] mode = continuous`` it first disables the replication stream from
  the master (:func:`xivo_ha.replication.stream.stop_on_slave`), so that nothing from
  the master overwrites what the slave learns while it serves;
* :meth:`Manager.stop` stops each service, then disables it at boot, in reverse
  order, so that a reboot or an upgrade does not bring them back on a slave;
* :meth:`Manager.status` asks each one; the summary is ``running`` (all),
  ``stopped`` (none) or ``mixed``.

Every step is attempted even when an earlier one failed (a failover is better served
by Asterisk without monit than by nothing); the failures are then reported together
as one :class:`~xivo_ha.errors.OperationFailed` naming each service and the
command's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from . import paths, system
from .errors import OperationFailed, UsageError
from .log import Progress, quiet
from .settings import Settings

RUNNING = "running"
STOPPED = "stopped"
MIXED = "mixed"

EXIT_ALL_RUNNING = 0
EXIT_MIXED = 1
EXIT_NONE_RUNNING = 3

PLACEHOLDER = "{service}"
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._+:-]*$")

SERVICES_LOCK = "services.lock"


def lock():
    """The lock held while the slave's services are started, stopped or restarted."""
    return system.exclusive_lock(paths.state(SERVICES_LOCK), "start or stop of the services")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    detail: str

    def line(self) -> str:
        state = RUNNING if self.running else STOPPED
        return f"{self.name}: {state}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Status:
    services: tuple[ServiceStatus, ...]

    @property
    def summary(self) -> str:
        running = [s for s in self.services if s.running]
        if len(running) == len(self.services):
            return RUNNING
        if not running:
            return STOPPED
        return MIXED

    @property
    def exit_code(self) -> int:
        return {RUNNING: EXIT_ALL_RUNNING, STOPPED: EXIT_NONE_RUNNING, MIXED: EXIT_MIXED}[self.summary]

    def lines(self) -> list[str]:
        return [s.line() for s in self.services]


def validate_service(name: str) -> str:
    if not isinstance(name, str) or not _SERVICE_NAME.match(name):
        raise UsageError(f"[services] slave_services: {name!r} is not a service name")
    return name


def _template(settings: Settings, key: str) -> tuple[str, ...]:
    value = tuple(getattr(settings.services, key))
    if not value or not value[0]:
        raise UsageError(f"[services] {key}: empty command")
    return value


def _show(argv: Sequence[str]) -> str:
    return " ".join(argv)


@dataclass(frozen=True)
class Manager:
    """Drives the configured services through the configured commands."""

    services: tuple[str, ...]
    start_command: tuple[str, ...]
    stop_command: tuple[str, ...]
    enable_command: tuple[str, ...]
    disable_command: tuple[str, ...]
    status_command: tuple[str, ...]
    timeout: float = 120.0
    stream_dsn: str | None = None  # continuous mode: the database whose subscription a start disables

    @classmethod
    def from_settings(cls, settings: Settings) -> "Manager":
        names = tuple(validate_service(name) for name in settings.services.slave_services)
        if not names:
            raise UsageError("[services] slave_services is empty: name the services a failover starts")
        return cls(
            services=names,
            start_command=_template(settings, "start_command"),
            stop_command=_template(settings, "stop_command"),
            enable_command=_template(settings, "enable_command"),
            disable_command=_template(settings, "disable_command"),
            status_command=_template(settings, "status_command"),
            timeout=float(settings.services.command_timeout),
            stream_dsn=settings.database.dsn if settings.replication.mode == "continuous" else None,
        )

    def command(self, template: Sequence[str], service: str) -> list[str]:
        return [part.replace(PLACEHOLDER, service) for part in template]

    def _step(self, verb: str, template: Sequence[str], service: str, progress: Progress) -> Optional[str]:
        """Run one step; None when it worked, else the sentence saying why not."""
        argv = self.command(template, service)
        try:
            result = system.run(argv, timeout=self.timeout)
        except OperationFailed as exc:
            return f"could not {verb} {service}: {exc}"
        if not result.ok:
            output = result.output() or "no output"
            return f"could not {verb} {service}: `{_show(argv)}` exited with {result.returncode}: {output}"
        progress(f"{verb}: {service}")
        return None

    def _steps(self, plan: Sequence[tuple[str, Sequence[str], str]], progress: Progress,
               failures: Sequence[str] = ()) -> None:
        failures = [*failures, *[
            failure
            for verb, template, service in plan
            if (failure := self._step(verb, template, service, progress)) is not None
        ]]
        if failures:
            raise OperationFailed("; ".join(failures))

    def start(self, progress: Progress = quiet) -> None:
        """Stop the replication stream (continuous mode), then enable at boot and start
        each service in order (started even when the stream could not be stopped)."""
        failures = []
        if self.stream_dsn is not None:
            from .replication import stream

            try:
                stream.stop_on_slave(self.stream_dsn, progress)
            except OperationFailed as exc:
                failures.append(str(exc))
        plan = []
        for service in self.services:
            plan.append(("enable", self.enable_command, service))
            plan.append(("start", self.start_command, service))
        self._steps(plan, progress, failures)

    def stop(self, progress: Progress = quiet) -> None:
        """Stop, then disable at boot, each service in reverse order."""
        plan = []
        for service in reversed(self.services):
            plan.append(("stop", self.stop_command, service))
            plan.append(("disable", self.disable_command, service))
        self._steps(plan, progress)

    def service_status(self, service: str) -> ServiceStatus:
        argv = self.command(self.status_command, service)
        result = system.run(argv, timeout=self.timeout)
        if result.ok:
            return ServiceStatus(service, True, "")
        output = result.output()
        detail = "" if result.returncode == 3 and not output else f"`{_show(argv)}` exited with {result.returncode}"
        if output:
            detail += f": {output}" if detail else output
        return ServiceStatus(service, False, detail)

    def status(self) -> Status:
        return Status(tuple(self.service_status(service) for service in self.services))
