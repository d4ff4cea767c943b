"""``igrec train``: fit a network on a session split, early-stop on a validation slice, write a run folder.

A run folder holds ``checkpoint.pt`` (last epoch, for resume), ``best.pt`` (best validation HR@20; with
``--ema`` the averaged weights, which are also the ones evaluated),
``results.json`` (config, per-epoch history, final test metrics) and ``curves.png`` (loss and HR@20 per
epoch). Checkpoints are ``torch.save`` of state dicts and plain dicts, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model.cpu import configure_torch
from model.data import (
    Cases,
    SessionSplit,
    case_sessions,
    load_raw,
    read_split,
    recency_oversampled,
    sessions_to_cases,
    split_validation,
)
from model.graphs import build_global_graph, build_session_graphs


@dataclass
class TrainConfig:
    """Options of one training run (all plain values, stored in results and checkpoints)."""

    data: str
    out: str = "runs/igrec"
    raw_format: str | None = None
    arch: str = "igrec"
    epochs: int = 6
    batch_size: int = 512
    eval_batch_size: int = 512
    lr: float = 4e-3
    lr_embedding: float | None = None
    weight_decay: float = 1e-5
    warmup: float = 0.05
    final_lr_fraction: float = 0.0
    ema: float = 0.0
    val_fraction: float = 0.02
    val_max_cases: int = 20_000
    recent_fraction: float = 0.0
    recent_repeats: int = 2
    max_train_cases: int | None = None
    patience: int = 2
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True
    threads: int | None = None
    max_len: int = 50
    binary_adj: bool = False
    resume: bool = False
    test_each_epoch: bool = True
    model: dict = field(default_factory=dict)
    kg: str | None = None
    item_features: dict = field(default_factory=dict)
    fusion: dict = field(default_factory=dict)
    lr_groups: dict = field(default_factory=dict)


def load_dataset(data: str, raw_format: str | None = None) -> SessionSplit:
    """A split folder (``train_sessions.txt`` + ``test.tsv``) or a raw log with ``raw_format``."""
    if raw_format:
        return load_raw(data, raw_format)
    return read_split(data)


def length_sorted_batches(cases: Cases, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Case indices grouped into batches of similar prefix length (less padding), in random order."""
    order = np.lexsort((rng.random(len(cases)), cases.length))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_tensors(cases: Cases, index: np.ndarray, max_len: int, binary: bool, device) -> tuple:
    """(inputs, target) tensors for the cases ``index``: the numpy graphs of :mod:`model.graphs`."""
    import torch

    graphs = build_session_graphs(cases.padded(index, max_len), binary=binary)
    inputs = tuple(torch.from_numpy(a).to(device) for a in graphs.arrays())
    return inputs, torch.from_numpy(cases.target[index]).to(device)


def linear_schedule(total_steps: int, warmup: float, final: float):
    """LR multiplier: linear warm-up over ``warmup`` of the steps, then linear decay to ``final``."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return final + (1.0 - final) * (1.0 - progress)

    return factor


def parameter_groups(net, lr: float, lr_embedding: float | None, weight_decay: float,
                     lr_groups: dict | None = None) -> list[dict]:
    """Optimiser groups with their own learning rates: the item encoder and the rest of the network.

    An encoder with ``parameter_groups()`` (the multimodal one: ``id``, ``text``, ``image``, ``knowledge``,
    ``fusion``) gets one optimiser group per encoder group; ``lr_groups`` maps a group name to its rate
    (default ``lr_embedding or lr``)."""
    encoder = net.item_encoder
    named = encoder.parameter_groups() if hasattr(encoder, "parameter_groups") else {
        "item_encoder": list(encoder.parameters())}
    lr_groups = lr_groups or {}
    groups = [{"params": [p for p in params if p.requires_grad], "lr": lr_groups.get(name, lr_embedding or lr),
               "weight_decay": weight_decay, "name": name} for name, params in named.items()]
    enc_ids = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in enc_ids]
    return [*groups, {"params": rest, "lr": lr_groups.get("network", lr), "weight_decay": weight_decay,
                      "name": "network"}]


def make_item_encoder(cfg: TrainConfig, n_items: int, dim: int):
    """The multimodal encoder when the run has ``kg`` or ``item_features``, else None (id embedding)."""
    if not cfg.kg and not cfg.item_features:
        return None
    from model.multimodal import build_item_encoder

    return build_item_encoder(n_items, dim, kg=cfg.kg, features=cfg.item_features, **cfg.fusion)


def make_model_config(cfg: TrainConfig, n_items: int):
    from model.network import ModelConfig

    if cfg.arch == "srgnn":
        return ModelConfig.srgnn(n_items, max_len=cfg.max_len, **cfg.model)
    if cfg.arch == "gru4rec":
        return ModelConfig(n_items=n_items, arch="gru4rec", max_len=cfg.max_len, dropout=0.0,
                           **{k: v for k, v in cfg.model.items() if k != "arch"})
    return ModelConfig(n_items=n_items, max_len=cfg.max_len, **cfg.model)


def set_prior_graphs(net, mcfg, fit_sessions: list, fit: Cases, n_items: int) -> np.ndarray:
    """Load the co-occurrence prior: the graph of all fit sessions (evaluation, serving) and the graphs of
    the even- and odd-numbered sessions (training); returns, per fit case, the training graph that does not
    hold the case's own session (see ``IGRec.set_training_prior_graphs``)."""
    full = build_global_graph(fit_sessions, n_items, mcfg.prior_neighbors, mcfg.prior_hops)
    net.set_prior_graph(full.neighbors, full.weights)
    halves = [build_global_graph(fit_sessions[part::2], n_items, mcfg.prior_neighbors, mcfg.prior_hops)
              for part in (0, 1)]
    net.set_training_prior_graphs([(g.neighbors, g.weights) for g in halves])
    return 1 - case_sessions(fit, fit_sessions) % 2


