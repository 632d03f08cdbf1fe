"""The `forgeci` command: one argparse program whose subcommands are thin wrappers over package functions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from client.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_now
from config.errors import ConfigError, ForgeciError

CONFIG_HELP = "settings file (default: $FORGECI_CONFIG, then ./forgeci.toml)"
SERVER_HELP = "the server (default: $FORGECI_SERVER, then http://127.0.0.1:8080); token: $FORGECI_API_TOKEN"


def default_server() -> str:
    return os.environ.get("FORGECI_SERVER") or "http://127.0.0.1:8080"


def cmd_init(args: argparse.Namespace) -> int:
    from config.starter import write_starter

    path = Path(args.path)
    if args.run:  # before writing anything: `forgeci run` needs the top of a git checkout
        from runner.checkout import checkout_top

        checkout_top(path.resolve())
    written = write_starter(path, force=args.force)
    print(f"wrote {written}", flush=True)
    if not args.run:
        return EXIT_OK
    print(f"running it once with `forgeci run {args.path}`:", flush=True)
    return run_checkout(args.config, path)


def cmd_config_check(args: argparse.Namespace) -> int:
    from config.check import check_file

    if args.file:
        target = Path(args.file)
    else:
        from config.settings import find_settings_file

        found = find_settings_file(args.config, os.environ)
        target = found if found else Path(".forgeci.toml")
    issues = check_file(target)
    for issue in issues:
        print(issue, file=sys.stderr)
    if issues:
        print(f"{len(issues)} error{'s' if len(issues) != 1 else ''} in {target}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{target}: ok")
    return EXIT_OK


def cmd_image_build(args: argparse.Namespace) -> int:
    from config.settings import load_settings
    from runner.images import build_job_image, default_containerfile
    from runner.podman_user import PodmanUser

    settings = load_settings(args.config)
    user = PodmanUser.resolve(settings.runner.podman_user)
    containerfile = Path(args.file) if args.file else default_containerfile()
    if not containerfile.is_file():
        raise ConfigError(f"no Containerfile at {containerfile}")
    build_job_image(user, args.tag or settings.runner.image, containerfile,
                    ca_bundle=settings.runner.ca_bundle, force=args.force)
    return EXIT_OK


def setup_logging() -> None:
    import logging

    logging.basicConfig(level=os.environ.get("FORGECI_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.app import create_app
    from config.settings import env_value, load_settings
    from runner.errors import InstanceLocked

    settings = load_settings(args.config)
    host, port = settings.server.host, settings.server.port
    if not is_loopback(host) and not env_value(settings.server.api_token_env, os.environ):
        raise ConfigError(
            f"refusing to listen on {host} without an API token: set {settings.server.api_token_env} "
            f"(e.g. export {settings.server.api_token_env}=$(openssl rand -hex 32)) or listen on 127.0.0.1"
        )
    setup_logging()
    app = create_app(settings)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    announce = f"forgeci listening on {url} (data in {settings.data_dir}); Ctrl-C stops"
    try:
        web.run_app(app, host=host, port=port, print=lambda _: print(announce, flush=True), access_log=None,
                    handle_signals=True, shutdown_timeout=10)
    except InstanceLocked as exc:  # a usage error: this data dir already has its server
        print(f"forgeci: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_run(args: argparse.Namespace) -> int:
    return run_checkout(args.config, Path(args.path), step=args.step, jobs=args.job, with_needs=args.with_needs,
                        parallel=args.parallel, timings=args.timings)


def run_checkout(config: str | None, path: Path, *, step: str | None = None, jobs: Sequence[str] = (),
                 with_needs: bool = False, parallel: int | None = None, timings: bool = False) -> int:
    """`forgeci run` (and `forgeci init --run`): the checkout's pipeline on this machine's engine; `timings`:
    print every phase's time after the summary (`--timings`)."""
    import asyncio
    import time

    from runner.timings import Timings, process_age

    timed = Timings(since_process_start=True) if timings else None
    if timed is not None:
        timed.add("start-up (python, forgeci_cli)", process_age())
    mark = time.monotonic()
    from config.settings import load_settings
    from runner.local import run_local

    if timed is not None:
        timed.add("imports (runner)", time.monotonic() - mark)
        mark = time.monotonic()
    settings = load_settings(config)
    if timed is not None:
        timed.add("settings", time.monotonic() - mark)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    run = asyncio.run(run_local(settings, path, step=step, jobs=jobs, with_needs=with_needs, parallel=parallel,
                                timings=timed))
    return EXIT_OK if run.succeeded else EXIT_FAILED


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (`--parallel`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def cmd_tui(args: argparse.Namespace) -> int:
    import asyncio

    from client.api import Client
    from client.errors import TOKEN_ENV
    from tui.app import ForgeciApp

    check_server(args.server)

    async def run() -> None:
        async with Client(args.server, os.environ.get(TOKEN_ENV) or None, user_agent="forgeci-tui") as client:
            await ForgeciApp(client).run_async()

    asyncio.run(run())
    return EXIT_OK


def cmd_debug(args: argparse.Namespace) -> int:
    """A container on the job's snapshot, on the server host: its exit code becomes ours."""
    from config.settings import load_settings
    from runner.snapshot import debug_job

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return debug_job(load_settings(args.config), args.job, command)


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Prune now, on the server host (the queue and store directly, no server needed)."""
    from config.settings import load_settings
    from runner.maintenance import open_parts, prune

    with open_parts(load_settings(args.config)) as parts:
        report = prune(parts)
    print(report.summary())
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_FAILED if report.errors else EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check this host for running forgeci: one line per check; exit 1 when one fails."""
    from config.settings import load_settings
    from runner.doctor import report, run_doctor
    from runner.service_units import read_env_file

    environ = dict(os.environ)
    if args.env_file:  # the service's environment file: the doctor sees the secrets the server will
        environ.update(read_env_file(Path(args.env_file)))
    settings = load_settings(args.config, environ)
    return report(run_doctor(settings, environ))


def cmd_db(args: argparse.Namespace) -> int:
    """backup FILE (online, verified), restore FILE (into a stopped instance), migrate (a stopped instance)."""
    from config.settings import load_settings
    from runner import backup, db_postgres
    from runner.layout import DataLayout

    settings = load_settings(args.config)
    if settings.queue.url:  # no queue file: backups are pg_dump's; migrate applies the schema (runner/db_postgres.py)
        return db_postgres.db_command(args.db_command, settings)
    layout = DataLayout(settings.data_dir)
    if args.db_command == "backup":
        info = backup.backup_database(layout.db, Path(args.file))
        print(f"backed up {layout.db} to {info.path} and verified it: {info.summary()}")
    elif args.db_command == "restore":
        done = backup.restore_database(Path(args.file), layout)
        print(f"restored {done.restored.path} into {layout.db}: {done.restored.summary()}"
              + (f"; migrated to schema version {done.schema_after}" if done.schema_after != done.restored.schema_version
                 else ""))
        if done.previous:
            print(f"the database it replaced: {done.previous}")
        if done.moved_logs:
            print(f"logs of jobs newer than the backup: {done.moved_logs}")
    else:
        result = backup.migrate_database(layout)
        if result.copy is None:
            print(f"{layout.db}: schema version {result.after}, up to date")
        else:
            print(f"{layout.db}: schema version {result.before} -> {result.after}; the database as it was: {result.copy}")
    return EXIT_OK


def cmd_service_install(args: argparse.Namespace) -> int:
    """Write the systemd unit of `forgeci serve` (or, with --agent, `forgeci agent`)."""
    from config.settings import Settings, load_settings
    from runner.service_units import DEFAULT_CONFIG, UnitOptions, install_units, next_steps, unit_args

    if args.agent and "agent" not in subcommands():
        raise ConfigError("this forgeci has no `forgeci agent` command yet: no agent unit to write")
    config = Path(args.config or os.environ.get("FORGECI_CONFIG") or DEFAULT_CONFIG).absolute()
    settings = load_settings(str(config)) if config.is_file() else Settings.default()
    if not config.is_file():
        print(f"note: {config} does not exist yet: write it before starting the service", file=sys.stderr)
    environment = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env expects NAME=VALUE, got {item!r}")
        environment[key] = value
    opts = UnitOptions(config=config, data_dir=settings.data_dir.absolute(), user=args.user,
                       env_file=Path(args.env_file).absolute(), environment=environment,
                       shutdown_grace=settings.runner.shutdown_grace, server=args.server or "", agent_args=unit_args(args))
    paths = install_units(opts, Path(args.dir), agent=args.agent)
    for path in paths:
        print(f"wrote {path}")
    print(next_steps(paths, opts, Path(args.dir)))
    return EXIT_OK


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def check_server(server: str) -> None:
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"--server must be an http:// or https:// URL, got {server!r}")


