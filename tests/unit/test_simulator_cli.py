"""The simulator's command line: a wrong one is one line on stderr and exit 2, nothing run."""

from __future__ import annotations

import pytest

from xivo_ha_simulator import cli


@pytest.mark.parametrize("argv, names", [
    (["run", "--phones", "abc"], "phones"),
    (["run", "--phones", "0"], "phones"),
    (["run", "--scenario", "meteor"], "scenario"),
    (["run", "--time-scale", "-1"], "time-scale"),
    (["run", "--created-before-fault", "10"], "new-users"),
    (["run", "--sweep", "0"], "sweep"),
    (["run", "--no-such-switch"], "no-such-switch"),
    (["run", "extra"], "extra"),
    (["down", "--project"], "project"),
])
def test_a_wrong_command_line_is_one_line_on_stderr_and_exit_2(argv, names, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("xivo-ha-simulator: ") and names in lines[0], lines[0]
    assert "--help" in lines[0]


def test_help_still_prints_the_switches(capsys):
    assert cli.main(["run", "--help"]) == 0
    assert "--phones" in capsys.readouterr().out


def test_compare_replication_excludes_replication_and_nothing_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "Simulation", lambda *a, **k: pytest.fail("a usage error must not start a run"))
    argv = ["run", "--compare-replication", "--replication", "hourly", "--report-dir", str(tmp_path / "r")]
    assert cli.main(argv) == cli.EXIT_USAGE
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1 and "--compare-replication" in lines[0] and "--replication" in lines[0], out.err
    assert list(tmp_path.iterdir()) == []


def test_compare_replication_is_in_the_help(capsys):
    assert cli.main(["run", "--help"]) == 0
    assert "--compare-replication" in capsys.readouterr().out


def test_help_into_a_pipe_closed_early_is_no_traceback():
    """`xivo-ha-simulator run --help | head -1`: the reader leaves, the program exits quietly."""
    import subprocess
    import sys

    program = "import sys; from xivo_ha_simulator import cli; sys.exit(cli.main(['run', '--help']))"
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.read(1)
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == 0
    assert "Traceback" not in stderr, stderr
