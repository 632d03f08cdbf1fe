"""Remote runners: `forgeci agent` claims jobs from a coordinator over HTTP leases (runner.agent.agent)."""
