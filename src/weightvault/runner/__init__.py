"""The application layer between the public API and the operations.

``weightvault.api`` opens repositories, runs each call in one session and converts errors; what
is more than one operation lives here: policy apply and tier runs over a ``Fleet``, restore
drills, swap restores, verify sampling state, the ledger record of an operation, the default
repository's key file. Modules here use ``ops``, ``policy`` and ``repository``; they reach a
public ``Repository`` only through the narrow protocols in ``ports`` (never import ``api``).
"""