def client_command(args: argparse.Namespace) -> int:
    """submit, jobs, status, logs, cancel, retry, pipelines, pipeline, artifacts: calls to a server's HTTP API
    (client.commands, client.pipeline_commands, client.artifacts)."""
    from client import agents as client_agents, artifacts as client_artifacts, usage as client_usage
    from client import commands, schedules
    from client import pipeline_commands as pipelines
    from client.errors import TOKEN_ENV

    check_server(args.server)
    if args.command in ("cancel", "retry"):
        check_target(args)
    token = os.environ.get(TOKEN_ENV) or None
    on_pipeline = getattr(args, "pipeline", None) is not None and args.command in ("cancel", "retry")
    given = commands.parse_inputs(args.input) if args.command == "submit" else None
    work = {
        "submit": lambda c: commands.submit(c, args.repo, args.ref, args.sha, args.priority, args.follow, given),
        "jobs": lambda c: commands.jobs(c, args.status, args.repo, args.limit, args.json),
        "status": lambda c: commands.status(c, args.job, args.json),
        "logs": lambda c: commands.follow(c, args.job, follow=args.follow, service=args.service),
        "cancel": lambda c: pipelines.cancel(c, args.pipeline) if on_pipeline else commands.cancel(c, args.job),
        "retry": lambda c: (pipelines.retry(c, args.pipeline, args.failed) if on_pipeline
                            else commands.retry(c, args.job, args.from_failed_step)),
        "pipelines": lambda c: pipelines.pipelines(c, args.status, args.repo, args.limit, args.json),
        "pipeline": lambda c: pipelines.pipeline(c, args.id, args.json),
        "schedules": lambda c: schedules.schedules(c, args.run, args.json),
        "artifacts": lambda c: client_artifacts.artifacts(c, args.job, args.download[0] if args.download else None,
                                                          (args.download or [])[1:]),
        "usage": lambda c: client_usage.usage(c, args.by, args.month, args.csv),
        "agents": lambda c: client_agents.agents(c, args.json),
    }[args.command]
    return commands.run(args.server, token, work)