def train(cfg: TrainConfig) -> dict:
    """Train, early-stop on validation HR@20, evaluate the best epoch on test; returns the results."""
    import torch
    from tqdm import tqdm

    from model.averaging import WeightAverage
    from model.evaluate import evaluate_network
    from model.network import build_network

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    configure_torch(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)

    split = load_dataset(cfg.data, cfg.raw_format)
    fit_sessions, val_sessions = split_validation(split.train, cfg.val_fraction)
    fit = sessions_to_cases(fit_sessions)
    if cfg.max_train_cases and len(fit) > cfg.max_train_cases:
        fit = fit.subset(np.random.default_rng(cfg.seed).permutation(len(fit))[: cfg.max_train_cases])
    val = sessions_to_cases(val_sessions) if val_sessions else None
    if val is not None and len(val) > cfg.val_max_cases:
        val = val.subset(np.random.default_rng(cfg.seed + 1).permutation(len(val))[: cfg.val_max_cases])

    mcfg = make_model_config(cfg, split.n_items)
    encoder = make_item_encoder(cfg, split.n_items, mcfg.dim)
    net = build_network(mcfg, encoder).to(device)
    extra = {"item_encoder": encoder.spec()} if encoder is not None else {}
    if getattr(mcfg, "use_global", False) and mcfg.arch == "igrec":
        gg = build_global_graph(fit_sessions, split.n_items, mcfg.global_neighbors)
        net.set_global_graph(gg.neighbors, gg.weights)
    prior_graph = None
    if getattr(mcfg, "use_prior", False) and mcfg.arch == "igrec":
        prior_graph = set_prior_graphs(net, mcfg, fit_sessions, fit, split.n_items)
    epoch_index = recency_oversampled(case_sessions(fit, fit_sessions), len(fit_sessions), cfg.recent_fraction,
                                      cfg.recent_repeats)
    epoch_cases = fit.subset(epoch_index)
    if prior_graph is not None:
        prior_graph = prior_graph[epoch_index]
    steps_per_epoch = math.ceil(len(epoch_cases) / cfg.batch_size)
    opt = torch.optim.AdamW(parameter_groups(net, cfg.lr, cfg.lr_embedding, cfg.weight_decay, cfg.lr_groups),
                            fused=device.type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, linear_schedule(steps_per_epoch * cfg.epochs, cfg.warmup, cfg.final_lr_fraction))
    ema = WeightAverage(net, cfg.ema) if cfg.ema else None

    history: list[dict] = []
    start_epoch, best = 0, {"epoch": -1, "HR@20": -1.0}
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True, map_location=device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])
        if ema is not None:
            ema.load_state_dict(state["ema"])

    print(f"{split.name}: {len(split.train)} train sessions ({len(fit)} fit cases, "
          f"{len(val) if val is not None else 'no'} validation cases), {len(split.test)} test cases, "
          f"{split.n_items} items; {sum(p.numel() for p in net.parameters()):,} parameters")
    if len(epoch_cases) > len(fit):
        print(f"each epoch: {len(epoch_cases)} cases, the newest {cfg.recent_fraction:.0%} of sessions' "
              f"{(len(epoch_cases) - len(fit)) // (cfg.recent_repeats - 1)} cases {cfg.recent_repeats} times")
    if val is None:
        print(f"no validation slice: all {cfg.epochs} epochs run and the last one is tested")

    def evaluate(cases: Cases) -> dict:
        return evaluate_network(net, cases, cfg.eval_batch_size, device, cfg.bf16, cfg.max_len, cfg.binary_adj)

    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        net.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        bar = tqdm(length_sorted_batches(epoch_cases, cfg.batch_size, rng), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   mininterval=5.0)
        for index in bar:
            inputs, target = batch_tensors(epoch_cases, index, cfg.max_len, cfg.binary_adj, device)
            graph = None if prior_graph is None else torch.from_numpy(prior_graph[index]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = -net.log_likelihood(target, *inputs, prior_graph=graph).float().mean()
                if encoder is not None:
                    loss = loss + encoder.alignment_loss(torch.cat([target, inputs[0].reshape(-1)])).float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update()
            total += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        train_time = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": total / max(seen, 1), "train_seconds": train_time}
        if ema is not None and val is not None:
            row["val_trained"] = evaluate(val)
        with ema.applied() if ema is not None else nullcontext():
            val_metrics = row["val"] = None if val is None else evaluate(val)
            if cfg.test_each_epoch:
                row["test"] = evaluate(split.test)
            history.append(row)
            if val_metrics is None or val_metrics["HR@20"] > best["HR@20"]:
                best = {"epoch": epoch + 1, "HR@20": val_metrics["HR@20"] if val_metrics else -1.0}
                torch.save({"model": net.state_dict(), "config": mcfg.to_dict(), "train": asdict(cfg), **extra},
                           out / "best.pt")
        averaged = {"ema": ema.state_dict()} if ema is not None else {}
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "config": mcfg.to_dict(), "train": asdict(cfg), "history": history, "best": best,
                    "epoch": epoch, "torch_rng": torch.get_rng_state(), **averaged, **extra}, ckpt_path)
        test_txt = (f" test HR@20 {row['test']['HR@20']:.2f} MRR@20 {row['test']['MRR@20']:.2f}"
                    if "test" in row else "")
        val_txt = f" val HR@20 {val_metrics['HR@20']:.2f} MRR@20 {val_metrics['MRR@20']:.2f}" if val_metrics else ""
        if "val_trained" in row:
            val_txt += (f" (averaged; trained weights {row['val_trained']['HR@20']:.2f} / "
                        f"{row['val_trained']['MRR@20']:.2f})")
        print(f"epoch {epoch + 1}: loss {row['loss']:.4f} ({train_time:.0f}s){val_txt}{test_txt}", flush=True)
        if epoch + 1 - best["epoch"] >= cfg.patience:
            print(f"early stop: no validation gain for {cfg.patience} epochs")
            break

    best_state = torch.load(out / "best.pt", weights_only=True, map_location=device)
    net.load_state_dict(best_state["model"])
    test = evaluate(split.test)
    results = {"dataset": split.name, "data": cfg.data, "train": asdict(cfg), "model": mcfg.to_dict(),
               "history": history, "best_epoch": best["epoch"], "test": test,
               "mean_epoch_seconds": float(np.mean([h["train_seconds"] for h in history]))}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_curves(history, out / "curves.png")
    chosen = "best validation epoch" if val is not None else "last epoch"
    print(f"test ({chosen} {best['epoch']}): " +
          " ".join(f"{k} {v:.2f}" for k, v in test.items() if k != "cases"))
    return results


