"""GitHub-shaped push and pull_request payloads, which Gitea and Forgejo send too: one reading for all of them."""

from __future__ import annotations

from collections.abc import Callable

from bot.webhooks.jobs import Origin, Payload, Plan, PullRequest, Push

OriginOf = Callable[[Payload, str], Origin]  # a forge's reading of where a delivery (by its id) came from


def plan_push(payload: Payload, delivery: str, plan: Plan, origin_of: OriginOf, *, pusher: str, message: str,
              deleted: bool = False) -> None:
    """Plan the job of a branch or tag push; `pusher` and `message` are where each forge keeps them."""
    ref = payload.text("ref")
    after = payload.sha("after")
    if plan.skips_push(ref, after, deleted=deleted):
        return  # before reading the repository: a deletion's job needs none of it
    plan.push(Push(
        origin=origin_of(payload, delivery), clone_url=payload.text("repository.clone_url"), ref=ref, sha=after,
        pusher=pusher, message=message, before=payload.optional_sha("before"),
        default_branch=payload.optional_text("repository.default_branch", 255),
    ))


def plan_pull_request(payload: Payload, delivery: str, plan: Plan, origin_of: OriginOf, *,
                      actions: frozenset[str], fork: Callable[[Payload], bool]) -> None:
    """Plan the job of a pull request whose action is one of `actions`; `fork` tells, the forge's way, whether
    its head lives in another repository."""
    action = payload.text("action")
    if action not in actions:
        plan.skip(f"pull_request {action} runs nothing")
        return
    number = payload.integer("pull_request.number")
    from_fork = fork(payload)
    plan.pull_request(PullRequest(
        origin=origin_of(payload, delivery), clone_url=payload.text("repository.clone_url"), number=number,
        ref=f"refs/pull/{number}/head", sha=payload.sha("pull_request.head.sha"),
        base_ref=payload.text("pull_request.base.ref"), fork=from_fork, draft=payload.flag("pull_request.draft"),
        sender=payload.optional_text("sender.login", 100), title=payload.optional_text("pull_request.title"),
        action=action,
    ))
