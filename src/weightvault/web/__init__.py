"""The web dashboard (``weightvault ui``): runs, checkpoints, recoverability and storage at a
glance, and restores from the browser, through ``weightvault.api`` only (docs/DASHBOARD.md)."""
