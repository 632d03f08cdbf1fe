"""PostgreSQL-only trigger text too long for runner/queue/schema.py's migration chain (which references it).

JOB_CHANGED: the three AFTER UPDATE triggers of `jobs` (usage per attempt, job_metrics at a terminal state, the
status_changes feed) as one trigger and one plpgsql function. PostgreSQL evaluates every trigger's WHEN for every
updated row and sets up a plpgsql call for each one that fires, so a job's end paid for three calls and a claim for
three WHENs; now each state change costs one call that writes the same rows, in the same transaction, as before:
- usage: an attempt that was running ends (finished, failed, retried: queued again), its clock the transaction's
  forgeci.now (the queue's clock) unless the job has its finished_at;
- job_metrics: the job reaches a terminal state from queued or running;
- status_changes: every change of state or attempts, and the session flag the committing connection NOTIFYs on
  after its COMMIT (runner/queue/postgres.py, STATUS_FLAG).
A new job's status row stays with forgeci_status_job (AFTER INSERT), unchanged.
"""

from __future__ import annotations

JOB_CHANGED = """
DROP TRIGGER forgeci_usage ON jobs;
DROP TRIGGER job_metrics_on_finish ON jobs;
DROP TRIGGER forgeci_status_job ON jobs;
DROP FUNCTION forgeci_usage();
DROP FUNCTION job_metrics_on_finish();
CREATE FUNCTION forgeci_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE e DOUBLE PRECISION;
BEGIN
    IF OLD.state = 'running' AND NEW.state <> 'running' AND OLD.started_at IS NOT NULL THEN
        e := coalesce(NEW.finished_at, nullif(current_setting('forgeci.now', true), '')::float8,
                      extract(epoch FROM clock_timestamp()));
        INSERT INTO usage (job_id, attempt, pipeline_id, slug, "user", runner, state, started_at, ended_at, seconds,
                           infra_retry)
        VALUES (NEW.id, OLD.attempts, NEW.pipeline_id, coalesce(NEW.slug, ''), NEW."user", OLD.runner_id, NEW.state,
                OLD.started_at, e, greatest(0, e - OLD.started_at), (NEW.state = 'queued')::int);
    END IF;
    IF NEW.state NOT IN ('queued', 'running') AND OLD.state IN ('queued', 'running') THEN
        INSERT INTO job_metrics (finished_at, job_id, state, duration, steps, step_times, cache_hit)
        SELECT coalesce(NEW.finished_at, extract(epoch FROM clock_timestamp())), NEW.id, NEW.state,
               NEW.finished_at - NEW.started_at, count(*),
               coalesce(json_agg(json_build_array(name, finished_at - started_at) ORDER BY idx)::text, '[]'),
               NEW.cache_hit
        FROM steps WHERE job_id = NEW.id
        ON CONFLICT (finished_at, job_id) DO UPDATE SET state = EXCLUDED.state, duration = EXCLUDED.duration,
            steps = EXCLUDED.steps, step_times = EXCLUDED.step_times, cache_hit = EXCLUDED.cache_hit;
    END IF;
    INSERT INTO status_changes (job_id, pipeline_id, state, at)
    VALUES (NEW.id, NEW.pipeline_id, NEW.state, extract(epoch FROM clock_timestamp()));
    PERFORM set_config('forgeci.status_changed', 'y', false);
    RETURN NULL;
END $$;
CREATE TRIGGER forgeci_job_changed AFTER UPDATE OF state, attempts ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.attempts IS DISTINCT FROM NEW.attempts)
    EXECUTE FUNCTION forgeci_job_changed();
"""
