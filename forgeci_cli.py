"""The `forgeci` command: one argparse program whose subcommands are thin wrappers over package functions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from config.errors import ConfigError, ForgeciError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Subcommands that a later issue brings; until then they say so and exit 2.
PLANNED: dict[str, str] = {
    "submit": "issue 6 (HTTP API and client commands)",
    "jobs": "issue 6 (HTTP API and client commands)",
    "status": "issue 6 (HTTP API and client commands)",
    "logs": "issue 6 (HTTP API and client commands)",
    "cancel": "issue 6 (HTTP API and client commands)",
    "retry": "issue 6 (HTTP API and client commands)",
    "debug": "issue 4 (workspace snapshots)",
    "tui": "issue 7 (Textual operator console)",
    "maintenance": "issue 4 (retention and pruning)",
}


def default_server() -> str:
    return os.environ.get("FORGECI_SERVER") or "http://127.0.0.1:8080"


def cmd_init(args: argparse.Namespace) -> int:
    from config.starter import write_starter

    path = write_starter(Path(args.path), force=args.force)
    print(f"wrote {path}")
    return EXIT_OK


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
    web.run_app(app, host=host, port=port, print=lambda _: print(announce, flush=True), access_log=None, handle_signals=True,
                shutdown_timeout=10)
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
    import asyncio

    from config.settings import load_settings
    from runner.local import run_local
    from runner.models import JobState

    settings = load_settings(args.config)
    path = Path(args.path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    outcome = asyncio.run(run_local(settings, path, step=args.step))
    return EXIT_OK if outcome.state is JobState.success else EXIT_FAILED


def planned(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"forgeci {name}: not built yet; {PLANNED[name]} brings it", file=sys.stderr)
        return EXIT_USAGE

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgeci", description="Self-hosted CI/CD: forge webhooks to jobs in rootless Podman.")
    parser.add_argument("--config", metavar="FILE", help="settings file (default: $FORGECI_CONFIG, then ./forgeci.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int] | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func or planned(name))
        return p

    add("serve", "webhooks + API + dashboard + embedded runner", cmd_serve)
    p = add("run", "run a local checkout's pipeline, like `act`, on the same engine", cmd_run)
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--step", metavar="NAME")
    p = add("submit", "submit a job to a server")
    p.add_argument("--repo", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--sha")
    p.add_argument("--priority", type=int)
    p.add_argument("--follow", action="store_true")
    for name, help in (("jobs", "list jobs"), ("status", "show a job"), ("cancel", "cancel a job")):
        p = add(name, help)
        if name != "jobs":
            p.add_argument("job", type=int)
    p = add("logs", "print a job's log")
    p.add_argument("job", type=int)
    p.add_argument("-f", "--follow", action="store_true")
    p = add("retry", "retry a job")
    p.add_argument("job", type=int)
    p.add_argument("--from-failed-step", action="store_true")
    p = add("debug", "a shell (or CMD) inside the job's snapshot, on the server host")
    p.add_argument("job", type=int)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = add("tui", "the Textual operator console")
    p.add_argument("--server", default=None)
    p = add("init", "write a starter .forgeci.toml for this repository", cmd_init)
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--force", action="store_true", help="overwrite an existing .forgeci.toml")
    p = add("image", "job images")
    image_sub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = image_sub.add_parser("build", help="build the default job image from the Containerfile")
    b.set_defaults(func=cmd_image_build)
    b.add_argument("--file", metavar="CONTAINERFILE")
    b.add_argument("--tag", help="image name (default: runner.image)")
    b.add_argument("--force", action="store_true", help="rebuild even when the image is up to date")
    add("maintenance", "prune old snapshots, caches and jobs now")
    p = add("config", "settings and pipeline files")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = config_sub.add_parser("check", help="validate a forgeci.toml or .forgeci.toml")
    c.set_defaults(func=cmd_config_check)
    c.add_argument("file", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "server", None) is None:
        args.server = default_server()
    try:
        return args.func(args)
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
