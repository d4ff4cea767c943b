"""PyTorch network -> ONNX (opset 18): dynamic batch and graph sizes, top-K inside the graph. Needs torch.

The graph takes the numpy session-graph arrays of :mod:`model.graphs` and returns
``top_items int64 [B, K]`` and ``top_scores float32 [B, K]`` (log-probabilities, best first), so the worker
never moves a ``[B, n_items]`` tensor. Constant tables (item embeddings, the global-graph neighbour
tables) are initializers inside the graph, not inputs.

Exporters: ``torchscript`` (the default: fast, needs nothing beyond torch; deprecated upstream since torch
2.9 but present in 2.15) or ``dynamo`` (``torch.export``; needs the ``onnxscript`` package). Both run on the
CPU: the network's GRU (GRU4Rec) and the hand-written GGNN gates export differently under CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.artefact import FORMAT_VERSION
from export.split import HEAD_METADATA, HEAD_PREFIX
from model.graphs import build_history_graphs, build_session_graphs

SESSION_INPUTS = ("items", "alias", "adj", "mask")
HISTORY_INPUTS = ("hist_items", "hist_adj")
OUTPUTS = ("top_items", "top_scores")
HEAD_DIMS = {"head.prior_ids": "prior_slots", "head.prior_bias": "prior_slots", "head.node_logp": "nodes"}
DIMS = {"items": ("batch", "nodes"), "alias": ("batch", "clicks"), "adj": ("batch", "nodes", "nodes_x2"),
        "mask": ("batch", "clicks"), "hist_items": ("batch", "hist_nodes"),
        "hist_adj": ("batch", "hist_nodes", "hist_nodes_x2")}
DTYPES = {"items": "int64", "alias": "int64", "adj": "float", "mask": "float", "hist_items": "int64",
          "hist_adj": "float", "top_items": "int64", "top_scores": "float"}
EXPORTERS = ("torchscript", "dynamo")


class TopKScorer(nn.Module):
    """``net`` followed by ``torch.topk``: the module that is exported (a network with a ``top_k`` method,
    IGRec, computes the same top-K more cheaply itself, see :meth:`model.network.IGRec.top_k`).

    forward(items [B,N], alias [B,L], adj [B,N,2N], mask [B,L], hist_items [B,H], hist_adj [B,H,2H])
    -> (top_items int64 [B, K], top_scores float32 [B, K]); the history inputs exist only when the network
    uses history (see :func:`input_names`). With ``head_outputs``, a network with a ``head`` (IGRec) also
    returns its :class:`model.network.HeadInputs` that are not None, in their order (see :func:`head_names`).
    """

    def __init__(self, net: nn.Module, k: int, history: bool, head_outputs: bool = False):
        super().__init__()
        self.net = net
        self.k = k
        self.history = history
        self.head_outputs = head_outputs

    def forward(self, items, alias, adj, mask, hist_items=None, hist_adj=None):
        history = (hist_items, hist_adj) if self.history else (None, None)
        if hasattr(self.net, "head"):
            inputs = self.net.head_inputs(items, alias, adj, mask, *history)
            top = self.net.head(self.k, items, inputs)
            return (*top, *(t for t in inputs if t is not None)) if self.head_outputs else top
        top_scores, top_items = torch.topk(self.net(items, alias, adj, mask, *history), self.k, dim=-1)
        return top_items, top_scores


def head_names(net: nn.Module, example: tuple[torch.Tensor, ...]) -> list[str]:
    """The graph's names of ``net``'s head inputs (``head.<field>`` of :class:`model.network.HeadInputs`,
    those the network computes), or [] for a network without a head."""
    if not hasattr(net, "head"):
        return []
    history = example[4:] if uses_history(net) else ()
    with torch.no_grad():
        inputs = net.head_inputs(*example[:4], *history)
    return [f"{HEAD_PREFIX}{name}" for name, value in zip(inputs._fields, inputs, strict=True) if value is not None]


def uses_history(net: nn.Module) -> bool:
    """Whether the network reads the historical-graph inputs (IGRec with ``use_history``)."""
    cfg = net.config
    return cfg.arch == "igrec" and bool(getattr(cfg, "use_history", False))


def input_names(net: nn.Module) -> list[str]:
    """The ONNX inputs of ``net``: the session graph, plus the history graph when the network uses it."""
    return [*SESSION_INPUTS, *(HISTORY_INPUTS if uses_history(net) else ())]


def example_inputs(n_items: int, names: list[str]) -> tuple[torch.Tensor, ...]:
    """A small traced example with every dynamic dimension >= 2 (size 1 would be specialised by
    ``torch.export``), built by the same numpy graph code the runtime uses."""
    rng = np.random.default_rng(0)
    top = max(2, min(n_items, 50))
    sessions = [rng.integers(1, top + 1, size=n).tolist() for n in (5, 3, 2)]
    history = [[rng.integers(1, top + 1, size=4).tolist(), [1, 2]], [], [[2, 1, 2]]]
    g = build_session_graphs(sessions)
    h = build_history_graphs(history)
    arrays = {"items": g.items, "alias": g.alias, "adj": g.adj, "mask": g.mask, "hist_items": h.items,
              "hist_adj": h.adj}
    return tuple(torch.from_numpy(arrays[n]) for n in names)


def export_onnx(net: nn.Module, path: str | Path, k: int = 20, opset: int = 18,
                exporter: str = "torchscript") -> dict:
    """Export ``net`` (moved to CPU, eval mode) with top-``k`` to ``path``; returns the card's ``onnx`` block.

    The file is a single protobuf (weights inside) with metadata_props that the Scorer cross-checks against
    the card (format version, k, n_items, opset).
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: expected one of {EXPORTERS}")
    n_items = int(net.config.n_items)
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} must be in 1..n_items={n_items}")
    net = net.cpu().eval()
    names = input_names(net)
    example = example_inputs(n_items, names)
    heads = head_names(net, example)
    module = TopKScorer(net, k, uses_history(net), head_outputs=bool(heads)).eval()
    path = Path(path)
    with torch.no_grad():
        if exporter == "torchscript":
            _export_torchscript(module, example, names, [*OUTPUTS, *heads], path, opset)
        else:
            _export_dynamo(module, example, names, [*OUTPUTS, *heads], path, opset)
    model = onnx.load(str(path))
    kept = [output for output in model.graph.output if output.name in OUTPUTS]
    for output in kept:  # K is fixed; the exporter leaves it symbolic after a gather
        last = output.type.tensor_type.shape.dim[-1]
        last.ClearField("dim_param")
        last.dim_value = k
    del model.graph.output[:]  # the head inputs stay named tensors inside the graph, not outputs (copied first)
    model.graph.output.extend(kept)
    meta = {"igrec.format_version": FORMAT_VERSION, "igrec.k": k, "igrec.n_items": n_items, "igrec.opset": opset}
    if heads:
        meta[HEAD_METADATA] = ",".join(heads)
    onnx.helper.set_model_props(model, {key: str(value) for key, value in meta.items()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return describe(model, opset, exporter)


def _export_torchscript(module: nn.Module, example: tuple, names: list[str], outputs: list[str], path: Path,
                        opset: int) -> None:
    """Trace and export with named dynamic axes. Silenced warnings: the deprecation notice, the in-place
    scatter rewrite, and GRU's shape checks / fixed-batch caution (the parity check runs other batch sizes)."""
    import warnings

    axes = {n: dict(enumerate(DIMS[n])) for n in names}
    axes |= {o: {0: "batch", **({1: HEAD_DIMS[o]} if o in HEAD_DIMS else {})} for o in outputs}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Removing mutation.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*GRU.*")
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset, input_names=names,
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)


def _export_dynamo(module: nn.Module, example: tuple, names: list[str], outputs: list[str], path: Path,
                   opset: int) -> None:
    dim = torch.export.Dim
    batch, nodes, clicks = dim("batch", min=1), dim("nodes", min=1), dim("clicks", min=1)
    hist = dim("hist_nodes", min=1)
    shapes = {"items": {0: batch, 1: nodes}, "alias": {0: batch, 1: clicks}, "adj": {0: batch, 1: nodes, 2: 2 * nodes},
              "mask": {0: batch, 1: clicks}, "hist_items": {0: batch, 1: hist},
              "hist_adj": {0: batch, 1: hist, 2: 2 * hist}}
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        program = torch.onnx.export(module, example, dynamo=True, opset_version=opset, input_names=names,
                                    output_names=outputs, dynamic_shapes=tuple(shapes[n] for n in names),
                                    verbose=False)
    program.save(str(path), external_data=False)


def describe(model, opset: int, exporter: str) -> dict:
    """The card's ``onnx`` block: opset, exporter, versions, and every input/output's name, dtype and shape
    (symbolic dims by name, fixed ones as ints)."""
    import onnx

    def io(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": "float" if dtype == "float32" else dtype, "shape": shape})
        return out

    return {"opset": opset, "ir_version": int(model.ir_version), "exporter": exporter,
            "torch": torch.__version__, "onnx": onnx.__version__, "inputs": io(model.graph.input),
            "outputs": io(model.graph.output)}
