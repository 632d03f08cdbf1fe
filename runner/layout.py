"""Where a forgeci data dir keeps things, and which folders the Podman user must own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.podman_user import PodmanUser


@dataclass(frozen=True)
class DataLayout:
    """The folders under `data_dir`: root owns the queue and logs; the Podman user owns what jobs touch."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "queue.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def mirrors(self) -> Path:
        return self.root / "mirrors"

    @property
    def podman(self) -> Path:
        return self.root / "podman"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def pods(self) -> Path:
        """The hosts files of running pods (root writes them; the Podman user's containers mount them read-only)."""
        return self.root / "pods"

    def log_file(self, job_id: int) -> Path:
        return self.logs / f"{job_id}.log"

    def service_logs(self, job_id: int) -> Path:
        """The folder of a job's service logs: one file per service, in the job log's format."""
        return self.logs / f"{job_id}.services"

    def service_log_file(self, job_id: int, name: str) -> Path:
        return self.service_logs(job_id) / f"{name}.log"

    def create(self, user: PodmanUser) -> None:
        """Make every folder; the ones a job touches go to the Podman user (a no-op chown when we are it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if user.switch:
            self.root.chmod(self.root.stat().st_mode | 0o011)  # the Podman user must traverse it
        for folder in (self.logs, self.store, self.pods):
            folder.mkdir(exist_ok=True)
        for folder in (self.workspaces, self.mirrors, self.podman):
            folder.mkdir(exist_ok=True)
            user.chown(folder)
