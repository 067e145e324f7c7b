"""Whether the slave should start or stop its services: a pure decision, plus its memory.

:func:`decide` looks at one round of observations (master ping, optional SIP
registrar, optional witness, the services' actual status), the state remembered from
earlier rounds and the policy from the settings, and returns a :class:`Decision`:
``start``, ``stop`` or ``nothing``, the sentence that explains it (that sentence is
what gets logged) and the new state to remember.  It does no I/O and reads no clock.

:func:`run_cycle` is what xivo-check-master-status runs: observe (the probes), decide,
act (start or stop the services, remember the state), under a lock.

The state lives in ``/var/lib/xivo-ha/failover.json`` (:func:`load_state`,
:func:`save_state`)::

    {
      "mode": "standby",                 # or "serving": what this slave is doing
      "master": "10.0.0.1",              # the master these counters are about
      "condition": "up",                 # last verdict: up, down, registrar-down, isolated
      "consecutive_failures": 0,         # down verdicts in a row
      "consecutive_successes": 42,       # up verdicts in a row
      "last_check": "2024-05-01T12:00:00.123+00:00",
      "last_failover": null,             # when services were last started (ISO 8601, UTC)
      "last_failback": null,             # when they were last stopped
      "reason": "..."                    # the sentence of the last transition
    }
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from . import metrics, paths, probes, role, services, system
from .errors import EXIT_FAILED, OperationFailed, UsageError
from .probes import Observation

STATE_FILE = "failover.json"
LOCK_FILE = "check-master-status.lock"

STANDBY = "standby"
SERVING = "serving"
MODES = (STANDBY, SERVING)
# Never written: what load_state() says when failover.json cannot be read.
UNKNOWN = "unknown"

UP = "up"
DOWN = "down"
REGISTRAR_DOWN = "registrar-down"
ISOLATED = "isolated"

# Observed status of the slave services, as xivo_ha.services reports it.
RUNNING = "running"
STOPPED = "stopped"
MIXED = "mixed"


class Action(str, enum.Enum):
    START = "start"
    STOP = "stop"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Policy:
    """The tunables that shape the decision ([failover] and [probe] settings)."""

    failures_before_failover: int = 1
    successes_before_failback: int = 1
    failback_hold_down: float = 0.0
    sip_probe: bool = False
    witness: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> "Policy":
        return cls(
            failures_before_failover=settings.failover.failures_before_failover,
            successes_before_failback=settings.failover.successes_before_failback,
            failback_hold_down=float(settings.failover.failback_hold_down),
            sip_probe=bool(settings.probe.sip_probe),
            witness=settings.probe.witness.strip(),
        )


@dataclass(frozen=True)
class State:
    """What the slave remembers between checks."""

    mode: str = STANDBY
    master: str = ""
    condition: str = ""
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_check: Optional[float] = None
    last_failover: Optional[float] = None
    last_failback: Optional[float] = None
    reason: str = ""


@dataclass(frozen=True)
class Observations:
    """One round of facts about the master and this slave."""

    master: str
    icmp: Observation
    services: str
    sip: Optional[Observation] = None
    witness: Optional[Observation] = None

    def all(self) -> list[Observation]:
        return [obs for obs in (self.icmp, self.sip, self.witness) if obs is not None]

    def describe(self) -> str:
        parts = [obs.describe() for obs in self.all()]
        parts.append(f"services {self.services}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    state: State
    transition: bool


# --- predicates -------------------------------------------------------------------


def icmp_down(obs: Observations) -> bool:
    return not obs.icmp.alive


def registrar_down(obs: Observations, policy: Policy) -> bool:
    """The host pings but its registrar does not answer (crashed Asterisk)."""
    return policy.sip_probe and obs.icmp.alive and obs.sip is not None and not obs.sip.alive


def master_down(obs: Observations, policy: Policy) -> bool:
    return icmp_down(obs) or registrar_down(obs, policy)


def has_witness(policy: Policy) -> bool:
    return bool(policy.witness)


def slave_isolated(obs: Observations, policy: Policy) -> bool:
    """The master does not answer ping, and this slave cannot reach the witness either.

    A master that pings while its registrar is silent proves this slave's network
    works: the witness only matters when the ping fails.
    """
    if not has_witness(policy) or not icmp_down(obs):
        return False
    return obs.witness is None or not obs.witness.alive


def services_all_running(obs: Observations) -> bool:
    return obs.services == RUNNING


def services_all_stopped(obs: Observations) -> bool:
    return obs.services == STOPPED


def enough_failures(state: State, policy: Policy) -> bool:
    return state.consecutive_failures >= policy.failures_before_failover


def enough_successes(state: State, policy: Policy) -> bool:
    return state.consecutive_successes >= policy.successes_before_failback


def hold_down_left(state: State, policy: Policy, now: float) -> float:
    """Seconds before a failback is allowed (0 when it is)."""
    if policy.failback_hold_down <= 0 or state.last_failover is None:
        return 0.0
    return max(0.0, state.last_failover + policy.failback_hold_down - now)


# --- the decision -----------------------------------------------------------------


def condition_of(obs: Observations, policy: Policy) -> str:
    if not master_down(obs, policy):
        return UP
    if slave_isolated(obs, policy):
        return ISOLATED
    return DOWN if icmp_down(obs) else REGISTRAR_DOWN


def _why_down(obs: Observations) -> str:
    if not obs.icmp.alive:
        return f"master {obs.master} does not answer ping ({obs.icmp.detail})"
    assert obs.sip is not None
    return (
        f"master {obs.master} answers ping but its registrar {obs.sip.target} does not "
        f"({obs.sip.detail})"
    )


def _why_up(obs: Observations, policy: Policy) -> str:
    why = f"master {obs.master} answers ping ({obs.icmp.detail})"
    if policy.sip_probe and obs.sip is not None:
        why += f" and its registrar answers ({obs.sip.detail})"
    return why


def _checks(count: int) -> str:
    return "1 check" if count == 1 else f"{count} consecutive checks"


def state_known(state: State) -> bool:
    """False when the slave does not know what it was doing: an unreadable state file,
    or none at all (nothing recorded yet)."""
    return state.mode != UNKNOWN and state != State()


def decide(obs: Observations, state: State, policy: Policy, now: float) -> Decision:
    """Start, stop or leave the slave services, and say why.

    An unknown state (see :func:`state_known`) is taken from the services' actual
    status: all stopped, a fresh standby slave; any running, serving since ``now``,
    so that with the master up they are stopped only after successes_before_failback
    good checks and the hold-down, as after a real failover.
    """
    if state_known(state) or services_all_stopped(obs):
        return _decide(obs, state if state_known(state) else State(), policy, now)
    decision = _decide(obs, State(mode=SERVING, master=obs.master, last_failover=now), policy, now)
    reason = (
        f"no failover state is recorded and services run on this slave ({obs.services}): "
        f"counted as serving since now; {decision.reason}"
    )
    return Decision(decision.action, reason, replace(decision.state, reason=reason), True)


def _decide(obs: Observations, state: State, policy: Policy, now: float) -> Decision:
    if state.master and state.master != obs.master:
        state = replace(state, consecutive_failures=0, consecutive_successes=0, condition="")
    condition = condition_of(obs, policy)
    if condition == ISOLATED:
        counted = replace(state, consecutive_failures=0, consecutive_successes=0)
        action, reason, mode = _when_isolated(obs, counted, policy)
    elif condition == UP:
        counted = replace(
            state, consecutive_failures=0, consecutive_successes=state.consecutive_successes + 1
        )
        action, reason, mode = _when_master_up(obs, counted, policy, now)
    else:
        counted = replace(
            state, consecutive_successes=0, consecutive_failures=state.consecutive_failures + 1
        )
        action, reason, mode = _when_master_down(obs, counted, policy)

    new = replace(counted, master=obs.master, condition=condition, mode=mode, last_check=now)
    if mode == SERVING and state.mode != SERVING:
        new = replace(new, last_failover=now)
    if mode == STANDBY and state.mode == SERVING:
        new = replace(new, last_failback=now)
    transition = action is not Action.NOTHING or mode != state.mode or condition != state.condition
    if transition:
        new = replace(new, reason=reason)
    return Decision(action, reason, new, transition)


def _when_isolated(obs: Observations, state: State, policy: Policy) -> tuple[Action, str, str]:
    witness = obs.witness.detail if obs.witness is not None else "not checked"
    reason = (
        f"{_why_down(obs)}, and neither does the witness {policy.witness} ({witness}): "
        f"this slave is the isolated one"
    )
    if state.mode == SERVING:
        return Action.NOTHING, reason + "; leaving the services as they are", state.mode
    return Action.NOTHING, reason + "; not starting the services (split-brain guard)", state.mode


def _when_master_down(obs: Observations, state: State, policy: Policy) -> tuple[Action, str, str]:
    why = _why_down(obs)
    if not enough_failures(state, policy):
        return (
            Action.NOTHING,
            f"{why}: {state.consecutive_failures} of {policy.failures_before_failover} "
            f"consecutive failed checks before failover, waiting",
            state.mode,
        )
    if services_all_running(obs):
        if state.mode == SERVING:
            return Action.NOTHING, f"{why}; the services already run on this slave", SERVING
        return Action.NOTHING, f"{why}; the services already run on this slave, now serving", SERVING
    if state.mode == SERVING:
        return (
            Action.START,
            f"{why}, and not all services run on this slave ({obs.services}): starting them again",
            SERVING,
        )
    return (
        Action.START,
        f"{why} for {_checks(state.consecutive_failures)}: failover, starting the services",
        SERVING,
    )


def _when_master_up(obs: Observations, state: State, policy: Policy, now: float) -> tuple[Action, str, str]:
    why = _why_up(obs, policy)
    if state.mode == SERVING:
        if not enough_successes(state, policy):
            return (
                Action.NOTHING,
                f"{why}: {state.consecutive_successes} of {policy.successes_before_failback} "
                f"consecutive good checks before failback, this slave keeps serving",
                SERVING,
            )
        left = hold_down_left(state, policy, now)
        if left > 0:
            return (
                Action.NOTHING,
                f"{why}, but the last failover was {now - state.last_failover:.0f} s ago and "
                f"failback_hold_down is {policy.failback_hold_down:g} s: this slave keeps serving "
                f"{left:.0f} s more",
                SERVING,
            )
        if services_all_stopped(obs):
            return Action.NOTHING, f"{why}; the services are already stopped, back to standby", STANDBY
        return (
            Action.STOP,
            f"{why} for {_checks(state.consecutive_successes)}: failback, stopping the services",
            STANDBY,
        )
    if services_all_stopped(obs):
        return Action.NOTHING, f"{why}; the services stay stopped", STANDBY
    return (
        Action.STOP,
        f"{why}, but services run on this slave ({obs.services}): stopping them",
        STANDBY,
    )


# --- persistence ------------------------------------------------------------------

_TIMES = ("last_check", "last_failover", "last_failback")


def _to_iso(value: Optional[float]) -> Optional[str]:
    if value is None:
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds")


# Times outside these bounds are not ones this code wrote (1970 .. 9999).
_EARLIEST = 0.0
_LATEST = 253402300799.0
_MAX_COUNT = 10**9


def _from_iso(value: Any) -> Optional[float]:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise ValueError("a time must be an ISO 8601 string")
    if isinstance(value, (int, float)):
        stamp = float(value)
    elif isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value).timestamp()
        except OverflowError:
            raise ValueError(f"time {value!r} is out of range") from None
    else:
        raise ValueError("a time must be an ISO 8601 string")
    if not _EARLIEST <= stamp <= _LATEST:  # also false for NaN
        raise ValueError(f"time {value!r} is out of range")
    return stamp


def state_to_json(state: State) -> str:
    data = asdict(state)
    for key in _TIMES:
        data[key] = _to_iso(data[key])
    return json.dumps(data, indent=2) + "\n"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is not a finite number")
    return value


def state_from_json(text: str) -> State:
    """Parse the state file; ValueError when it is not exactly one (whatever is wrong in it)."""
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    known = {key: data[key] for key in State.__dataclass_fields__ if key in data}
    for key in _TIMES:
        if key in known:
            known[key] = _from_iso(known[key])
    for key in ("consecutive_failures", "consecutive_successes"):
        value = known.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
            raise ValueError(f"{key} must be an integer between 0 and {_MAX_COUNT}")
    for key in ("mode", "master", "condition", "reason"):
        if key in known and not isinstance(known[key], str):
            raise ValueError(f"{key} must be a string")
    if known.get("mode", STANDBY) not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    return State(**known)


def state_path() -> Path:
    return paths.state(STATE_FILE)


def load_state(path: Optional[Path] = None) -> State:
    """The remembered state; a missing file is a standby slave that never checked.

    An unreadable or corrupt file (any value that is not what :func:`state_to_json`
    writes) is logged and gives a state whose mode is ``unknown``: :func:`decide`
    then goes by the services' actual status (see :func:`assumed_state`).
    """
    path = state_path() if path is None else path
    try:
        text = system.read_text(path)
        if text is None:
            return State()
        return state_from_json(text)
    except (OSError, ValueError) as exc:
        why = f"{path} is unreadable ({exc})"
        logging.getLogger("xivo-ha").warning("%s: the failover state is unknown", why)
        return State(mode=UNKNOWN, reason=why)


def save_state(state: State, path: Optional[Path] = None) -> None:
    path = state_path() if path is None else path
    system.write_atomic(path, state_to_json(state), 0o644)


# --- one run: observe, decide, act ------------------------------------------------

# What one round comes to.
AGAIN = "again"
ENOUGH = "enough"  # this node's role or master changed: stop checking
FAILED = "failed"


def run_cycle(master: str, settings: Any, loop: float, interval: float, what: str) -> int:
    """Check ``master`` every ``interval`` seconds for ``loop`` seconds (once with 0), under
    the lock named ``what``: 0 when the checks ran (whatever they decided), 1 when a probe
    could not run or a service step failed.  Bad settings or another master than ha.conf's
    raise :class:`UsageError`; another run holding the lock means nothing is done.
    """
    logger = logging.getLogger("xivo-ha")
    policy = Policy.from_settings(settings)
    if policy.witness:
        try:
            role.validate_peer(policy.witness, frozenset({master}))
        except UsageError as exc:
            raise UsageError(f"[probe] witness: {exc}") from None
    manager = services.Manager.from_settings(settings)
    if not still_slave_of(master, before=True):
        return 0
    try:
        with system.exclusive_lock(paths.state(LOCK_FILE), what):
            return _rounds(lambda: _round(master, settings, policy, manager), loop, interval)
    except system.LockBusy as exc:
        logger.info("%s: nothing done", exc)
        return 0


def still_slave_of(master: str, before: bool) -> bool:
    """Whether this node is still the slave of ``master`` (ha.conf); said when not.

    ``before`` the checks, ha.conf naming another master is a usage error (the address
    given is wrong); after probing, it means the role changed meanwhile: nothing is done.
    """
    logger = logging.getLogger("xivo-ha")
    current = role.read()
    if current.role is role.Role.SLAVE and current.remote_address == master:
        return True
    if current.role is not role.Role.SLAVE:
        if before:
            logger.info(
                "this node is not a slave (its role is %s in %s): nothing to do",
                current.role.value, paths.node(paths.HA_CONF),
            )
        else:
            logger.info(
                "this node is no longer a slave (its role became %s in %s while the master "
                "was being checked): nothing done",
                current.role.value, paths.node(paths.HA_CONF),
            )
        return False
    if before:
        raise UsageError(
            f"{paths.node(paths.HA_CONF)} names the master {current.remote_address}, not {master}: "
            f"check the address given"
        )
    logger.info(
        "the master changed from %s to %s in %s while it was being checked: nothing done",
        master, current.remote_address, paths.node(paths.HA_CONF),
    )
    return False


def _rounds(one_round: Callable[[], str], loop: float, interval: float) -> int:
    """Start a round every ``interval`` seconds until ``loop`` seconds have passed."""
    started = time.monotonic()
    deadline = started + loop
    iterations = 1 + int(loop // interval)
    for _ in range(iterations):
        began = time.monotonic()
        outcome = one_round()
        if outcome == FAILED:
            return EXIT_FAILED
        if outcome == ENOUGH:
            break
        next_at = began + interval
        if next_at >= deadline:
            break
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return 0


def _round(master: str, settings: Any, policy: Policy, manager: "services.Manager") -> str:
    """One observe-decide-act round: AGAIN, ENOUGH (the role changed) or FAILED."""
    from . import events  # it imports this module (Decision, SERVING): imported when needed

    logger = logging.getLogger("xivo-ha")
    try:
        observed = observe(master, settings, policy, manager, lambda: still_slave_of(master, before=False))
    except probes.ProbeError as exc:
        logger.error("%s: nothing decided, the failover state is left as it was", exc)
        return FAILED
    if observed is None:
        return ENOUGH
    metrics.record_probes(observed.all())
    decision = decide(observed, load_state(), policy, time.time())
    if not decision.transition:
        logger.debug("%s [%s]", decision.reason, observed.describe())
    try:
        _act(decision, manager)
    except OperationFailed as exc:
        # Remember the intent anyway: the next check sees the services' actual state
        # and tries again.  One line, to syslog and stderr.
        save_state(decision.state)
        logger.error("%s [%s], but it failed: %s", decision.reason, observed.describe(), exc)
        events.after_check(settings, decision, exc)
        return FAILED
    save_state(decision.state)
    events.after_check(settings, decision)
    if decision.transition:
        level = logger.warning if decision.action is not Action.NOTHING else logger.info
        level("%s [%s]", decision.reason, observed.describe())
    return AGAIN


def _act(decision: Decision, manager: "services.Manager") -> None:
    logger = logging.getLogger("xivo-ha")
    if decision.action is Action.START:
        with services.lock():
            manager.start(progress=logger.debug)
    elif decision.action is Action.STOP:
        with services.lock():
            manager.stop(progress=logger.debug)


def observe(master: str, settings: Any, policy: Policy, manager: "services.Manager",
            still_slave: Callable[[], bool]) -> Optional[Observations]:
    """Probe the master: ping; then its registrar when it pings and sip_probe is on;
    then the witness when it does not ping and a witness is set.

    ``still_slave`` is asked after probing, before anything is decided: when the
    node's role changed meanwhile, None is returned and nothing is done.  A probe
    that could not run raises :class:`probes.ProbeError`.
    """
    probe = settings.probe
    icmp = probes.ping(master, probe.ping_count, probe.ping_interval, probe.ping_timeout)
    sip = None
    if policy.sip_probe and icmp.alive:
        sip = probes.sip_options(master, probe.sip_port, probe.sip_timeout)
    witness = None
    if policy.witness and not icmp.alive:
        witness = probes.ping(
            policy.witness, probe.ping_count, probe.ping_interval, probe.ping_timeout, what=probes.WITNESS
        )
    if not still_slave():
        return None
    status = manager.status()
    return Observations(master=master, icmp=icmp, sip=sip, witness=witness, services=status.summary)
