"""The repository server (``weightvault serve``, docs/SERVER.md): repositories over HTTPS with users,
roles enforced on every request, maintenance windows for risky operations, an audit log and
metrics. It stores the bytes clients send and never holds a repository password.

Uses the backends (to store objects), the public API (size and interval parsing) and errors,
types and paths; nothing below the API knows it exists.
"""