def check_target(args: argparse.Namespace) -> None:
    """cancel and retry take a JOB or --pipeline ID, not both; each its own options."""
    if (args.job is None) == (args.pipeline is None):
        raise ConfigError(f"forgeci {args.command}: give a JOB id or --pipeline ID (one of them)")
    if args.command == "retry" and args.pipeline is not None and args.from_failed_step:
        raise ConfigError("forgeci retry: --from-failed-step is for a job; a pipeline takes --failed")
    if args.command == "retry" and args.job is not None and args.failed:
        raise ConfigError("forgeci retry: --failed is for a pipeline (--pipeline ID)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgeci", description="Self-hosted CI/CD: forge webhooks to jobs in rootless Podman.")
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    # Every subcommand takes --config too, so that it may follow the subcommand; SUPPRESS keeps a --config given
    # before the subcommand when none follows it.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int] | None = None,
            within: argparse._SubParsersAction[argparse.ArgumentParser] = sub) -> argparse.ArgumentParser:
        p = within.add_parser(name, help=help, description=help, parents=[config])
        if func is not None:
            p.set_defaults(func=func)
        return p

    add("serve", "webhooks + API + dashboard + embedded runner", cmd_serve)
    p = add("run", "run a local checkout's pipeline, like `act`, on the same engine", cmd_run)
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--job", metavar="NAME", action="append", default=[],
                   help="run only this job (all its matrix members) or one member by display name; repeatable")
    p.add_argument("--with-needs", action="store_true",
                   help="also run what the selected jobs need, transitively (else their needs count as satisfied)")
    p.add_argument("--step", metavar="NAME", help="run only this step of the one selected job")
    p.add_argument("--parallel", metavar="N", type=positive_int, default=None,
                   help="run at most N jobs at once (default: queue.max_concurrent)")
    p.add_argument("--timings", action="store_true",
                   help="print how long each phase took (start-up, Podman service, container, steps, clean-up)")
    add_client_commands(add)
    p = add("debug", "a shell (or CMD) inside the job's snapshot, on the server host", cmd_debug)
    p.add_argument("job", type=int)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD...: run this instead of a shell")
    p = add("tui", "the Textual operator console", cmd_tui)
    p.add_argument("--server", default=None, help="the server (default: $FORGECI_SERVER, then http://127.0.0.1:8080)")
    p = add("init", "write a starter .forgeci.toml for this repository", cmd_init)
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--force", action="store_true", help="overwrite an existing .forgeci.toml")
    p.add_argument("--run", action="store_true", help="then run it once with `forgeci run`; its exit code is ours")
    image_sub = add("image", "job images").add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = add("build", "build the default job image from the Containerfile", cmd_image_build, image_sub)
    b.add_argument("--file", metavar="CONTAINERFILE")
    b.add_argument("--tag", help="image name (default: runner.image)")
    b.add_argument("--force", action="store_true", help="rebuild even when the image is up to date")
    add("maintenance", "prune old snapshots, caches and jobs now", cmd_maintenance)
    config_sub = add("config", "settings and pipeline files").add_subparsers(dest="config_command", metavar="ACTION",
                                                                              required=True)
    c = add("check", "validate a forgeci.toml or .forgeci.toml", cmd_config_check, config_sub)
    c.add_argument("file", nargs="?")
    add_ops_commands(add)
    from runner.agent.cli import add_agent_commands

    add_agent_commands(add, positive_int, client_command, SERVER_HELP)
    return parser


