"""Notifications of finished pipelines (Slack, Discord, signed webhooks, e-mail) from the queue's outbox, and badges."""
