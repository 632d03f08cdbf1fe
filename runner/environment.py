"""A job's environment: the server's secrets, who may have them, what logs mask, and how the variables layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from config.pipeline import Pipeline, Step
from config.settings import SecretSpec, Settings
from config.triggers import event_name
from runner.logs import Masker
from runner.models import Job, JobSpec
from runner.outputs import IN_CONTAINER as OUTPUT_IN_CONTAINER
from runner.repos import parse_repo


@dataclass(frozen=True)
class Secrets:
    """The server's `[secrets]` with the values its environment holds, and the git token: read once per runner."""

    specs: Mapping[str, SecretSpec]
    values: Mapping[str, str] = field(repr=False)  # name -> value, for the names whose variable is set
    git_token: str = field(default="", repr=False)

    @classmethod
    def resolve(cls, settings: Settings, environ: Mapping[str, str]) -> Secrets:
        """Each secret's value from the variable its `env` names; an unset or empty variable leaves it out."""
        values = {name: value for name, spec in settings.secrets.items() if (value := environ.get(spec.env))}
        return cls(dict(settings.secrets), values, environ.get(settings.git.token_env) or "")

    def masker(self) -> Masker:
        """Every configured secret is masked in every job's log, whether or not the job received it; so is the
        git token, which a clone's error output could echo."""
        return Masker([*self.values.values(), *([self.git_token] if self.git_token else [])])

    def granted(self, names: Iterable[str], spec: JobSpec, say: Callable[[str], None]) -> dict[str, str]:
        """The secrets among `names` that the job may have; `say` tells the job's log why each other one is not set.

        Fork pull requests never get any (their code is not the repository's); otherwise a secret's `repos`
        globs must match the repository's `owner/name`.
        """
        slug = parse_repo(spec.repo).slug
        given: dict[str, str] = {}
        for name in names:
            secret = self.specs.get(name)
            if secret is None:
                say(f"secret {name} is not configured on this server; not set")
            elif spec.fork:
                say(f"secret {name} withheld: fork pull requests never receive secrets")
            elif not secret.allows(slug):
                say(f"secret {name} withheld: {slug} is not in its repos")
            elif name not in self.values:
                say(f"secret {name}: its variable {secret.env} is not set on the server; not set")
            else:
                given[name] = self.values[name]
        return given


def forgeci_variables(job: Job, sha: str) -> dict[str, str]:
    """What every job sees whatever its pipeline says: `CI`, and forgeci's own description of the job."""
    spec = job.spec
    return {"CI": "true", "FORGECI": "true", "FORGECI_JOB_ID": str(job.id), "FORGECI_REPO": spec.repo,
            "FORGECI_REF": spec.ref, "FORGECI_SHA": spec.sha or sha, "FORGECI_EVENT": event_name(spec.event),
            "FORGECI_OUTPUT": OUTPUT_IN_CONTAINER}


def job_environment(
    job: Job, pipeline: Pipeline, sha: str, cache_env: Mapping[str, str], secrets: Secrets,
    say: Callable[[str], None],
) -> dict[str, str]:
    """Submitted env < cache variables < pipeline env < secrets, then forgeci's variables over them all.

    `sha` is the commit checked out (for FORGECI_SHA when the job was submitted without one); the step's own env
    goes on top per step (step_environment).
    """
    granted = secrets.granted(pipeline.secrets, job.spec, say)
    return {**job.spec.env, **cache_env, **pipeline.env, **granted, **forgeci_variables(job, sha)}


def step_environment(job_env: Mapping[str, str], step: Step) -> dict[str, str]:
    """A step's environment: the job's, with the step's `env` over it (even over forgeci's variables)."""
    return {**job_env, **step.env}
