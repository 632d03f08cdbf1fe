"""The exit codes of every `forgeci` subcommand, in one place (a tiny module: the CLI imports it at start-up)."""

import os
import sys

EXIT_OK = 0  # success
EXIT_FAILED = 1  # the job or the command failed
EXIT_USAGE = 2  # a usage, configuration or connection error: the command could not do its work


def exit_now(code: int) -> None:
    """End `forgeci run` once everything is written, without the interpreter's teardown of the ~500 modules it
    imported (0.1 s of a local run): its files are closed, its clean-up runs in a process of its own."""
    import logging  # here: the CLI imports this module at start-up

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)
