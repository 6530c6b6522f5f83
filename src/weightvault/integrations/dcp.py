"""PyTorch Distributed Checkpoint: ``WeightvaultWriter`` saves a checkpoint straight into a
repository, with no local copy.

    import torch.distributed.checkpoint as dcp
    from weightvault.integrations.dcp import WeightvaultWriter
    dcp.save(state_dict, storage_writer=WeightvaultWriter("/mnt/backup/wv", run="exp7", step=1000))

A real ``StorageWriter``: every rank serialises its write items as ``FileSystemWriter`` does (one
``__<rank>_0.distcp`` shard of concatenated ``torch.save`` archives, pickled objects as bytes),
but in memory, and commits it as its rank's snapshot of the group ``<run>@step-<step>``
(``Repository.backup_data``, with the run's newest earlier checkpoint as parent, so tensor-aware
splitting and checkpoint deltas against the same shard of the previous step apply). The
coordinator's ``finish`` adds ``.metadata`` to its own rank snapshot; the last rank to commit
completes the group. A rank that dies before committing leaves an incomplete group, which is
never restorable. The snapshot records the directory ``root`` (default ``<run>/step-<step>``,
absolute from the current directory), so ``weightvault restore`` brings back a normal DCP
directory that ``dcp.load`` reads with ``FileSystemReader``. Needs torch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo, _StoragePrefix
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from weightvault.integrations.worker import open_repository

__all__ = ["WeightvaultWriter"]

SUFFIX = ".distcp"


class WeightvaultWriter(StorageWriter):
    """See the module docstring. ``password_file``: the repository's password (else
    ``$WEIGHTVAULT_PASSWORD`` or the default repository's key file)."""

    def __init__(self, repo: str | os.PathLike[str], *, run: str, step: int, root: str | os.PathLike[str] | None = None,
                 password_file: str | None = None, tags: list[str] | None = None) -> None:
        super().__init__()
        self.repo, self.password_file = os.fspath(repo), password_file
        self.run, self.step = run, step
        self.root = os.path.abspath(root if root is not None else os.path.join(run, f"step-{step}"))
        self.tags = [f"run={run}", f"step={step}", *(tags or [])]
        self.group = f"{run}@step-{step}"
        self.rank, self.world_size, self.is_coordinator = 0, 1, True
        self._shard: tuple[str, bytes] | None = None
        self.snapshots: list[str] = []

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self._shard = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False  # never picked for a bare checkpoint_id: pass storage_writer= explicitly

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.root)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [dataclasses.replace(p, storage_data=_StoragePrefix(f"__{i}_")) if p.storage_data is None else p
                for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        name = f"{plan.storage_data.prefix}0{SUFFIX}"
        buf, results = io.BytesIO(), []
        for item in plan.items:
            data = planner.resolve_data(item)
            offset = buf.tell()
            if isinstance(data, io.BytesIO):  # WriteItemType.BYTE_IO: a pickled object, as bytes
                buf.write(data.getbuffer())
            else:
                assert isinstance(data, torch.Tensor) and item.type != WriteItemType.BYTE_IO
                tensor = data.detach().cpu()
                if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                    tensor = tensor.clone()  # a view: save its own bytes, not its whole storage
                torch.save(tensor, buf)
            length = buf.tell() - offset
            results.append(WriteResult(index=item.index, size_in_bytes=length,
                                       storage_data=_StorageInfo(name, offset, length)))
        self._shard = (name, buf.getvalue())
        if not self.is_coordinator:  # the coordinator commits in finish, with .metadata
            self._commit({name: self._shard[1]})
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.storage_data = {wr.index: wr.storage_data for wrs in results for wr in wrs}
        metadata.storage_meta = self.storage_meta()
        assert self._shard is not None, "write_data ran before finish"
        self._commit({self._shard[0]: self._shard[1], ".metadata": pickle.dumps(metadata)})

    def _commit(self, files: dict[str, bytes]) -> None:
        repo = open_repository(self.repo, self.password_file)
        earlier = [s for s in repo.snapshots(tags=[f"run={self.run}"]) if s.paths != [self.root]]
        res = repo.backup_data(self.root, files, tags=self.tags, group=self.group, rank=self.rank,
                               world_size=self.world_size, parent=earlier[-1].id if earlier else None)
        self.snapshots.append(res.snapshot.id)
