"""Command-line front ends: one plumbum.cli Application per command, kept thin."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Type

from plumbum import cli
from plumbum.cli.application import ShowHelp, ShowHelpAll, ShowVersion
from plumbum.cli.switches import SwitchError

from .. import __version__, log
from ..errors import EXIT_USAGE, UsageError, XivoHaError


class Command(cli.Application):
    """Base for every xivo-ha command: version, verbose switch, logging, errors as one line.

    Logging (stderr, syslog, the log file) is set up once per process when the first
    command object is made; ``-v`` on a command or on its group shows debug lines.
    """

    VERSION = __version__

    def __init__(self, executable):
        super().__init__(executable)
        log.setup()

    @cli.switch(["-v", "--verbose"], help="Also print progress and debug details on stderr")
    def verbose(self):
        log.setup(verbose=True)

    def log(self) -> logging.Logger:
        return log.LOGGER

    # plumbum prints a wrong command line on stdout, with the whole help: here it goes to
    # bad_command_line (by default one line on stderr, exit 2, like every other bad input).
    def _parse_args(self, argv):
        try:
            return super()._parse_args(argv)
        except (ShowHelp, ShowHelpAll, ShowVersion):
            raise
        except SwitchError as exc:
            return self.bad_command_line(exc, ({}, []))

    def _validate_args(self, swfuncs, tailargs):
        try:
            return super()._validate_args(swfuncs, tailargs)
        except (ShowHelp, ShowHelpAll, ShowVersion):
            raise
        except SwitchError as exc:
            return self.bad_command_line(exc, ([], []))

    def bad_command_line(self, exc: SwitchError, nothing: tuple):
        """What a wrong command line does: raise a one-line UsageError.  A command that answers
        otherwise (the monitoring plugin) overrides it and returns ``nothing`` (no switch, no
        argument) to reach its main."""
        first = (str(exc).splitlines() or [""])[0].rstrip(":") or "wrong command line"
        raise UsageError(f"{first[0].lower()}{first[1:]}: see `{self.PROGNAME} --help`") from None


class Group(Command):
    """A command made of sub-commands: without one, help on stderr and exit 2.

    ``UNKNOWN`` is the error for an unknown sub-command, ``{!r}`` standing for it.
    """

    UNKNOWN = "unknown command {!r}"

    def main(self, *args):
        if args:
            raise UsageError(self.UNKNOWN.format(args[0]))
        if not self.nested_command:
            with contextlib.redirect_stdout(sys.stderr):
                self.help()
            return EXIT_USAGE
        return None


def run(app: Type[cli.Application], argv: list[str] | None = None) -> int:
    """Run ``app``; an :class:`XivoHaError` becomes ``<prog>: <message>`` and its exit code."""
    argv = list(sys.argv if argv is None else argv)
    try:
        _, code = app.run(argv, exit=False)
    except XivoHaError as exc:
        prog = app.PROGNAME if isinstance(app.PROGNAME, str) else "xivo-ha"
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `xivo-ha --help | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0 if code is None else int(code)
