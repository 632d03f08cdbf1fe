"""Commit statuses: a reporter that follows job events and posts each webhook job's status to its forge."""
