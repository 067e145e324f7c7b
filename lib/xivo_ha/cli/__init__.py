"""Command-line front ends: one plumbum.cli Application per command, kept thin."""

from __future__ import annotations

import os
import sys
from typing import Type

from plumbum import cli

from .. import __version__, log
from ..errors import XivoHaError


class Command(cli.Application):
    """Base for every xivo-ha command: version, verbose switch, errors as one line."""

    VERSION = __version__

    verbose = cli.Flag(["-V", "--verbose"], help="Also print progress and debug details on stderr")

    def log(self):
        return log.setup(self.verbose)


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
