"""The `forgeci agent` and `forgeci agents token create|revoke` commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from config.errors import ConfigError

TOKEN_ENV = "FORGECI_AGENT_TOKEN"


def read_token(token_file: str | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror or exc}") from None
    else:
        token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no agent token: set ${TOKEN_ENV} or pass --token-file F "
                          f"(forgeci agents token create NAME, on the server, makes one)")
    return token


def default_label() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-._") or "agent"


def cmd_agent(args: argparse.Namespace) -> int:
    import logging

    from config.labels import parse_labels
    from config.settings import load_settings
    from runner.agent.agent import Agent
    from runner.errors import InstanceLocked
    from runner.queue.agents import check_name

    if not args.server.startswith(("http://", "https://")):
        raise ConfigError(f"--server must be an http:// or https:// URL, got {args.server!r}")
    settings = load_settings(args.config)
    token = read_token(args.token_file)
    label = check_name(args.name or default_label(), "--name")
    logging.basicConfig(level=os.environ.get("FORGECI_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    labels = parse_labels(args.labels or "")
    agent = Agent(settings, args.server, token, label=label, max_concurrent=args.max_concurrent, labels=labels)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        print(f"forgeci agent {label} working for {args.server} (data in {settings.data_dir}; labels: "
              f"{', '.join(labels) or 'none'})", flush=True)
        return await agent.run()

    try:
        return asyncio.run(main())
    except InstanceLocked as exc:
        print(f"forgeci: {exc}", file=sys.stderr)
        return 2


def cmd_agents_token(args: argparse.Namespace) -> int:
    from config.settings import load_settings
    from runner.errors import QueueError
    from runner.backend import open_queue
    from runner.layout import DataLayout
    from runner.queue.agents import AGENT_PREFIX, check_name

    name = check_name(args.name)
    settings = load_settings(args.config)
    layout = DataLayout(settings.data_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    queue = open_queue(settings)  # the coordinator's: its data dir's SQLite file, or queue.url
    try:
        if args.token_command == "create":
            token = queue.create_agent_token(name)
            print(token)
            print(f"the token of agent {name}: give it to the agent as ${TOKEN_ENV} (or --token-file); "
                  f"it is not shown again", file=sys.stderr)
            return 0
        if not queue.revoke_agent_token(name):
            raise ConfigError(f"agent {name} has no token to revoke")
        requeued = []
        for job_id, runner_id in queue.agent_job_ids(f"{AGENT_PREFIX}{name}:"):
            try:
                queue.fail_infra(job_id, "the agent's token was revoked", runner_id)
                requeued.append(job_id)
            except QueueError:  # it ended meanwhile
                pass
        print(f"revoked the token of agent {name}" + (f"; requeued jobs {requeued}" if requeued else ""))
        return 0
    finally:
        queue.close()


def add_agent_commands(add: Callable[..., argparse.ArgumentParser], positive_int: Callable[[str], int],
                       list_agents: Callable[[argparse.Namespace], int], server_help: str) -> None:
    p = add("agent", "run the jobs of a coordinator on this machine (a remote runner)", cmd_agent)
    p.add_argument("--server", required=True, help="the coordinator's URL (https, or loopback, for secrets)")
    p.add_argument("--name", help="this agent's name in runner ids (default: the host name)")
    p.add_argument("--max-concurrent", type=positive_int, default=1, help="jobs at once (default 1)")
    p.add_argument("--labels", metavar="L,L", help="this agent's labels, e.g. linux,big: it takes the jobs whose "
                                                   "runs_on it has all of (and those without runs_on)")
    p.add_argument("--token-file", metavar="F", help=f"read the token from F (default: ${TOKEN_ENV})")
    agents = add("agents", "the server's agents: their labels, version, address and running jobs (GET /agents); "
                           "`token` manages their tokens (on the server host)", list_agents)
    agents.add_argument("--json", action="store_true", help="the API's JSON")
    agents.add_argument("--server", default=None, help=server_help)
    sub = agents.add_subparsers(dest="agents_command", metavar="ACTION", required=False)
    token = add("token", "agent tokens", within=sub)
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = add("create", "make a token for agent NAME and print it once (only its hash is kept)", cmd_agents_token, tsub)
    p.add_argument("name")
    p = add("revoke", "revoke agent NAME's token: its next call is refused and its jobs are requeued",
            cmd_agents_token, tsub)
    p.add_argument("name")
