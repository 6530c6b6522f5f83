"""Structure checks that import-linter cannot make: no layer above the engine touches a name the
engine keeps private, modules stay small, and no operation writes pack or index files itself."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "weightvault"
ENGINE = SRC / "repository"
ABOVE = [p for d in ("ops", "runner", "api", "cli", "policy") for p in sorted((SRC / d).rglob("*.py"))]


def _engine_private_names() -> set[str]:
    """Every ``_name`` (not dunder) the engine defines: attributes set on self, methods, functions."""
    names: set[str] = set()
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_"):
                names.add(node.id)
    return {n for n in names if not n.startswith("__")}


def test_the_private_name_set_is_not_empty() -> None:
    names = _engine_private_names()
    assert {"_packers", "_pending", "_reset_index", "_unindexed"} <= names


def test_no_layer_above_the_engine_uses_its_private_names() -> None:
    private = _engine_private_names()
    found = []
    for path in ABOVE:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in private
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weightvault.repository"):
                found += [f"{path.relative_to(SRC)}:{node.lineno}: import {a.name}" for a in node.names
                          if a.name.startswith("_")]
    assert found == []


def test_operations_leave_pack_and_index_writing_to_the_engine() -> None:
    """Packs are assembled by the engine's PackBuilder users (save_blob, PackWriter) and index
    files written by the engine alone: an op that did either could break the write ordering."""
    found = []
    for path in ABOVE:
        text = path.read_text()
        for banned in ("PackBuilder", "encode_index_file", "decode_index_file", "save(FileType.INDEX",
                       "remove(FileType.INDEX", "save(FileType.PACK"):
            if banned in text:
                found.append(f"{path.relative_to(SRC)}: {banned}")
    assert found == []


def test_modules_and_functions_stay_small() -> None:
    big = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 500:
            big.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.end_lineno and node.end_lineno - node.lineno >= 80:
                big.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert big == []


def test_importing_weightvault_imports_no_ml_framework() -> None:
    """torch, transformers, lightning and h5py are optional extras: the library, its CLI and the
    integrations' queue and worker never import them; only the framework modules themselves do."""
    import subprocess
    import sys

    code = ("import sys, weightvault, weightvault.api, weightvault.cli.main, weightvault.integrations.worker; "
            "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'h5py', 'accelerate')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
