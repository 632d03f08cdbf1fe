"""A job's environment on its own: the layering, secret resolution, the repo-glob and fork rules, the masker."""

from __future__ import annotations

import dataclasses

from config.pipeline import pipeline_from_dict
from config.settings import SecretSpec, Settings
from runner.environment import Secrets, forgeci_variables, job_environment, step_environment
from runner.models import Job, JobSpec, JobState

SHA = "a" * 40


def settings(**secrets: SecretSpec) -> Settings:
    base = Settings.default()
    return dataclasses.replace(base, secrets=secrets, git=dataclasses.replace(base.git, token_env="HOST_GIT"))


def job(repo: str = "https://github.com/acme/app.git", **spec: object) -> Job:
    return Job(7, JobSpec(repo=repo, ref="refs/heads/main", **spec), JobState.running)  # type: ignore[arg-type]


def test_layers_submitted_cache_pipeline_secrets_then_forgeci_and_the_step_on_top() -> None:
    secrets = Secrets.resolve(settings(TOKEN=SecretSpec(env="HOST_TOKEN")), {"HOST_TOKEN": "s3cr3t-value"})
    pipeline = pipeline_from_dict({"env": {"P": "pipeline", "C": "pipeline", "TOKEN": "pipeline"},
                                   "secrets": ["TOKEN"],
                                   "steps": [{"name": "a", "run": "a", "env": {"P": "step", "FORGECI_REF": "x"}}]},
                                  "t")
    submitted = {"S": "submitted", "C": "submitted", "P": "submitted", "CI": "false"}
    env = job_environment(job(env=submitted), pipeline, SHA, {"C": "cache", "K": "cache"}, secrets, [].append)
    assert (env["S"], env["K"], env["C"], env["P"]) == ("submitted", "cache", "pipeline", "pipeline")
    assert env["TOKEN"] == "s3cr3t-value"  # a secret beats the pipeline's own value of that name
    assert env["CI"] == "true" and env["FORGECI_SHA"] == SHA and env["FORGECI_JOB_ID"] == "7"
    step = step_environment(env, pipeline.steps[0])
    assert step["P"] == "step" and step["FORGECI_REF"] == "x"  # the step's env goes over everything
    assert env["P"] == "pipeline"  # and leaves the job's alone


def test_forgeci_variables_prefer_the_submitted_sha() -> None:
    assert forgeci_variables(job(sha="b" * 40), SHA)["FORGECI_SHA"] == "b" * 40
    assert forgeci_variables(job(), SHA) == {
        "CI": "true", "FORGECI": "true", "FORGECI_JOB_ID": "7", "FORGECI_REPO": "https://github.com/acme/app.git",
        "FORGECI_REF": "refs/heads/main", "FORGECI_SHA": SHA, "FORGECI_EVENT": "manual", "FORGECI_OUTPUT": "/workspace/.forgeci-output"}


def test_secrets_go_only_where_their_rules_allow_and_the_log_says_why_not() -> None:
    secrets = Secrets.resolve(settings(
        OPEN=SecretSpec(env="HOST_OPEN"), ACME=SecretSpec(env="HOST_ACME", repos=("acme/*",)),
        OTHER=SecretSpec(env="HOST_OTHER", repos=("other/*",)), UNSET=SecretSpec(env="HOST_UNSET"),
        EMPTY=SecretSpec(env="HOST_EMPTY")),
        {"HOST_OPEN": "open-value", "HOST_ACME": "acme-value", "HOST_OTHER": "other-value", "HOST_EMPTY": ""})
    names = ["OPEN", "ACME", "OTHER", "UNSET", "EMPTY", "NOPE"]
    said: list[str] = []
    assert secrets.granted(names, job("git@github.com:acme/app.git").spec, said.append) == {
        "OPEN": "open-value", "ACME": "acme-value"}
    assert said == ["secret OTHER withheld: acme/app is not in its repos",
                    "secret UNSET: its variable HOST_UNSET is not set on the server; not set",
                    "secret EMPTY: its variable HOST_EMPTY is not set on the server; not set",
                    "secret NOPE is not configured on this server; not set"]
    said.clear()
    fork = job(event="pull_request", pr_number=3, base_ref="main", fork=True).spec
    assert secrets.granted(["OPEN", "ACME"], fork, said.append) == {}
    assert said == [f"secret {n} withheld: fork pull requests never receive secrets" for n in ("OPEN", "ACME")]


def test_the_masker_hides_every_configured_secret_and_the_git_token_and_the_repr_shows_none() -> None:
    secrets = Secrets.resolve(settings(A=SecretSpec(env="HOST_A"), B=SecretSpec(env="HOST_B", repos=("x/*",))),
                              {"HOST_A": "alpha-secret", "HOST_B": "bravo-secret", "HOST_GIT": "git-token-1"})
    masked = secrets.masker().mask("alpha-secret bravo-secret git-token-1 plain")
    assert masked == "*** *** *** plain"  # B too, although no job of acme/* may receive it
    assert not any(value in repr(secrets) for value in ("alpha-secret", "bravo-secret", "git-token-1"))
    assert Secrets.resolve(settings(), {}).masker().mask("nothing here") == "nothing here"
