"""The queue database's schema: the migration chain (DDL of every table) and the code that applies it on SQLite
(runner.queue.postgres applies it on PostgreSQL)."""

from __future__ import annotations

import sqlite3

from runner.errors import QueueError
from runner.queue.migration import Migration, statements
from runner.queue.postgres_triggers import JOB_CHANGED

# Schema migrations, applied in order; PRAGMA user_version counts the applied ones (on PostgreSQL the row of
# forgeci_schema). Never edit a released entry: append a new script (ALTER TABLE ... ADD COLUMN, CREATE TABLE ...)
# so existing data is kept. A plain string serves both backends (translated for PostgreSQL); where they differ
# (triggers, SQLite-only functions), a Migration keeps both texts side by side.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id                INTEGER PRIMARY KEY,  -- never reused: retention always keeps the newest job
        repo              TEXT    NOT NULL,
        ref               TEXT    NOT NULL,
        sha               TEXT,
        event             TEXT    NOT NULL,
        priority          INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 10),
        concurrency_group TEXT,
        fork              INTEGER NOT NULL DEFAULT 0,
        pr_number         INTEGER,
        base_ref          TEXT,
        pipeline          TEXT,                               -- JSON, or NULL: read .forgeci.toml after clone
        env               TEXT    NOT NULL DEFAULT '{}',      -- JSON
        meta              TEXT    NOT NULL DEFAULT '{}',      -- JSON
        state             TEXT    NOT NULL DEFAULT 'queued',
        -- Dispatch order is (priority DESC, seq, id): enqueue leaves seq at 0 so a priority is FIFO by id;
        -- a requeue sets it below the priority's minimum so a retried job goes to the front.
        seq               INTEGER NOT NULL DEFAULT 0,
        attempts          INTEGER NOT NULL DEFAULT 0,
        runner_id         TEXT,
        lease_expires     REAL,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        queued_at         REAL    NOT NULL,
        started_at        REAL,
        finished_at       REAL,
        error             TEXT,
        cache_hit         INTEGER
    );
    -- The one secondary index, partial so it stays as small as the queue rather than the history: the
    -- running jobs (counted for max_concurrent and the group check), then the queued ones in dispatch
    -- order (state DESC puts 'running' first). A claim moves an entry from the head of the queued part
    -- to the running part next to it, so a claim or a completion rewrites two pages: the row and one leaf.
    CREATE INDEX jobs_active ON jobs (state DESC, priority DESC, seq) WHERE state IN ('queued', 'running');
    CREATE TABLE steps (
        job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        idx         INTEGER NOT NULL,
        name        TEXT    NOT NULL,
        state       TEXT    NOT NULL,
        exit_code   INTEGER,
        started_at  REAL,
        finished_at REAL,
        PRIMARY KEY (job_id, idx)
    ) WITHOUT ROWID;
    """,
    # 2: the cache index (runner.cache) and workspace snapshots (runner.snapshot).
    """
    CREATE TABLE cache_entries (
        key        TEXT    PRIMARY KEY,            -- {repo}/{scope}/{hash}
        repo       TEXT    NOT NULL,
        scope      TEXT    NOT NULL,
        image      TEXT    NOT NULL,
        paths      TEXT    NOT NULL,               -- JSON list, for restore-keys fallbacks with the same paths
        object     TEXT    NOT NULL,               -- store key of the archive: unique per upload, so a racing
                                                   -- second upload of the key never replaces the indexed one
        size       INTEGER NOT NULL,
        checksum   TEXT    NOT NULL,               -- sha256 of the archive
        created_at REAL    NOT NULL,
        last_used  REAL    NOT NULL,
        hits       INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX cache_newest ON cache_entries (repo, scope, created_at DESC);
    CREATE INDEX cache_last_used ON cache_entries (last_used);
    CREATE TABLE snapshots (
        job_id           INTEGER PRIMARY KEY,      -- one per job: a later attempt's snapshot replaces it
        key              TEXT    NOT NULL,         -- snapshots/{jobId}/{sha}/{timestamp}.tar.zst
        sha              TEXT    NOT NULL,
        image            TEXT    NOT NULL,
        state            TEXT    NOT NULL,         -- the job's outcome when it was taken
        failed_step      INTEGER,                  -- index of the step that failed the job
        failed_step_name TEXT,
        size             INTEGER NOT NULL,
        checksum         TEXT    NOT NULL,
        created_at       REAL    NOT NULL
    );
    CREATE INDEX snapshots_created ON snapshots (created_at);
    """,
    # 3: webhook deliveries, so a redelivery answers with the jobs it already made (bot.webhooks).
    """
    CREATE TABLE deliveries (
        forge       TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        job_ids     TEXT NOT NULL DEFAULT '[]',   -- JSON list
        received_at REAL NOT NULL,
        PRIMARY KEY (forge, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_received ON deliveries (received_at);  -- pruning old ones is one index seek
    """,
    # 4: one metrics row per finished job (bot.metrics). A trigger writes it, so every path that ends a job
    # (complete, retries used up, a queued job cancelled) records one in the same transaction; kept in time
    # order apart from `jobs`, so a range query reads a small slice of a small table, and outlives job retention.
    Migration("""
    CREATE TABLE job_metrics (
        finished_at REAL    NOT NULL,
        job_id      INTEGER NOT NULL,
        state       TEXT    NOT NULL,
        duration    REAL,                          -- seconds of the last attempt; NULL when it never started
        steps       INTEGER NOT NULL,
        step_times  TEXT    NOT NULL DEFAULT '[]', -- JSON [[name, seconds or null], ...] in step order
        cache_hit   INTEGER,                       -- NULL: no cache restore was attempted
        PRIMARY KEY (finished_at, job_id)
    ) WITHOUT ROWID;
    CREATE TRIGGER job_metrics_on_finish AFTER UPDATE OF state ON jobs
    WHEN NEW.state NOT IN ('queued', 'running') AND OLD.state IN ('queued', 'running')
    BEGIN
        INSERT OR REPLACE INTO job_metrics (finished_at, job_id, state, duration, steps, step_times, cache_hit)
        SELECT coalesce(NEW.finished_at, julianday('now') * 86400 - 210866760000), NEW.id, NEW.state,
               NEW.finished_at - NEW.started_at, count(*), json_group_array(json_array(name, finished_at - started_at)),
               NEW.cache_hit
        FROM (SELECT name, started_at, finished_at FROM steps WHERE job_id = NEW.id ORDER BY idx);
    END;
    """, postgres="""
    CREATE TABLE job_metrics (
        finished_at DOUBLE PRECISION NOT NULL,
        job_id      BIGINT NOT NULL,
        state       TEXT   NOT NULL,
        duration    DOUBLE PRECISION,
        steps       BIGINT NOT NULL,
        step_times  TEXT   NOT NULL DEFAULT '[]',
        cache_hit   BIGINT,
        PRIMARY KEY (finished_at, job_id)
    );
    CREATE FUNCTION job_metrics_on_finish() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO job_metrics (finished_at, job_id, state, duration, steps, step_times, cache_hit)
        SELECT coalesce(NEW.finished_at, extract(epoch FROM clock_timestamp())), NEW.id, NEW.state,
               NEW.finished_at - NEW.started_at, count(*),
               coalesce(json_agg(json_build_array(name, finished_at - started_at) ORDER BY idx)::text, '[]'),
               NEW.cache_hit
        FROM steps WHERE job_id = NEW.id
        ON CONFLICT (finished_at, job_id) DO UPDATE SET state = EXCLUDED.state, duration = EXCLUDED.duration,
            steps = EXCLUDED.steps, step_times = EXCLUDED.step_times, cache_hit = EXCLUDED.cache_hit;
        RETURN NULL;
    END $$;
    CREATE TRIGGER job_metrics_on_finish AFTER UPDATE OF state ON jobs FOR EACH ROW
        WHEN (NEW.state NOT IN ('queued', 'running') AND OLD.state IN ('queued', 'running'))
        EXECUTE FUNCTION job_metrics_on_finish();
    """),
    # 5: pipelines of many jobs (runner/queue/pipelines.py). A job of a pipeline carries its name, its member
    # display name, its needs and `if`; it waits `blocked` (queued, not claimable) until its needs are done.
    # Jobs without a pipeline (older rows, tests) behave as before.
    """
    CREATE TABLE pipelines (
        id                INTEGER PRIMARY KEY,
        repo              TEXT    NOT NULL,
        ref               TEXT    NOT NULL,
        sha               TEXT,                          -- pinned by planning for every job of the pipeline
        event             TEXT    NOT NULL,
        spec              TEXT    NOT NULL,              -- JSON JobSpec of the trigger: what each job inherits
        state             TEXT    NOT NULL DEFAULT 'planning',
        concurrency_group TEXT,                          -- at most one pipeline of a group runs at a time
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        plan_attempts     INTEGER NOT NULL DEFAULT 0,
        plan_after        REAL    NOT NULL DEFAULT 0,    -- back-off after a failed fetch
        error             TEXT,
        created_at        REAL    NOT NULL,
        started_at        REAL,
        finished_at       REAL
    );
    CREATE INDEX pipelines_unfinished ON pipelines (concurrency_group, id)
        WHERE state IN ('planning', 'queued', 'running');
    ALTER TABLE jobs ADD COLUMN pipeline_id INTEGER REFERENCES pipelines (id) ON DELETE CASCADE;
    ALTER TABLE jobs ADD COLUMN name TEXT;
    ALTER TABLE jobs ADD COLUMN display TEXT;
    ALTER TABLE jobs ADD COLUMN needs TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN condition TEXT NOT NULL DEFAULT 'success';
    ALTER TABLE jobs ADD COLUMN continue_on_error INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN fail_fast INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN max_parallel INTEGER;
    ALTER TABLE jobs ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN cascaded INTEGER NOT NULL DEFAULT 0;  -- skipped because of its needs
    ALTER TABLE jobs ADD COLUMN outputs TEXT;                          -- JSON KEY -> VALUE from $FORGECI_OUTPUT
    CREATE INDEX jobs_pipeline ON jobs (pipeline_id) WHERE pipeline_id IS NOT NULL;
    ALTER TABLE deliveries ADD COLUMN pipeline_ids TEXT;               -- JSON ids of the pipelines it made
    """,
    # 6: the artifact index (runner/queue/artifacts.py): what each job kept, and every file of it.
    """
    CREATE TABLE artifacts (
        id          INTEGER PRIMARY KEY,
        job_id      INTEGER NOT NULL UNIQUE,  -- not a reference: the index outlives the job's row (retention keeps
                                              -- the pipeline's row while it has unexpired artifacts)
        pipeline_id INTEGER REFERENCES pipelines (id) ON DELETE CASCADE,
        job         TEXT    NOT NULL,
        display     TEXT    NOT NULL,
        repo        TEXT    NOT NULL,         -- runner.cache's repo id and scope: restores never cross them
        scope       TEXT    NOT NULL,
        paths       TEXT    NOT NULL,         -- JSON: the declared globs
        object      TEXT,                     -- store key of the archive; NULL: nothing kept (`error` says why, or
                                              -- nothing matched)
        size        INTEGER NOT NULL DEFAULT 0,
        raw_size    INTEGER,
        checksum    TEXT,                     -- sha256 of the archive
        file_count  INTEGER NOT NULL DEFAULT 0,
        total_size  INTEGER NOT NULL DEFAULT 0,
        error       TEXT,
        created_at  REAL    NOT NULL,
        expires_at  REAL    NOT NULL
    );
    CREATE INDEX artifacts_pipeline ON artifacts (pipeline_id) WHERE pipeline_id IS NOT NULL;
    CREATE INDEX artifacts_expires ON artifacts (expires_at);
    CREATE TABLE artifact_files (
        artifact_id INTEGER NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
        path        TEXT    NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT    NOT NULL,
        PRIMARY KEY (artifact_id, path)
    ) WITHOUT ROWID;
    """,
    # notifications (runner/queue/outbox.py): the outbox. A pipeline's end writes one row (target NULL) in the
    # transaction that ends it; the server fans it out to one row per matching [[notify]] target and delivers
    # those with retries. `pipelines_branch` finds a branch's latest pipelines (badges, "fixed").
    """
    CREATE TABLE notifications (
        id          INTEGER PRIMARY KEY,
        pipeline_id INTEGER NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
        target      TEXT,                     -- the [[notify]] target's name; NULL: not fanned out yet
        kind        TEXT,                     -- slack | discord | webhook | email (NULL for the pipeline's row)
        event       TEXT    NOT NULL,         -- success | failure | fixed | error | cancelled
        state       TEXT    NOT NULL DEFAULT 'pending',  -- pending | delivered | dropped | fanned
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     REAL    NOT NULL,         -- when it is due; pushed on while a delivery is under way
        error       TEXT,                     -- the last failed attempt's reason
        created_at  REAL    NOT NULL,
        done_at     REAL
    );
    CREATE INDEX notifications_due ON notifications (next_at) WHERE state = 'pending';
    CREATE INDEX notifications_pipeline ON notifications (pipeline_id);
    CREATE INDEX pipelines_branch ON pipelines (repo, ref, id);
    """,
    # the cron schedules' next due times (runner/queue/schedules.py): each fires once, across ticks and restarts.
    """
    CREATE TABLE schedules (
        name          TEXT PRIMARY KEY,       -- a [[schedules]] entry of forgeci.toml
        fingerprint   TEXT NOT NULL,          -- its cron, time zone and target: a change computes next_due again
        next_due      REAL,                   -- the next due time not fired yet; NULL: never due again
        last_due      REAL,                   -- the due time (or, run by hand, the time) of its last pipeline
        last_pipeline INTEGER,                -- not a reference: retention may prune the pipeline
        updated_at    REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # Several caches per job (runner/queue/caches.py): one row per entry and attempt, written by its restore and
    # completed by its save; kept apart from `jobs` (no reference) so the hit rate over entries outlives job
    # retention as job_metrics does. jobs.cache_hit becomes the job's summary: 1 every entry hit, 2 some did,
    # 0 none did (an older single-entry row reads the same: 1 hit, 0 miss). The older rows' results are copied
    # in as one entry each, so the hit rate over entries counts them too.
    """
    CREATE TABLE job_caches (
        job_id       INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        name         TEXT    NOT NULL,               -- the entry's name (`cache` for a single unnamed one)
        key          TEXT    NOT NULL,               -- the entry's own key ('' in rows copied from before)
        result       TEXT    NOT NULL CHECK (result IN ('hit', 'fallback', 'miss')),
        restored_key TEXT,                           -- what was restored: the key, or a fallback's
        size         INTEGER NOT NULL DEFAULT 0,     -- bytes of the restored archive
        seconds      REAL    NOT NULL DEFAULT 0,
        saved        TEXT,                           -- NULL: no save tried; saved | exists | empty | failed
        saved_size   INTEGER,
        save_seconds REAL,
        at           REAL    NOT NULL,               -- when it was restored (the hit rate's time)
        PRIMARY KEY (job_id, attempt, name)
    ) WITHOUT ROWID;
    CREATE INDEX job_caches_at ON job_caches (at);
    INSERT OR IGNORE INTO job_caches (job_id, attempt, name, key, result, at)
        SELECT job_id, 0, 'cache', '', CASE cache_hit WHEN 1 THEN 'hit' ELSE 'miss' END, finished_at
        FROM job_metrics WHERE cache_hit IS NOT NULL;
    CREATE INDEX cache_repo_lru ON cache_entries (repo, last_used);
    """,
    # quotas and usage (runner/queue/quotas.py, runner/queue/usage.py): the repository's `owner/repo` slug and
    # the triggering user, written at enqueue (temporary triggers of each connection call the one slug parser,
    # runner.repos); one usage row per attempt, kept 13 months (job_metrics: 8 days, last attempt only).
    Migration("""
    ALTER TABLE jobs ADD COLUMN slug TEXT;
    ALTER TABLE jobs ADD COLUMN user TEXT;
    ALTER TABLE pipelines ADD COLUMN slug TEXT;
    ALTER TABLE pipelines ADD COLUMN user TEXT;
    CREATE TABLE usage (
        id          INTEGER PRIMARY KEY,
        job_id      INTEGER NOT NULL,             -- not a reference: usage outlives the job's row
        attempt     INTEGER NOT NULL,
        pipeline_id INTEGER,
        slug        TEXT    NOT NULL,
        user        TEXT,
        runner      TEXT,                          -- the runner (embedded worker or agent) that ran the attempt
        state       TEXT    NOT NULL,              -- the job's state after the attempt; queued: retried
        started_at  REAL    NOT NULL,
        ended_at    REAL    NOT NULL,
        seconds     REAL    NOT NULL,
        infra_retry INTEGER NOT NULL DEFAULT 0     -- the attempt ended in an infrastructure fault and was retried
    );
    CREATE INDEX usage_ended ON usage (ended_at);
    """, postgres_after="""
    -- runner/queue/usage.py's temporary trigger, for good; its clock is the transaction's forgeci.now.
    CREATE FUNCTION forgeci_usage() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE e DOUBLE PRECISION := coalesce(NEW.finished_at, nullif(current_setting('forgeci.now', true), '')::float8,
                                           extract(epoch FROM clock_timestamp()));
    BEGIN
        INSERT INTO usage (job_id, attempt, pipeline_id, slug, "user", runner, state, started_at, ended_at, seconds,
                           infra_retry)
        VALUES (NEW.id, OLD.attempts, NEW.pipeline_id, coalesce(NEW.slug, ''), NEW."user", OLD.runner_id, NEW.state,
                OLD.started_at, e, greatest(0, e - OLD.started_at), (NEW.state = 'queued')::int);
        RETURN NULL;
    END $$;
    CREATE TRIGGER forgeci_usage AFTER UPDATE OF state ON jobs FOR EACH ROW
        WHEN (OLD.state = 'running' AND NEW.state <> 'running' AND OLD.started_at IS NOT NULL)
        EXECUTE FUNCTION forgeci_usage();
    """),
    # agent tokens (forgeci agents token create|revoke): only a token's sha256 is kept
    """
    CREATE TABLE agent_tokens (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # runner labels and the agent registry: a job's runs_on (copied from its pipeline JSON by a trigger, so every
    # way a job is written has it), and every agent as its last claim described it (GET /agents)
    Migration("""
    ALTER TABLE jobs ADD COLUMN runs_on TEXT;  -- JSON array of labels, NULL = any runner
    CREATE TRIGGER jobs_runs_on AFTER INSERT ON jobs
    WHEN NEW.pipeline IS NOT NULL AND json_array_length(NEW.pipeline, '$.runs_on') > 0
    BEGIN
        UPDATE jobs SET runs_on = json_extract(NEW.pipeline, '$.runs_on') WHERE id = NEW.id;
    END;
    CREATE TABLE agents (
        name           TEXT NOT NULL,               -- its token's name
        instance       TEXT NOT NULL,               -- its --name (the label in its lease ids)
        labels         TEXT NOT NULL DEFAULT '[]',  -- JSON array
        version        TEXT,
        address        TEXT,
        max_concurrent INTEGER,
        first_seen     REAL NOT NULL,
        last_seen      REAL NOT NULL,
        PRIMARY KEY (name, instance)
    );
    """, postgres="""
    ALTER TABLE jobs ADD COLUMN runs_on TEXT;
    CREATE FUNCTION forgeci_runs_on() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.pipeline IS NOT NULL AND jsonb_typeof(NEW.pipeline::jsonb -> 'runs_on') = 'array'
           AND jsonb_array_length(NEW.pipeline::jsonb -> 'runs_on') > 0 THEN
            NEW.runs_on := (NEW.pipeline::jsonb -> 'runs_on')::text;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER jobs_runs_on BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION forgeci_runs_on();
    CREATE TABLE agents (
        name           TEXT NOT NULL,
        instance       TEXT NOT NULL,
        labels         TEXT NOT NULL DEFAULT '[]',
        version        TEXT,
        address        TEXT,
        max_concurrent BIGINT,
        first_seen     DOUBLE PRECISION NOT NULL,
        last_seen      DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, instance)
    );
    """),
    # PostgreSQL only: SQLite ends every index with the rowid, so jobs_active gives the claim's whole order
    # (priority DESC, seq, id); PostgreSQL's index needs the id spelt out, or each claim sorts every queued job.
    Migration("", postgres="""
    DROP INDEX jobs_active;
    CREATE INDEX jobs_active ON jobs (state DESC, priority DESC, seq, id) WHERE state IN ('queued', 'running');
    """),
    # several coordinators on one PostgreSQL (runner/queue/cluster.py): the commit statuses' feed and the log
    # lines every coordinator can read. On PostgreSQL triggers write a status_changes row (and NOTIFY) for every
    # job and pipeline state change, so the one coordinator that posts statuses reads them from the database in
    # commit order, whichever coordinator made the change; SQLite (one coordinator) posts from its own events and
    # leaves both tables empty. log_chunks: a job's log lines in batches, as JSON Lines like its log file.
    Migration("""
    CREATE TABLE status_changes (
        id          INTEGER PRIMARY KEY,
        job_id      INTEGER,                -- a job's state change; NULL: a pipeline's
        pipeline_id INTEGER,                -- not references: a pruned job's change is simply skipped
        state       TEXT    NOT NULL,
        at          REAL    NOT NULL,
        done_at     REAL                    -- offered to the status reporter (kept a while for a takeover)
    );
    CREATE INDEX status_changes_due ON status_changes (id) WHERE done_at IS NULL;
    CREATE TABLE log_chunks (
        job_id  INTEGER NOT NULL,
        first_n INTEGER NOT NULL,
        last_n  INTEGER NOT NULL,
        lines   TEXT    NOT NULL,
        PRIMARY KEY (job_id, first_n)
    ) WITHOUT ROWID;
    """, postgres_after="""
    CREATE FUNCTION forgeci_status_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO status_changes (job_id, pipeline_id, state, at)
        VALUES (NEW.id, NEW.pipeline_id, NEW.state, extract(epoch FROM clock_timestamp()));
        PERFORM pg_notify('forgeci_status', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER forgeci_status_job_new AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION forgeci_status_job();
    CREATE TRIGGER forgeci_status_job AFTER UPDATE OF state, attempts ON jobs FOR EACH ROW
        WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.attempts IS DISTINCT FROM NEW.attempts)
        EXECUTE FUNCTION forgeci_status_job();
    CREATE FUNCTION forgeci_status_pipeline() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO status_changes (pipeline_id, state, at)
        VALUES (NEW.id, NEW.state, extract(epoch FROM clock_timestamp()));
        PERFORM pg_notify('forgeci_status', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER forgeci_status_pipeline_new AFTER INSERT ON pipelines FOR EACH ROW
        EXECUTE FUNCTION forgeci_status_pipeline();
    CREATE TRIGGER forgeci_status_pipeline AFTER UPDATE OF state ON pipelines FOR EACH ROW
        WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION forgeci_status_pipeline();
    """),
    # usage as one b-tree in end order (WITHOUT ROWID), not a rowid table and its usage_ended index: a completion
    # writes a page fewer. Key: end, job, attempt, and `seq` for a second end of one attempt number at one instant (a
    # retried pipeline numbers its jobs' attempts afresh). Rows kept. PostgreSQL drops id too and keeps its index. seq
    # is not the last column: SQLite 3.40's integrity_check misreads a WITHOUT ROWID table ending in a key column.
    Migration("""
    CREATE TABLE usage_by_end (job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL DEFAULT 0,
        pipeline_id INTEGER, slug TEXT NOT NULL, user TEXT, runner TEXT, state TEXT NOT NULL, started_at REAL NOT NULL,
        ended_at REAL NOT NULL, seconds REAL NOT NULL, infra_retry INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (ended_at, job_id, attempt, seq)) WITHOUT ROWID;
    INSERT INTO usage_by_end SELECT job_id, attempt,
        (SELECT count(*) FROM usage AS o WHERE o.ended_at = u.ended_at AND o.job_id = u.job_id AND o.attempt = u.attempt
                                           AND o.id < u.id),
        pipeline_id, slug, user, runner, state, started_at, ended_at, seconds, infra_retry FROM usage AS u;
    DROP TABLE usage;
    ALTER TABLE usage_by_end RENAME TO usage;
    """, postgres="ALTER TABLE usage ADD COLUMN seq BIGINT NOT NULL DEFAULT 0; ALTER TABLE usage DROP COLUMN id;"),
    # PostgreSQL only: the status triggers flag their session (undone by a rollback) instead of NOTIFYing, which
    # held a cluster-wide lock through the commit's WAL flush and serialized every state change behind one flush;
    # the committing connection sends the NOTIFY after its COMMIT (runner/queue/postgres.py, STATUS_FLAG).
    Migration("", postgres="""
    CREATE OR REPLACE FUNCTION forgeci_status_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO status_changes (job_id, pipeline_id, state, at)
        VALUES (NEW.id, NEW.pipeline_id, NEW.state, extract(epoch FROM clock_timestamp()));
        PERFORM set_config('forgeci.status_changed', 'y', false);
        RETURN NULL;
    END $$;
    CREATE OR REPLACE FUNCTION forgeci_status_pipeline() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO status_changes (pipeline_id, state, at)
        VALUES (NEW.id, NEW.state, extract(epoch FROM clock_timestamp()));
        PERFORM set_config('forgeci.status_changed', 'y', false);
        RETURN NULL;
    END $$;
    """),
    # pipelines_unfinished's WHERE as comparisons (runner.queue.pipelines.UNFINISHED): SQLite tested the IN list
    # through a temporary b-tree in every statement inserting or changing pipelines (two per webhook batch).
    """
    DROP INDEX pipelines_unfinished;
    CREATE INDEX pipelines_unfinished ON pipelines (concurrency_group, id)
        WHERE (state = 'planning' OR state = 'queued' OR state = 'running');
    """,
    # PostgreSQL only: jobs' three AFTER UPDATE triggers (usage, job_metrics, status) as one (postgres_triggers.py)
    Migration("", postgres=JOB_CHANGED),
)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Apply the migrations the database lacks, inside the caller's (BEGIN IMMEDIATE) transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise QueueError(
            f"{path} has schema version {version}, newer than this forgeci knows ({len(MIGRATIONS)}): it was "
            f"written by a newer forgeci; run that version, or restore a backup taken before the upgrade "
            f"(forgeci db restore FILE)"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # Statement by statement rather than executescript, which would commit our transaction
        # and let two processes opening a new file both run the same migration.
        for statement in statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
