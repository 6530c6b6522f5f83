"""Key management services that wrap a repository's master key (envelope encryption).

A key service turns a *spec* (``aws:KEY``) into an object with ``generate(context)`` (a fresh
32-byte data key and its wrapped form) and ``decrypt(wrapped, context)``; ``repository/keys.py``
seals the master key under the data key and stores only the wrapped form (docs/FORMAT.md section
3). ``context`` is bound into the wrapping by the service (AWS KMS's encryption context), so a
wrapped key copied to another repository does not unwrap.
"""

from __future__ import annotations

from weightvault.kms.base import KeyService, open_key_service

__all__ = ["KeyService", "open_key_service"]
