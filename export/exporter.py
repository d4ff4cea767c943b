"""Checkpoint -> verified artefact folder (``igrec export``). Needs torch.

Steps: load the checkpoint (``weights_only=True``) and rebuild the network; export ONNX on the CPU; write
the vocabulary and the card into ``<out>.partial``; load it back with the :class:`~export.scorer.Scorer`
(checksums and all) and check parity against PyTorch on the test split; only a passing artefact is moved
to ``<out>``. A failing one stays in ``<out>.partial`` for inspection and :class:`ParityError` is raised.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.artefact import (
    CARD_FILE,
    FORMAT,
    FORMAT_VERSION,
    INT8_MAX_SCORE_DIFF,
    INT8_MIN_IDENTICAL,
    INTERESTS_FILE,
    ITEMS_FILE,
    MAX_SCORE_DIFF,
    MIN_IDENTICAL,
    MIN_SAME_SET,
    MODEL_FILE,
    checksums,
    sha256_file,
    write_items,
)
from export.onnx_export import export_onnx
from export.parity import ParityError, ParityReport, check_parity, sample_cases
from export.scorer import Scorer
from model.data import Cases, SessionSplit
from model.graphs import build_history_graphs

REPO = Path(__file__).resolve().parent.parent
HISTORY_MAX_LEN = int(inspect.signature(build_history_graphs).parameters["max_len"].default)


@dataclass
class ExportOptions:
    """What ``igrec export`` was asked for (see :func:`add_export_arguments`)."""

    checkpoint: str
    out: str
    k: int = 20
    opset: int = 18
    parity_cases: int | None = 5000
    data: str | None = None
    raw_format: str | None = None
    batch_size: int = 256
    exporter: str = "torchscript"
    threads: int | None = None
    force: bool = False
    history_trained: bool | None = None


def load_network(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """(eval-mode CPU network, the checkpoint dict without weights) from a ``best.pt`` / ``checkpoint.pt``.

    A multimodal item encoder is frozen into a plain id embedding holding its fused table (a constant at
    inference), so the exported graph and the parity check see the id-only network shape."""
    from model.multimodal import freeze_item_encoder, item_encoder_from_state
    from model.network import ModelConfig, build_network

    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{checkpoint}: not an igrec checkpoint (expected keys 'model' and 'config')")
    net = build_network(ModelConfig.from_dict(state["config"]), item_encoder_from_state(state))
    net.load_state_dict(state["model"])
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler")}
    return freeze_item_encoder(net.eval()), rest


def git_commit(repo: Path = REPO) -> dict:
    """HEAD commit and whether the code defining the model (model/, export/) differs from it."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--", "model", "export")
    return {"commit": commit or None, "model_code_modified": bool(dirty) if commit else None}


def item_vocabulary(state: dict, split: SessionSplit | None, n_items: int) -> tuple[list[str], str]:
    """External ids of items 1..n_items and where they came from: the checkpoint's ``item_vocab``, the raw
    log's vocabulary, or (split datasets, already numbered) ``str(i)``."""
    for vocab, source in ((state.get("item_vocab"), "checkpoint"), (split and split.item_vocab, "raw log")):
        if vocab:
            if len(vocab) != n_items:
                raise ValueError(f"{source} vocabulary has {len(vocab)} items, the model {n_items}")
            return [str(v) for v in vocab], source
    return [str(i) for i in range(1, n_items + 1)], "index"


def run_results(checkpoint: Path) -> dict:
    """results.json of the training run next to the checkpoint, or {} when there is none."""
    path = checkpoint.parent / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_metrics(checkpoint: Path, state: dict, results: dict) -> dict:
    """Metrics that belong to this checkpoint: the run's test metrics (computed with best.pt) for best.pt,
    else the last epoch's validation metrics stored in the checkpoint's history; {} when neither exists."""
    if checkpoint.name == "best.pt" and results.get("test"):
        return {"test": results["test"], "source": str(checkpoint.parent / "results.json")}
    history = state.get("history") or []
    if history and history[-1].get("val"):
        return {"validation": history[-1]["val"], "epoch": history[-1].get("epoch"), "source": "checkpoint history"}
    return {}


