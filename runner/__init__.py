"""Job execution: SQLite queue, worker pool, rootless Podman executor, workspaces, caches, object store."""
