"""The public Python API. The CLI, integrations and the web dashboard use only this module.

    from weightvault.api import Repository
    repo = Repository.open("/backups/repo", password="...")
    result = repo.backup(["runs/exp7"], tags=["run=exp7", "step=2000"])
    repo.restore("latest:run=exp7", target="/tmp/exp7", verify=True)
    assert repo.check(read_data=True).ok

A ``Repository`` may be kept open for days and used from several threads: every method runs in
one session (``weightvault.repository.session``) that takes the lock it needs and first brings
the index and the snapshot list up to date with what other clients committed. A method called
from inside another (a drill's restore) joins the caller's session when its lock suffices.

Errors are ``weightvault.errors.WeightvaultError`` subclasses, each with an ``exit_code``; an
``OSError`` from this machine's files is converted to one at this boundary.
"""

from __future__ import annotations

from weightvault.api._backend import open_repository_on
from weightvault.api._default import DefaultRepository, open_or_create_default
from weightvault.api._files import (
    ArchiveTensor,
    DcpItem,
    DcpMetadata,
    SnapshotFiles,
    parse_dcp_metadata,
    read_plain_object,
    read_tensor_archive,
)
from weightvault.api._keys import opens_without_password
from weightvault.api._policy import (
    Fleet,
    apply_policy,
    load_policy,
    parse_policy,
    policy_status,
    suggest_policy,
    tier_run,
)
from weightvault.api._repository import Repository
from weightvault.backends.factory import (
    AZURE_TIERS,
    S3_COLD_CLASSES,
    S3_STORAGE_CLASSES,
    StorageOptions,
    repository_exists,
)
from weightvault.backends.limits import parse_rate
from weightvault.backends.retry import RetryPolicy
from weightvault.codec.crypto import KdfParams
from weightvault.ops.backup import BackupResult
from weightvault.ops.check import CheckResult
from weightvault.ops.complete import Completeness
from weightvault.ops.complete import completeness as checkpoint_completeness
from weightvault.ops.copy import CopyResult
from weightvault.ops.diff import DiffEntry, DiffResult
from weightvault.ops.forget import ForgetResult
from weightvault.ops.groups import Group
from weightvault.ops.heal import HealResult
from weightvault.ops.inspect import FileChange, TensorDiff, TensorInfo, TensorTable
from weightvault.ops.layout import FileLayout
from weightvault.ops.progress import Progress, ProgressCallback
from weightvault.ops.prune import PruneResult
from weightvault.ops.repair import RepairResult
from weightvault.ops.restore import OVERWRITE_MODES, RestoreResult
from weightvault.ops.retention import parse_duration
from weightvault.ops.stats import Stats
from weightvault.ops.thaw import ThawReport
from weightvault.ops.validate import ValidationReport
from weightvault.ops.verify import VerifyResult
from weightvault.policy.plan import RpoLine
from weightvault.policy.spec import PolicySpec, parse_interval
from weightvault.repository.keys import KeyInfo
from weightvault.repository.ledger import LedgerCheck
from weightvault.repository.locks import LockInfo, lock_wait, set_lock_wait
from weightvault.repository.manifest import Node
from weightvault.repository.snapshots import Snapshot
from weightvault.runner.defaults import (
    default_key_file,
    default_policy_file,
    default_repository_path,
    read_password_file,
    read_toml_file,
)
from weightvault.runner.drill import DrillResult
from weightvault.runner.policy import PolicyRun, PolicyStep
from weightvault.runner.runs import RunRestore
from weightvault.runner.swap import SwapResult

__all__ = [
    "AZURE_TIERS",
    "OVERWRITE_MODES",
    "S3_COLD_CLASSES",
    "S3_STORAGE_CLASSES",
    "ArchiveTensor",
    "BackupResult",
    "CheckResult",
    "Completeness",
    "CopyResult",
    "DcpItem",
    "DcpMetadata",
    "DefaultRepository",
    "DiffEntry",
    "DiffResult",
    "DrillResult",
    "FileChange",
    "FileLayout",
    "Fleet",
    "ForgetResult",
    "Group",
    "HealResult",
    "KdfParams",
    "KeyInfo",
    "LedgerCheck",
    "LockInfo",
    "Node",
    "PolicyRun",
    "PolicySpec",
    "PolicyStep",
    "Progress",
    "ProgressCallback",
    "PruneResult",
    "RepairResult",
    "Repository",
    "RestoreResult",
    "RetryPolicy",
    "RpoLine",
    "RunRestore",
    "Snapshot",
    "SnapshotFiles",
    "Stats",
    "StorageOptions",
    "SwapResult",
    "TensorDiff",
    "TensorInfo",
    "TensorTable",
    "ThawReport",
    "ValidationReport",
    "VerifyResult",
    "apply_policy",
    "checkpoint_completeness",
    "default_key_file",
    "default_policy_file",
    "default_repository_path",
    "load_policy",
    "lock_wait",
    "open_or_create_default",
    "open_repository_on",
    "opens_without_password",
    "parse_dcp_metadata",
    "parse_duration",
    "parse_interval",
    "parse_policy",
    "parse_rate",
    "policy_status",
    "read_password_file",
    "read_plain_object",
    "read_tensor_archive",
    "read_toml_file",
    "repository_exists",
    "set_lock_wait",
    "suggest_policy",
    "tier_run",
]