def add_ops_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Running it on a server: doctor, db backup|restore|migrate, service install."""
    from runner.service_units import DEFAULT_DIR, DEFAULT_ENV_FILE, add_unit_options

    p = add("doctor", "check this host: Podman, its user, storage, the job image, data dir, store, forges", cmd_doctor)
    p.add_argument("--env-file", metavar="FILE", help="read variables from the service's environment file too")
    db_sub = add("db", "the queue database").add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = add("backup", "copy the queue database to FILE while the server runs (SQLite's online backup), verified",
            cmd_db, db_sub)
    p.add_argument("file")
    p = add("restore", "put a backup FILE in place as the queue database (the server must be stopped)", cmd_db, db_sub)
    p.add_argument("file")
    add("migrate", "bring the queue database to this forgeci's schema, keeping a copy (server stopped)", cmd_db, db_sub)
    service_sub = add("service", "systemd units").add_subparsers(dest="service_command", metavar="ACTION",
                                                                 required=True)
    p = add("install", "write the systemd unit of forgeci serve (or --agent)", cmd_service_install, service_sub)
    p.add_argument("--agent", action="store_true", help="the unit of `forgeci agent` instead")
    p.add_argument("--server", help="the agent's server URL")
    add_unit_options(p, positive_int)
    p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"where to write it (default: {DEFAULT_DIR})")
    p.add_argument("--user", default="root", help="the account it runs as (default: root, which runs Podman as "
                                                  "runner.podman_user)")
    p.add_argument("--env-file", default=str(DEFAULT_ENV_FILE), help="the environment file with the secrets "
                                                                     f"(default: {DEFAULT_ENV_FILE})")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an extra variable (repeatable)")


def add_client_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The commands that call a server's HTTP API: submit, jobs, status, cancel, logs, retry, pipelines, pipeline."""
    p = add("submit", "submit a job to a server", client_command)
    p.add_argument("--repo", required=True, help="clone URL, or a path on the server")
    p.add_argument("--ref", required=True, help="branch, tag or full ref")
    p.add_argument("--sha", help="exact commit (default: the ref's head)")
    p.add_argument("--priority", type=int, help="0..10, higher runs first")
    p.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                   help="an input of this manual run (repeatable); jobs see INPUT_<KEY>")
    p.add_argument("--follow", action="store_true",
                   help="print every job's log (prefixed with its name when there are several) until the pipeline "
                        "ends; exit 0 only if it succeeded")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("jobs", "list jobs, newest first", client_command)
    p.add_argument("--status", help="only jobs in this state")
    p.add_argument("--repo", help="only jobs of this repository")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("status", "show a job: state, steps, durations, cache", client_command)
    p.add_argument("job", type=int)
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("cancel", "cancel a job, or a whole pipeline with --pipeline ID", client_command)
    p.add_argument("job", type=int, nargs="?")
    p.add_argument("--pipeline", type=int, metavar="ID", help="cancel this pipeline: all its unfinished jobs")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("logs", "print a job's log", client_command)
    p.add_argument("job", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="until the job ends (resumes after a dropped connection)")
    p.add_argument("--service", metavar="NAME", default=None, help="the kept log of this service of the job instead")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("retry", "retry a finished job as a new job, or a finished pipeline with --pipeline ID", client_command)
    p.add_argument("job", type=int, nargs="?")
    p.add_argument("--from-failed-step", action="store_true")
    p.add_argument("--pipeline", type=int, metavar="ID",
                   help="retry this pipeline: a new pipeline at the same sha (with --failed: its failed jobs and the "
                        "ones they skipped, in the same pipeline)")
    p.add_argument("--failed", action="store_true", help="with --pipeline: only the jobs that failed")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("pipelines", "list pipelines, newest first", client_command)
    p.add_argument("--status", help="only pipelines in this state")
    p.add_argument("--repo", help="only pipelines of this repository")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("pipeline", "show a pipeline: its jobs as a tree by dependency depth, states, durations", client_command)
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("schedules", "list the server's cron schedules (next due, last pipeline), or run one now", client_command)
    p.add_argument("--run", metavar="NAME", help="run this schedule now")
    p.add_argument("--json", action="store_true", help="the API's JSON")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("artifacts", "list a job's artifacts, or download them (sha256 checked)", client_command)
    p.add_argument("job", type=int)
    p.add_argument("--download", nargs="+", metavar=("DIR", "PATH"),
                   help="fetch the files into DIR: all of them, or only the PATHs (files, folders or globs)")
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p = add("usage", "the usage report: minutes, jobs, stored bytes and costs, and each quota's use", client_command)
    p.add_argument("--by", choices=("owner", "repo", "user"), default="repo")
    p.add_argument("--month", help="a calendar month, UTC, like 2026-12 (default: this month so far)")
    p.add_argument("--csv", action="store_true", help="CSV, one line per owner, repository or user")
    p.add_argument("--server", default=None, help=SERVER_HELP)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "server", None) is None:
        args.server = default_server()
    code = dispatch(args)
    if argv is None and args.command == "run":  # the command itself, not a call from Python (tests)
        exit_now(code)
    return code


def dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ForgeciError as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