def synthetic_cases(n_items: int, n: int, seed: int = 0) -> Cases:
    """Random prefixes (length 1..20) when no test split is available; labelled ``synthetic`` in the card."""
    rng = np.random.default_rng(seed)
    length = rng.integers(1, 21, n)
    flat = rng.integers(1, n_items + 1, int(length.sum()))
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    return Cases(flat, start, length, rng.integers(1, n_items + 1, n))


def make_card(opts: ExportOptions, state: dict, results: dict, onnx_block: dict, n_items: int,
              vocab_source: str, split: SessionSplit | None, folder: Path) -> dict:
    """The model card (without parity; :func:`build_artefact` adds it after the check)."""
    train = state.get("train", {})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": git_commit(),
        "checkpoint": {"path": str(Path(opts.checkpoint).resolve()), "sha256": sha256_file(opts.checkpoint),
                       "best_epoch": results.get("best_epoch", state.get("epoch"))},
        "dataset": {"name": results.get("dataset") or (split.name if split else None),
                    "data": opts.data or train.get("data"), "n_items": n_items, "vocabulary": vocab_source},
        "metrics": checkpoint_metrics(Path(opts.checkpoint), state, results),
        "model": state["config"],
        "train": train,
        "k": opts.k,
        "n_items": n_items,
        "scores": "log-probabilities of the next item, float32",
        "graphs": {"max_len": int(train.get("max_len", state["config"].get("max_len", 50))),
                   "binary": bool(train.get("binary_adj", False)),
                   "history_max_len": HISTORY_MAX_LEN,
                   "history_trained": history_trained(opts, state)},
        "onnx": onnx_block,
        "files": checksums(folder),
    }


@torch.no_grad()
def item_interests(net: nn.Module) -> np.ndarray | None:
    """float32 ``[n_items + 1, k]``: every item's interest weights as the network assigns them at inference
    (softmax of v_i^T W_l / tau, ARCHITECTURE eqs. 1-3), padding row zero; None for a network without
    interests (GRU4Rec)."""
    if not hasattr(net, "_interest_weights"):
        return None
    was_training = net.training
    net.eval()
    table = net._interest_weights(net.item_encoder.table()).float().numpy().astype(np.float32)
    net.train(was_training)
    table[0] = 0.0
    return table


def history_trained(opts: ExportOptions, state: dict) -> bool:
    """Whether the network's history weights saw real histories in training: the export option if given,
    else the training config's ``history_inputs`` flag (model/train.py does not feed histories yet)."""
    if opts.history_trained is not None:
        return opts.history_trained
    return bool(state.get("train", {}).get("history_inputs", False))


def model_version(card: dict) -> str:
    """``<dataset>-<created>-<model.onnx sha256 prefix>``: names one exported model everywhere it is used."""
    created = card["created"].replace("-", "").replace(":", "")
    return f"{card['dataset']['name'] or 'model'}-{created}-{card['files'][MODEL_FILE][:12]}"


def write_card(folder: Path, card: dict) -> None:
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


def load_split(data: str | None, raw_format: str | None) -> SessionSplit | None:
    """The split (or raw log) ``data`` names, or None when it names none or it is not on this machine (the
    parity check then runs on synthetic sessions)."""
    if not data or not Path(data).exists():
        return None
    from model.train import load_dataset

    return load_dataset(data, raw_format)


def parity_cases(split: SessionSplit | None, n_items: int, n: int | None) -> tuple[Cases, str]:
    """The cases a parity check scores, and their source: ``n`` test cases of ``split`` (all for None or 0),
    else ``n`` synthetic prefixes (5,000 for None or 0)."""
    if split is not None:
        return sample_cases(split.test, n), "test"
    return synthetic_cases(n_items, n or 5000), "synthetic"


