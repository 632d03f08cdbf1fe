"""The exit codes of every `forgeci` subcommand, in one place (a tiny module: the CLI imports it at start-up)."""

EXIT_OK = 0  # success
EXIT_FAILED = 1  # the job or the command failed
EXIT_USAGE = 2  # a usage, configuration or connection error: the command could not do its work
