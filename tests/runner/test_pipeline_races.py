"""Two jobs of one pipeline ending at the same moment, in two threads (two runners): the pipeline ends once, with
its state, on both backends. On PostgreSQL (READ COMMITTED, writers in parallel) each settle could see the other
job still running and leave the pipeline `running` for good; SQLite's BEGIN IMMEDIATE serializes them."""

from __future__ import annotations

import threading
from pathlib import Path

from runner.models import JobSpec, JobState, PipelineState
from runner.queue import PlannedJobRow, Queue

ROUNDS = 40


def test_two_jobs_ending_at_once_end_their_pipeline(tmp_path: Path) -> None:
    spec = JobSpec(repo="https://git.example.test/acme/app.git", ref="main")
    with Queue(tmp_path / "q.db", max_concurrent=100) as queue:
        pipelines = []
        for _ in range(ROUNDS):
            pipeline_id = queue.create_pipeline(spec)
            ids, _ = queue.write_plan(pipeline_id, "a" * 40, [PlannedJobRow(spec, "left", "left"),
                                                               PlannedJobRow(spec, "right", "right")])
            pipelines.append((pipeline_id, ids))
        for _, ids in pipelines:
            for job_id in ids:
                claimed = queue.claim(f"runner-{job_id}", 60)
                assert claimed is not None
        for _, (left, right) in pipelines:
            gate = threading.Barrier(2)

            def end(job_id: int) -> None:
                gate.wait()
                queue.complete(job_id, JobState.success, None, f"runner-{job_id}")

            threads = [threading.Thread(target=end, args=(job_id,)) for job_id in (left, right)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        states = [queue.pipeline(pipeline_id).state for pipeline_id, _ in pipelines]
    assert states == [PipelineState.success] * ROUNDS
