"""Hourly against continuous replication: one scenario run twice on one cluster, side by side.

``xivo-ha-simulator run --compare-replication`` runs the scenario with the
hourly copy (XiVO's) and then, on the same cluster, with a continuous stream,
each run into its own report directory (``<report-dir>/hourly``,
``<report-dir>/continuous``).  :func:`compare` sets their two ``report.json``
side by side: per direction each mode's outage figures (real-equivalent
seconds) and the ratio of their p95, then per mode the verdict, how long after
the fault the slave started serving and the configuration RPO.  The
comparison passes when both runs pass.

    result, outcomes = run_both(options, simulate, sys.stdout)   # writes <report-dir>/comparison.json
    result["directions"]["incoming"]["ratio_p95"] -> 4.0 (hourly p95 / continuous p95)
    print(format_table(result))

:func:`compare` and :func:`format_table` are pure; :func:`run_both` runs and writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Mapping, TextIO

from .constants import SERVING
from .report import CTI, INCOMING, OUTGOING, PSTN, REGISTRATION, aligned, write_atomic
from .simulation import Options

MODES = ("hourly", "continuous")
DIRECTIONS = (INCOMING, PSTN, OUTGOING, REGISTRATION, CTI)  # the comparison's order: what users lose first
FIGURES = ("p50", "p95", "max", "phones", "never", "back_p50", "back_p95", "back_max")
BACK = ("back_p50", "back_p95", "back_max")  # fault -> first success per phone (report.py's "back")
COMPARISON = "comparison.json"  # in the report directory, next to the two runs' directories
PASS, FAIL = "PASS", "FAIL"  # report.json's verdicts


def _checked(reports: Mapping[str, Mapping]) -> None:
    """Raise ValueError unless both modes are there, from runs of the same scenario, phones and time scale."""
    missing = [mode for mode in MODES if mode not in reports]
    if missing:
        raise ValueError(f"the comparison needs the hourly and the continuous report: "
                         f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    runs = {mode: {"phones": reports[mode].get("phones"), "time_scale": reports[mode].get("time_scale"),
                   "scenario": reports[mode].get("simulation", {}).get("scenario")} for mode in MODES}
    first, second = (runs[mode] for mode in MODES)
    for key in first:
        if first[key] != second[key]:
            raise ValueError(f"the {MODES[0]} and {MODES[1]} runs differ in {key} ({first[key]} and {second[key]}): "
                             f"run both with the same switches")


def _figures(outage: Mapping) -> dict:
    figures = {key: outage.get(key) for key in FIGURES}
    figures["over_bound"] = len(outage.get("over_bound", ()))
    return figures


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` to 3 decimals; None when either is unknown or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def _direction(reports: Mapping[str, Mapping], direction: str) -> dict:
    entry = {mode: _figures(reports[mode]["outages"][direction]) for mode in MODES}
    entry["ratio_p95"] = ratio(*(entry[mode]["p95"] for mode in MODES))
    entry["ratio_back_p95"] = ratio(*(entry[mode]["back_p95"] for mode in MODES))
    return entry


def serving_after_fault(data: Mapping) -> float | None:
    """Real-equivalent seconds from the fault to the slave's first ``serving`` at or after it; None: never.

    ``slave_serving_since`` holds monotonic times; the slave's events carry the
    wall clock the fault is dated by.
    """
    fault = (data.get("fault") or {}).get("wall")
    if fault is None:
        return None
    events = data.get("simulation", {}).get("slave_events", ())
    walls = [e["wall"] for e in events if e.get("mode") == SERVING and e["wall"] >= fault]
    if not walls:
        return None
    return round((min(walls) - fault) * data["time_scale"], 3)


def _rpo(data: Mapping) -> dict | None:
    rpo = data.get("rpo")
    if rpo is None:
        return None
    return {key: rpo[key] for key in ("users", "registered_on_slave", "called_on_slave")}


def _run(data: Mapping) -> dict:
    return {"verdict": data["verdict"], "reasons": list(data.get("reasons", ())),
            "slave_serving_after_fault": serving_after_fault(data), "rpo": _rpo(data)}


def compare(reports: Mapping[str, Mapping], report_dirs: Mapping[str, str] | None = None) -> dict:
    """The two runs' ``report.json`` (by mode) side by side; ``report_dirs``: where each run's files are.

    Raises ValueError when a mode is missing or the runs differ in phones,
    scenario or time scale.
    """
    _checked(reports)
    runs = {mode: _run(reports[mode]) for mode in MODES}
    first = reports[MODES[0]]
    return {
        "verdict": PASS if all(run["verdict"] == PASS for run in runs.values()) else FAIL,
        "phones": first["phones"],
        "scenario": first.get("simulation", {}).get("scenario"),
        "time_scale": first["time_scale"],
        "directions": {direction: _direction(reports, direction) for direction in DIRECTIONS},
        "runs": runs,
        "report_dirs": dict(report_dirs or {}),
    }


# --------------------------------------------------------------------------- the table


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _cell(figures: Mapping) -> str:
    """``p50/p95/max``; ``never`` when phones never came back and the p95 with them."""
    if figures["never"] and figures["p95"] is None:
        return "never"
    text = "/".join(_seconds(figures[key]) for key in ("p50", "p95", "max"))
    return f"{text} ({figures['never']} never)" if figures["never"] else text


def _rows(result: Mapping) -> list[tuple[str, ...]]:
    rows = [("direction", *(f"{mode} p50/p95/max" for mode in MODES), f"p95 {'/'.join(MODES)}")]
    for direction, entry in result["directions"].items():
        ratio_p95 = entry["ratio_p95"]
        rows.append((direction, *(_cell(entry[mode]) for mode in MODES),
                     "-" if ratio_p95 is None else f"{ratio_p95:.2f}"))
    return rows


def _rpo_text(rpo: Mapping | None) -> str:
    if rpo is None:
        return "-"
    users = rpo["users"]
    return (f"{rpo['registered_on_slave']}/{users} new users registered, "
            f"{rpo['called_on_slave']}/{users} called on the slave")


def _per_mode(result: Mapping, text: Callable[[Mapping], str]) -> str:
    return "; ".join(f"{mode} {text(result['runs'][mode])}" for mode in MODES)


def format_table(result: Mapping) -> str:
    """The comparison as a terminal table: a row per direction, then the slave, the RPO, the verdicts."""
    lines = aligned(_rows(result))
    for direction, entry in result["directions"].items():
        if any(entry[mode].get(key) is not None for mode in MODES for key in BACK):
            backs = "; ".join(f"{mode} {'/'.join(_seconds(entry[mode].get(key)) for key in BACK)}" for mode in MODES)
            lines.append(f"{direction} back after the fault (first call through, p50/p95/max): {backs}")
    serving = _per_mode(result, lambda run: "-" if run["slave_serving_after_fault"] is None
                        else f"{run['slave_serving_after_fault']:.0f} s")
    lines.append(f"slave serving after the fault (real-equivalent): {serving}")
    lines.append(f"configuration RPO: {_per_mode(result, lambda run: _rpo_text(run['rpo']))}")
    lines.append(f"verdicts: {_per_mode(result, lambda run: run['verdict'])}")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the two runs


def run_both(options: Options, simulate: Callable[[Options], tuple], out: TextIO) -> tuple[dict, dict]:
    """Run ``simulate`` once per mode, the second on the cluster the first left; compare; write comparison.json.

    ``simulate(options)`` returns ``(outcome, table_text)`` and writes
    ``report.json`` into ``options.report_dir``; each run gets
    ``<report-dir>/<mode>``.  Returns the comparison and
    ``{mode: (outcome, table_text)}``.  A run's ``cluster.ClusterError``
    propagates: nothing is compared then.
    """
    base = Path(options.report_dir)
    outcomes, reports, dirs = {}, {}, {}
    for number, mode in enumerate(MODES, start=1):
        directory = base / mode
        out.write(f"run {number} of {len(MODES)}: replication {mode}, report in {directory}\n")
        out.flush()
        outcomes[mode] = simulate(dataclasses.replace(options, replication=mode, report_dir=str(directory),
                                                      reuse=options.reuse if number == 1 else True))
        reports[mode] = json.loads((directory / "report.json").read_text())
        dirs[mode] = str(directory)
    result = compare(reports, dirs)
    write_atomic(base / COMPARISON, (json.dumps(result, sort_keys=True, indent=2) + "\n").encode())
    return result, outcomes