def plot_curves(history: list[dict], path: Path) -> None:
    """PNG of training loss and validation/test HR@20 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    if history and history[0]["val"]:
        ax2.plot(epochs, [h["val"]["HR@20"] for h in history], marker="o", label="validation")
    if history and "test" in history[0]:
        ax2.plot(epochs, [h["test"]["HR@20"] for h in history], marker="s", label="test")
    ax2.set(xlabel="epoch", ylabel="HR@20 (%)", title="HR@20")
    if ax2.lines:
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no per-epoch evaluation\n(a refit, tested after the last epoch)",
                 ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``igrec train`` (one per :class:`TrainConfig` field; model options via ``--set``)."""
    d = TrainConfig(data="")
    p.add_argument("--data", required=True, help="split folder (train_sessions.txt + test.tsv), or a raw click "
                   "log with --raw-format")
    p.add_argument("--raw-format", choices=["diginetica", "yoochoose", "csv"],
                   help="read --data as a raw log with the SR-GNN preprocessing (model/data.py)")
    p.add_argument("--out", default=d.out, help="run folder: best.pt, checkpoint.pt, results.json, curves.png")
    p.add_argument("--arch", choices=["igrec", "srgnn", "gru4rec"], default=d.arch,
                   help="igrec (multi-interest GGNN), srgnn (its plain single-graph baseline) or gru4rec")
    options = [
        ("epochs", int, "maximum epochs (early stopping may end sooner)"),
        ("batch-size", int, "training cases per step (batches hold prefixes of similar length)"),
        ("eval-batch-size", int, "cases per evaluation step"),
        ("lr", float, "peak learning rate of the network (AdamW; linear warm-up, then linear decay)"),
        ("lr-embedding", float, "peak learning rate of the item encoder (default: --lr)"),
        ("weight-decay", float, "AdamW weight decay"),
        ("warmup", float, "share of all steps spent warming the learning rate up"),
        ("ema", float, "evaluate and save a moving average of the weights (model/averaging.py) whose per-step "
         "decay grows with training up to this, e.g. 0.999 (0 = off: the trained weights themselves)"),
        ("val-fraction", float, "newest share of training sessions held out for validation / early stopping; "
         "0 = train on all of them for exactly --epochs and test the last epoch (a refit once the epoch "
         "count is chosen)"),
        ("val-max-cases", int, "at most this many validation cases (a seeded sample)"),
        ("recent-fraction", float, "train the cases of this newest share of the (fit) sessions --recent-repeats "
         "times per epoch: the test period follows the training period (0 = every case once)"),
        ("recent-repeats", int, "how often an epoch holds each case of the newest --recent-fraction sessions"),
        ("max-train-cases", int, "train on a seeded sample of this many cases (default: all)"),
        ("patience", int, "epochs without a better validation HR@20 before stopping"),
        ("seed", int, "seed of sampling, shuffling and initialisation"),
        ("threads", int, "torch CPU threads (default: all cores); use 1 next to another busy process"),
        ("max-len", int, "clicks of a prefix the network sees (the most recent ones)"),
    ]
    for name, typ, text in options:
        default = getattr(d, name.replace("-", "_"))
        shown = "" if default is None or "(default" in text else f" (default {default})"
        p.add_argument(f"--{name}", type=typ, default=default, help=text + shown)
    p.add_argument("--device", default=d.device, help="cpu or cuda (a GPU where one exists)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (default: bf16 autocast)")
    p.add_argument("--binary-adj", action="store_true", help="0/1 edges (SR-GNN code) instead of count-weighted")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-test-each-epoch", dest="test_each_epoch", action="store_false",
                   help="evaluate the test split only once, with the best validation epoch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --set interests=4 --set use_repeat=false")
    p.add_argument("--kg", help="kg.txt (item relation entity): fuse knowledge into the item embeddings "
                   "(model/multimodal.py)")
    p.add_argument("--item-features", action="append", default=[], metavar="NAME=PATH",
                   help="dense item modality: .npz with features [n_items+1, F] and present [n_items+1]; "
                   "NAME 'text' joins the attention query, others are tokens (e.g. image=img.npz)")
    p.add_argument("--fusion", action="append", default=[], metavar="KEY=VALUE",
                   help="multimodal encoder option (EncoderConfig), e.g. --fusion align_weight=0.1")
    p.add_argument("--lr-group", action="append", default=[], metavar="NAME=LR",
                   help="learning rate of one parameter group: id, text, image, knowledge, fusion, network")


def parse_model_options(pairs: list[str]) -> dict:
    """``["dim=128", "use_global=false"]`` -> ``{"dim": 128, "use_global": False}``."""
    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = float(value) if value.replace(".", "", 1).replace("e-", "", 1).isdigit() else value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    values["model"] = parse_model_options(args.set)
    values["item_features"] = dict(pair.split("=", 1) for pair in args.item_features)
    values["fusion"] = parse_model_options(args.fusion)
    values["lr_groups"] = {k: float(v) for k, v in parse_model_options(args.lr_group).items()}
    return TrainConfig(**values)
