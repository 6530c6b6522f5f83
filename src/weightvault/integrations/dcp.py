"""PyTorch Distributed Checkpoint straight into and out of a repository, with no local copy.

    import torch.distributed.checkpoint as dcp
    from weightvault.integrations.dcp import WeightvaultReader, WeightvaultWriter
    dcp.save(state_dict, storage_writer=WeightvaultWriter("/mnt/backup/wv", run="exp7", step=1000))
    dcp.load(state_dict, storage_reader=WeightvaultReader("/mnt/backup/wv", run="exp7", step=1000))

A real ``StorageWriter``: every rank serialises its write items as ``FileSystemWriter`` does (one
``__<rank>_0.distcp`` shard of concatenated ``torch.save`` archives, pickled objects as bytes),
but in memory, and commits it as its rank's snapshot of the group ``<run>@step-<step>``
(``Repository.backup_data``, with the run's newest earlier checkpoint as parent, so tensor-aware
splitting and checkpoint deltas against the same shard of the previous step apply). The
coordinator's ``finish`` adds ``.metadata`` to its own rank snapshot; the last rank to commit
completes the group. A rank that dies before committing leaves an incomplete group, which is
never restorable. The snapshot records the directory ``root`` (default ``<run>/step-<step>``,
absolute from the current directory), so ``weightvault restore`` brings back a normal DCP
directory that ``dcp.load`` reads with ``FileSystemReader``.

``WeightvaultReader`` is the matching ``StorageReader``: it reads the checkpoint in place from a
snapshot (``Repository.open_files``: only the blobs of the items a rank loads are fetched, each
authenticated and hash-checked), and never unpickles backup data. ``.metadata`` is rebuilt from
the non-executing parse (``parse_dcp_metadata``); a tensor item's ``torch.save`` archive is read
by ``read_tensor_archive`` and rebuilt with ``torch.frombuffer`` + ``as_strided`` (no
``torch.load``); a pickled object (``torch.save(obj)``) must be plain values (``read_plain_object``:
numbers, strings, bytes, lists, tuples, dicts), which are handed to the planner saved anew from
those values, never as the stored bytes. Anything else is refused with ``UnsupportedFormatError``. Needs torch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import posixpath
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo, _StoragePrefix
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from weightvault.api import (
    ArchiveTensor,
    DcpMetadata,
    Repository,
    SnapshotFiles,
    parse_dcp_metadata,
    read_plain_object,
    read_tensor_archive,
)
from weightvault.errors import NoMatchError, UnsupportedFormatError
from weightvault.integrations.worker import open_repository

__all__ = ["WeightvaultReader", "WeightvaultWriter"]

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


class WeightvaultReader(StorageReader):
    """See the module docstring. Names the checkpoint by ``snapshot`` (an id, or 'latest:run=X')
    or by ``run`` and ``step`` (the newest snapshot tagged with both, as the writer tags them).
    The snapshot is resolved once, by the coordinator's ``read_metadata``, and every rank then
    reads that same snapshot (its id travels in the metadata's ``storage_meta.checkpoint_id``)."""

    def __init__(self, repo: str | os.PathLike[str], snapshot: str | None = None, *, run: str | None = None,
                 step: int | None = None, password_file: str | None = None) -> None:
        super().__init__()
        if (snapshot is None) == (run is None and step is None) or (run is None) != (step is None):
            raise ValueError("name the checkpoint by snapshot=, or by run= and step= together")
        self.repo, self.password_file = os.fspath(repo), password_file
        self.spec, self.run, self.step = snapshot, run, step
        self.storage_data: dict[MetadataIndex, _StorageInfo] = {}
        self._snapshot, self._dir = "", ""
        self._repository: Repository | None = None

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.storage_data = {}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False  # never picked for a bare checkpoint_id: pass storage_reader= explicitly

    def _open(self) -> Repository:
        if self._repository is None:
            self._repository = open_repository(self.repo, self.password_file)
        return self._repository

    def _resolve(self) -> str:
        if self.spec is not None:
            return self._open().find_snapshot(self.spec).id
        tags = [f"run={self.run}", f"step={self.step}"]
        found = self._open().snapshots(tags=tags)
        if not found:
            raise NoMatchError(f"no snapshot of {self.repo} is tagged {' and '.join(tags)}",
                               hint="`weightvault snapshots --tag run=...` lists a run's checkpoints")
        return found[-1].id

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with self._open().open_files(self._resolve()) as files:
            found = [p for p in files.paths() if posixpath.basename(p) == ".metadata"]
            if len(found) != 1:
                raise UnsupportedFormatError(
                    f"snapshot {files.snapshot.short_id} holds {len(found)} DCP .metadata files, not one",
                    hint="name the snapshot of one DCP checkpoint directory")
            try:
                parsed = parse_dcp_metadata(files.read(found[0]))
            except ValueError as exc:
                raise UnsupportedFormatError(f"{found[0]} of snapshot {files.snapshot.short_id}: {exc}") from None
            where = f"{files.snapshot.id}/{posixpath.dirname(found[0])}"
        return _metadata(parsed, where)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data
        where = metadata.storage_meta.checkpoint_id if metadata.storage_meta else None
        if not isinstance(where, str) or "/" not in where:
            raise UnsupportedFormatError("this metadata was not read by a WeightvaultReader",
                                         hint="load it with the WeightvaultReader that read it")
        self._snapshot, self._dir = where.split("/", 1)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        reqs = sorted(plan.items, key=lambda r: (self.storage_data[r.storage_index].relative_path,
                                                 self.storage_data[r.storage_index].offset))
        with self._open().open_files(self._snapshot) as files:
            for req in reqs:
                info = self.storage_data[req.storage_index]
                raw = files.read(posixpath.join(self._dir, info.relative_path), info.offset, info.length)
                if req.type == LoadItemType.BYTE_IO:
                    value, buf = _plain(raw, req.storage_index.fqn, files), io.BytesIO()
                    torch.save(value, buf)  # the planner torch.loads it: our own bytes of plain values
                    buf.seek(0)
                    planner.load_bytes(req, buf)
                    continue
                tensor = _narrow(_tensor(raw, req.storage_index.fqn, files), req.storage_offsets, req.lengths)
                target = planner.resolve_tensor(req).detach()
                if target.size() != tensor.size():
                    raise UnsupportedFormatError(f"{req.storage_index.fqn}: the checkpoint holds {list(tensor.size())}"
                                                 f" where the state dict has {list(target.size())}")
                target.copy_(tensor)
                planner.commit_tensor(req, target)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut


def _metadata(parsed: DcpMetadata, where: str) -> Metadata:
    """A ``Metadata`` built from the non-executing parse; ``where`` = '<snapshot id>/<directory>'."""
    sdm: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {
        fqn: BytesStorageMetadata() for fqn in parsed.objects}
    for fqn, (_code, shape) in parsed.tensors.items():
        dtype = getattr(torch, parsed.torch_dtypes[fqn], None)
        if not isinstance(dtype, torch.dtype):
            raise UnsupportedFormatError(f"tensor {fqn!r}: dtype {parsed.torch_dtypes[fqn]} is not one this torch has")
        sdm[fqn] = TensorStorageMetadata(TensorProperties(dtype=dtype), torch.Size(shape), [])
    storage: dict[MetadataIndex, _StorageInfo] = {}
    for item in parsed.items:
        if item.transformed:
            raise UnsupportedFormatError(f"{item.fqn!r} is stored through DCP extensions (transform descriptors),"
                                         " which this reader does not apply")
        offset = None
        if item.chunk is not None:
            md = sdm[item.fqn]
            assert isinstance(md, TensorStorageMetadata) and item.sizes is not None
            offset = torch.Size(item.chunk)
            md.chunks.append(ChunkStorageMetadata(offset, torch.Size(item.sizes)))
        storage[MetadataIndex(item.fqn, offset)] = _StorageInfo(item.path, item.start, item.length)
    return Metadata(state_dict_metadata=sdm, planner_data=None, storage_data=storage,
                    storage_meta=StorageMeta(checkpoint_id=where))


def _plain(raw: bytes, fqn: str, files: SnapshotFiles) -> object:
    try:
        return read_plain_object(raw)
    except ValueError as exc:
        raise UnsupportedFormatError(
            f"{fqn!r} of snapshot {files.snapshot.short_id} is a pickled object that is not plain values ({exc}):"
            " weightvault never unpickles backup data",
            hint="restore the snapshot (`weightvault restore`) and load it with FileSystemReader if you trust it",
        ) from None


def _tensor(raw: bytes, fqn: str, files: SnapshotFiles) -> torch.Tensor:
    try:
        stored: ArchiveTensor = read_tensor_archive(raw)
    except ValueError as exc:
        raise UnsupportedFormatError(f"tensor {fqn!r} of snapshot {files.snapshot.short_id}: {exc}") from None
    dtype = getattr(torch, stored.dtype)
    flat = torch.frombuffer(bytearray(stored.storage), dtype=dtype) if stored.storage else torch.empty(0, dtype=dtype)
    return flat.as_strided(stored.shape, stored.stride, stored.offset)


def _narrow(tensor: torch.Tensor, offsets: Any, lengths: Any) -> torch.Tensor:
    """The part of a stored chunk a read item asks for (as torch's ``narrow_tensor_by_index``)."""
    for dim, (start, length) in enumerate(zip(offsets, lengths, strict=True)):
        if start != 0 or length != tensor.size(dim):
            tensor = tensor.narrow(dim, start, length)
    return tensor