@dataclass
class VerifyOptions:
    """What ``igrec parity`` was asked for (see :func:`export.cli.add_parity_arguments`)."""

    artefact: str
    checkpoint: str | None = None
    providers: str = "auto"
    fp16: bool = False
    int8: bool = False
    cases: int | None = 5000
    data: str | None = None
    raw_format: str | None = None
    batch_size: int = 256
    threads: int | None = None
    min_identical: float | None = None
    """None: the export's bar, or :data:`INT8_MIN_IDENTICAL` with ``int8``; likewise ``max_diff``."""
    max_diff: float | None = None
    min_same_set: float = MIN_SAME_SET


def verify_artefact(opts: VerifyOptions) -> ParityReport:
    """Parity of a published artefact with the checkpoint it was exported from, scored by the execution
    provider that will serve it (the export's own check runs on the CPU provider). Read-only: the artefact
    is not changed. The checkpoint must be the one the card names (sha256), else parity would be moot."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    scorer = Scorer(opts.artefact, providers=opts.providers, threads=opts.threads, fp16=opts.fp16,
                    int8=opts.int8, history=True, spin=False)
    card = scorer.card
    checkpoint = Path(opts.checkpoint or card["checkpoint"]["path"])
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint (pass the one {opts.artefact} was exported "
                                "from with --checkpoint)")
    if sha256_file(checkpoint) != card["checkpoint"]["sha256"]:
        raise ValueError(f"{checkpoint} is not the checkpoint {opts.artefact} was exported from (sha256 differs "
                         "from the card's)")
    if opts.data and not Path(opts.data).exists():
        raise FileNotFoundError(f"{opts.data}: no such split folder or log")
    net, _ = load_network(checkpoint)
    data = opts.data or card["dataset"]["data"]
    split = load_split(data, opts.raw_format or card["train"].get("raw_format"))
    cases, source = parity_cases(split, scorer.n_items, opts.cases)
    min_identical, max_diff = (INT8_MIN_IDENTICAL, INT8_MAX_SCORE_DIFF) if scorer.int8 else (MIN_IDENTICAL,
                                                                                              MAX_SCORE_DIFF)
    return check_parity(net, scorer, cases, source=source, batch_size=opts.batch_size,
                        max_len=card["graphs"]["max_len"], binary=card["graphs"]["binary"],
                        min_identical=min_identical if opts.min_identical is None else opts.min_identical,
                        max_diff=max_diff if opts.max_diff is None else opts.max_diff, min_same_set=opts.min_same_set)


def build_artefact(opts: ExportOptions) -> tuple[Path, ParityReport]:
    """Export, verify and (on parity) publish the artefact; see the module docstring."""
    checkpoint = Path(opts.checkpoint)
    out = Path(opts.out)
    if out.exists() and not opts.force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    net, state = load_network(checkpoint)
    results = run_results(checkpoint)
    opts.data = opts.data or state.get("train", {}).get("data")
    opts.raw_format = opts.raw_format or state.get("train", {}).get("raw_format")
    split = load_split(opts.data, opts.raw_format)
    n_items = int(net.config.n_items)
    if split is not None and split.n_items > n_items:
        raise ValueError(f"{opts.data} has items up to {split.n_items}, the model only {n_items}")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    onnx_block = export_onnx(net, staging / MODEL_FILE, opts.k, opts.opset, opts.exporter)
    interests = item_interests(net)
    if interests is not None:
        np.save(staging / INTERESTS_FILE, interests)
    vocab, vocab_source = item_vocabulary(state, split, n_items)
    write_items(staging / ITEMS_FILE, vocab)
    card = make_card(opts, state, results, onnx_block, n_items, vocab_source, split, staging)
    card["model_version"] = model_version(card)
    write_card(staging, card)

    scorer = Scorer(staging, providers="cpu", threads=opts.threads, spin=False, history=True)
    cases, source = parity_cases(split, n_items, opts.parity_cases)
    report = check_parity(net, scorer, cases, source=source, batch_size=opts.batch_size,
                          max_len=card["graphs"]["max_len"], binary=card["graphs"]["binary"])
    card["parity"] = report.to_dict()
    write_card(staging, card)
    if not report.passed:
        raise ParityError(f"{report.summary()}\nthe artefact was NOT published; inspect {staging}")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out, report
