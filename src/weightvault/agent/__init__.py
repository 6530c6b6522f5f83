"""The agent: one long-running process per host that watches run directories, runs the policy's
due steps, notifies and exports metrics (docs/AGENT.md). Top layer: uses ``weightvault.api`` and
``weightvault.integrations`` only."""
