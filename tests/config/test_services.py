"""[services.NAME] in the pipeline model: defaults, mistakes with their key paths, a job's services over the top
level, matrix values in service image, env, command and ready, and writing them back."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.pipeline import parse_pipeline, pipeline_from_dict, pipeline_to_dict, pipeline_to_toml
from config.plan import expand
from config.services import DEFAULT_READY_TIMEOUT, MAX_SERVICES, Service

ISSUE_EXAMPLE = '''
[services.db]                    # top level: for every job; or [jobs.NAME.services.db] for one job
image = "localhost/forgeci-postgres:15"
env = { POSTGRES_PASSWORD = "ci" }
command = ["postgres", "-c", "fsync=off"]          # optional
ready = "pg_isready -h 127.0.0.1 -U postgres"      # optional: run inside the service until it exits 0
ready_timeout = "60s"

[[steps]]
run = "psql -h db -U postgres -c 'select 1'"
'''
STEP = '[[steps]]\nrun = "x"\n'


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        parse_pipeline(text, ".forgeci.toml")
    return {i.path: i.message for i in exc.value.issues}


def test_the_issues_example_parses_with_every_key() -> None:
    pipeline = parse_pipeline(ISSUE_EXAMPLE, ".forgeci.toml")
    assert pipeline.services == {"db": Service(
        image="localhost/forgeci-postgres:15", env={"POSTGRES_PASSWORD": "ci"},
        command=("postgres", "-c", "fsync=off"), ready="pg_isready -h 127.0.0.1 -U postgres", ready_timeout=60.0)}
    (job,) = expand(pipeline)
    assert job.pipeline.services == pipeline.services  # the one-job form runs as written


def test_defaults() -> None:
    service = parse_pipeline('[services.redis]\nimage = "r"\n' + STEP, "f").services["redis"]
    assert (service.env, service.command, service.ready, service.ready_timeout) == ({}, None, None,
                                                                                    DEFAULT_READY_TIMEOUT)
    assert parse_pipeline(STEP, "f").services == {}


@pytest.mark.parametrize(("text", "path", "message"), [
    ('[services.db]\nenv = {A = "1"}\n', "services.db.image", "missing required key (string)"),
    ('[services.db]\nimage = ""\n', "services.db.image", "expected a non-empty string, got ''"),
    ('[services.db]\nimage = "x"\nport = 5432\n', "services.db.port",
     "unknown key (expected one of image, env, command, ready, ready_timeout)"),
    ('[services.db]\nimage = "x"\nready_timeout = "soon"\n', "services.db.ready_timeout", None),
    ('[services.db]\nimage = "x"\ncommand = []\n', "services.db.command",
     "expected a non-empty array of strings, got an empty array"),
    ('[services.db]\nimage = "x"\ncommand = "postgres"\n', "services.db.command", None),
    ('[services.db]\nimage = "x"\nenv = { "A B" = "1" }\n', "services.db.env", None),
    ('[services.my_db]\nimage = "x"\n', "services.my_db", None),
    ('[services.-db]\nimage = "x"\n', 'services.-db', None),
    ('[services.db-]\nimage = "x"\n', 'services.db-', None),
    ('[services.localhost]\nimage = "x"\n', "services.localhost",
     '"localhost" is reserved: every container of the pod is localhost already'),
    ('[services.db]\nimage = "x"\n[services.DB]\nimage = "y"\n', "services.DB",
     '"db" and "DB" are the same host name'),
    ('services = "db"\n', "services", 'expected [services.NAME] tables, got \'db\''),
])
def test_each_service_mistake_names_its_key(text: str, path: str, message: str | None) -> None:
    found = errors(text + STEP)
    assert path in found, found
    if message is not None:
        assert found[path] == message
    if path in ("services.-db", "services.db-", "services.my_db"):
        assert "host name" in found[path] or "service names of" in found[path]


def test_too_many_services() -> None:
    text = "".join(f'[services.s{i}]\nimage = "x"\n' for i in range(MAX_SERVICES + 1)) + STEP
    assert errors(text) == {"services": f"at most {MAX_SERVICES} services per job, got {MAX_SERVICES + 1}"}
    half = MAX_SERVICES // 2 + 1
    top = "".join(f'[services.t{i}]\nimage = "x"\n' for i in range(half))
    own = "".join(f'[jobs.a.services.j{i}]\nimage = "x"\n' for i in range(half))
    assert errors(top + '[jobs.a]\nsteps = [{ run = "x" }]\n' + own) == {
        "jobs.a.services": f"at most {MAX_SERVICES} services per job, got {2 * half} with the top-level ones"}


def test_a_jobs_services_replace_the_top_levels_by_name_and_add_to_them() -> None:
    pipeline = parse_pipeline('''
[services.db]
image = "top-db"
[services.cache]
image = "top-cache"

[jobs.a]
steps = [{ run = "a" }]
[jobs.a.services.DB]
image = "own-db"
[jobs.a.services.queue]
image = "own-queue"

[jobs.b]
steps = [{ run = "b" }]
''', "f")
    planned = {job.name: job.pipeline.services for job in expand(pipeline)}
    assert {name: s.image for name, s in planned["a"].items()} == {"cache": "top-cache", "DB": "own-db",
                                                                   "queue": "own-queue"}
    assert {name: s.image for name, s in planned["b"].items()} == {"db": "top-db", "cache": "top-cache"}


MATRIX = '''
[services.db]
image = "localhost/forgeci-postgres:${{ matrix.pg }}"
env = { POSTGRES_PASSWORD = "ci-${{ matrix.pg }}" }
command = ["postgres", "-c", "max_connections=${{ matrix.conns }}"]
ready = "pg_isready -p ${{ matrix.port }}"

[jobs.test]
matrix = { pg = ["15", "16"], conns = [50], port = [5432] }
steps = [{ run = "pytest" }]
'''


def test_matrix_values_interpolate_in_service_image_env_command_and_ready() -> None:
    members = expand(parse_pipeline(MATRIX, "f"))
    db = {m.matrix["pg"]: m.pipeline.services["db"] for m in members}
    assert db["16"] == Service(image="localhost/forgeci-postgres:16", env={"POSTGRES_PASSWORD": "ci-16"},
                               command=("postgres", "-c", "max_connections=50"), ready="pg_isready -p 5432")
    assert db["15"].image == "localhost/forgeci-postgres:15"


def test_matrix_mistakes_in_services_name_their_keys() -> None:
    text = MATRIX.replace("matrix.port", "matrix.prot")
    assert errors(text) == {"services.db.ready": 'unknown matrix key "prot" (matrix keys: pg, conns, port) '
                                                 '(in job "test")'}
    own = '[jobs.a]\nsteps = [{ run = "a" }]\n[jobs.a.services.db]\nimage = "pg:${{ matrix.v }}"\n'
    assert errors(own) == {"jobs.a.services.db.image": '${{ matrix.v }}: job "a" has no matrix'}
    empty = ('[jobs.a]\nmatrix = { v = [""] }\nsteps = [{ run = "a" }]\n'
             '[jobs.a.services.db]\nimage = "${{ matrix.v }}"\n')
    assert errors(empty) == {"jobs.a.services.db.image": 'empty in "a (v=)"'}


def test_services_are_written_back_and_read_again() -> None:
    for text in (ISSUE_EXAMPLE, MATRIX, MATRIX.replace("[services.db]", "[jobs.test.services.db]").replace(
            "[jobs.test]\n", "[jobs.test]\n", 1)):
        pipeline = parse_pipeline(text, "f")
        assert parse_pipeline(pipeline_to_toml(pipeline), "again") == pipeline
        assert pipeline_from_dict(pipeline_to_dict(pipeline), "again") == pipeline
        for member in expand(pipeline):  # what the planner stores for each member and the runner reads back
            assert pipeline_from_dict(pipeline_to_dict(member.pipeline), "member") == member.pipeline
