"""The app's part in pipelines: opening one, cancelling it (confirmed) and retrying it, whole or its failed jobs."""

from __future__ import annotations

from textual import on, work
from textual.app import App

from client.errors import ClientError
from client.models import PipelineInfo
from tui.messages import CancelPipeline, OpenPipeline, RetryPipeline
from tui.models import Services
from tui.pipeline_screen import PipelineScreen
from tui.screens import ConfirmScreen


class PipelineCommands(App[None]):
    """A base of the console's app: what panels and screens ask about pipelines (their messages), done here."""

    services: Services  # the app's, set in its __init__

    def report(self, exc: ClientError) -> None:
        raise NotImplementedError  # the app tells the operator, and marks a lost connection

    @on(OpenPipeline)
    def _open_pipeline(self, message: OpenPipeline) -> None:
        self.open_pipeline(message.pipeline_id)

    def open_pipeline(self, pipeline_id: int) -> None:
        self.push_screen(PipelineScreen(pipeline_id, self.services))

    @on(CancelPipeline)
    def _cancel_pipeline_asked(self, message: CancelPipeline) -> None:
        self.cancel_pipeline(message.pipeline)

    @on(RetryPipeline)
    def _retry_pipeline_asked(self, message: RetryPipeline) -> None:
        self.retry_pipeline(message.pipeline, message.failed_only)

    def cancel_pipeline(self, pipeline: PipelineInfo) -> None:
        if pipeline.terminal:
            self.notify(f"pipeline #{pipeline.id} is already {pipeline.state}", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._cancel_pipeline(pipeline.id)

        done = f", {pipeline.jobs_done}/{pipeline.jobs_total} jobs done" if pipeline.jobs_total else ""
        self.push_screen(ConfirmScreen(f"Cancel pipeline #{pipeline.id} ({pipeline.state}{done})?\n"
                                       "Its queued jobs end cancelled, its running jobs stop."), confirmed)

    @work(group="actions")
    async def _cancel_pipeline(self, pipeline_id: int) -> None:
        try:
            state = await self.services.client.cancel_pipeline(pipeline_id)
        except ClientError as exc:
            self.report(exc)
            return
        what = "stopping its running jobs" if state == "running" else state or "cancelled"
        self.notify(f"pipeline #{pipeline_id}: {what}")

    def retry_pipeline(self, pipeline: PipelineInfo, failed_only: bool = False) -> None:
        if not pipeline.terminal:
            self.notify(f"pipeline #{pipeline.id} is {pipeline.state}: only a finished pipeline can be retried",
                        severity="warning")
            return
        if failed_only and pipeline.state in ("success", "skipped"):
            what = "succeeded" if pipeline.state == "success" else "was skipped"
            self.notify(f"pipeline #{pipeline.id} {what}: it has no failed jobs to retry", severity="warning")
            return
        self._retry_pipeline(pipeline.id, failed_only)

    @work(group="actions")
    async def _retry_pipeline(self, pipeline_id: int, failed_only: bool) -> None:
        try:
            retried = await self.services.client.retry_pipeline(pipeline_id, failed_only=failed_only)
        except ClientError as exc:
            self.report(exc)
            return
        runs = retried.pipeline if retried.pipeline is not None else pipeline_id  # the pipeline that runs
        count = len(retried.jobs)
        jobs = f"{count} job{'s' if count != 1 else ''}"
        if runs == pipeline_id:
            self.notify(f"pipeline #{pipeline_id}: {jobs} queued again")
        elif not count:  # its fetch failed: the server goes on planning it, as after a submit
            self.notify(f"pipeline #{runs}, a retry of #{pipeline_id}, is still planning: the server "
                        "could not fetch its repository yet and keeps trying", severity="warning")
        else:
            self.notify(f"pipeline #{runs} queued: a retry of #{pipeline_id} ({jobs})")
        screen = self.screen
        if isinstance(screen, PipelineScreen) and screen.pipeline_id == pipeline_id:
            if runs != pipeline_id:  # the operator looks at the old one: show the one that runs
                self.switch_screen(PipelineScreen(runs, self.services))
            else:
                screen.reload()
