"""xivo-sync [-i | --failback]: files between the master and the slave, over ssh."""

from __future__ import annotations

import sys
import time

from plumbum import cli

from . import Command, run
from .. import metrics, notify, paths, role, runstate, settings, sync, system
from ..errors import OperationFailed

LOCK = "sync.lock"


class Sync(Command):
    """Copy the master's configuration directories to the slave (rsync over ssh).

    Runs on the master, every hour from cron.  The [sync] directories
    (/etc/asterisk/extensions_extra.d, /etc/xivo/asterisk, ...) are copied with
    `rsync -aR --delete-after` to the slave named in /etc/xivo/ha.conf, as root,
    with the key /root/.ssh/xivo_id_rsa: a file deleted on the master disappears
    from the slave, files outside those directories are never touched.  A directory
    missing on the master is skipped with a warning.

    -i first pins the slave's ssh host key in /var/lib/xivo-ha/known_hosts: it
    shows its fingerprint and asks for confirmation on a terminal, or takes
    --host-key-fingerprint SHA256:... (on the slave: ssh-keygen -lf
    /etc/ssh/ssh_host_ed25519_key.pub); every later ssh checks it strictly.  It then
    creates the ed25519 key (when absent) and installs it in the slave's
    /root/.ssh/authorized_keys as
    command="/usr/lib/xivo-ha/peer-command",from="<master>",restrict (the forced
    command allows only what the master runs); ssh asks for the slave's root
    password once.

    --failback, run on the master once it is back in charge, brings back what the
    slave recorded meanwhile ([sync] failback_directories: voicemail, recordings).
    It never deletes anything and never replaces a master file by an older one.
    Voicemail messages are copied whole; one whose number is taken on the master
    by another message gets the next free number (nothing is lost), and one
    already on the master is not copied twice.  Every copied file is listed.

    One run at a time: every form takes /var/lib/xivo-ha/sync.lock (a second run
    fails at once, exit 1).  SIGTERM, SIGINT or SIGHUP stop the run like a failure:
    the failback staging copy is removed.

    Exit 0 done, 1 failed (the reason is on stderr, in syslog, and mailed to root
    when an MTA is installed), 2 bad input.
    """

    PROGNAME = "xivo-sync"

    init = cli.Flag(
        ["-i", "--init"],
        help="Create /root/.ssh/xivo_id_rsa if needed and authorize it on the slave (asks its root password)",
    )
    host_key_fingerprint = cli.SwitchAttr(
        ["--host-key-fingerprint"], str, requires=["-i"],
        help="With -i: the slave's host key fingerprint (SHA256:..., from `ssh-keygen -lf "
             "/etc/ssh/ssh_host_ed25519_key.pub` on the slave), instead of confirming it on a terminal",
    )
    failback_mode = cli.Flag(
        ["--failback"],
        excludes=["-i"],
        help="Bring back from the slave the voicemail and recordings it kept while the master was down",
    )
    password_from_env = cli.Flag(
        ["--password-from-env"],
        requires=["-i"],
        help="With -i: read the slave's password from the environment variable SSHPASS (uses sshpass), "
             "for unattended setups",
    )

    def main(self):
        logger = self.log()
        config = settings.load()
        current = role.read()
        if current.role is not role.Role.MASTER:
            raise OperationFailed(
                f"this node is not the master (its role is {current.role.value} in "
                f"{paths.node(paths.HA_CONF)}): xivo-sync runs on the master, after `xivo-ha enable master`"
            )
        remote = sync.Remote.from_settings(config, current.remote_address)
        with system.exclusive_lock(paths.state(LOCK), "xivo-sync"), system.interruptible(as_failure=True):
            return self._main(remote, config, logger)

    def _main(self, remote, config, logger) -> int:
        if self.init:
            sentence = sync.init_key(remote, self.password_from_env, progress=logger.debug,
                                     fingerprint=self.host_key_fingerprint,
                                     confirm=_ask if sys.stdin.isatty() else None)
            print(sentence[0].upper() + sentence[1:])
            logger.info("xivo-sync -i: %s", sentence)
            return 0
        if self.failback_mode:
            return self._failback(remote, config, logger)
        return self._push(remote, config, logger)

    def _push(self, remote, config, logger) -> int:
        return _job(
            "sync", logger, "file synchronization failed",
            "Run `xivo-sync --verbose` on the master to retry and see each step.",
            lambda: sync.push(remote, config.sync.directories, progress=logger.debug),
        )

    def _failback(self, remote, config, logger) -> int:
        def show(outcome) -> None:
            for action in outcome.actions:
                if action.kind == "keep":
                    logger.debug("%s", action.describe())
                else:
                    print(action.describe())

        return _job(
            "failback", logger, "failback copy failed",
            "Nothing was deleted; rerun `xivo-sync --failback --verbose` on the master.",
            lambda: sync.failback(remote, config.sync.failback_directories, progress=logger.debug),
            show,
        )


def _ask(sentence: str) -> bool:
    print(sentence[0].upper() + sentence[1:] + ".")
    return input("Is this the slave's key? Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` "
                 "run there [y/N] ").strip().lower() in ("y", "yes")


def _job(job, logger, failure, advice, work, show=lambda outcome: None) -> int:
    """Run one sync job: record its result, warn, print its sentence, mail root on failure."""
    started = time.monotonic()
    try:
        outcome = work()
    except OperationFailed as exc:
        runstate.record(job, "failed", time.monotonic() - started, str(exc))
        notify.failure(logger, failure, f"{failure[0].upper()}{failure[1:]}: {exc}", advice=advice)
        return 1
    for warning in outcome.warnings:
        logger.warning("warning: %s", warning)
    show(outcome)
    runstate.record(job, "success", time.monotonic() - started, outcome.sentence)
    print(outcome.sentence[0].upper() + outcome.sentence[1:])
    logger.info("%s", outcome.sentence)
    return 0


def main(argv=None) -> int:
    return metrics.after(run(Sync, argv))
