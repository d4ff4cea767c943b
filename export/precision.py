"""Reduced-precision variants of an artefact's item product, built when a :class:`~export.scorer.Scorer`
loads (numpy + onnx + onnxruntime; never torch). The artefact on disk stays float32 and verified.

The product of the query with every item (:func:`model.network.padded_product`) is most of a scoring call's
work. IGRec's graph (:meth:`model.network.IGRec.top_k`) uses it only to rank and to normalise: it takes the
product's top candidates, scores them and the session's own items again exactly from the float32 table, and
corrects the log-normaliser with those exact terms. So a cheaper product changes the top-K only where the
exact top-K falls outside its top :data:`RERANK_CANDIDATES`, and the scores only by the tail's share of the
normaliser. Each variant below swaps the product and raises the candidate count from K to
:data:`RERANK_CANDIDATES` (the K of both TopKs of :func:`model.network.block_top_k`); nothing else in the
graph changes.

- :func:`int8_model` (CPU): item rows quantised to int8 with a scale per item, each session's query to
  uint8 with a scale per row (not per batch, so a session's answer does not depend on what it is
  batched with), multiplied by onnxruntime's ``MatMulIntegerToFloat`` (MLAS u8s8 kernels, AVX-512 VNNI
  where the CPU has it).
- :func:`fp16_model` (CUDA): the product in float16 between two Casts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.artefact import ArtefactError

RERANK_CANDIDATES = 64
"""Columns of the approximate product that are scored again exactly. With the int8 product on the
Diginetica test split, 32 and 48 kept the float32 top-20 set in 99.975 % of 20,000 cases, with 99.2 and
99.4 % of lists identical; 64 in 99.977 % of all 60,858, 99.4 % identical (docs/results.md). More candidates
make the normaliser more exact rather than find more of the top-20."""

WEIGHT_LEVELS = 64
"""int8 item weights lie in [-64, 64]: 2 * 255 * 64 fits int16, so no u8s8 kernel saturates."""

_PREFIX = "igrec_lowp_"


def folded_model(path: Path) -> onnx.ModelProto:
    """The model after onnxruntime's basic (portable) optimisations: the constant item table, L2-normalised
    and transposed, is folded into one ``[D, n_items]`` initializer."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


CANDIDATE_PATH = frozenset({"Reshape", "Flatten", "ReduceMax", "GatherElements", "Identity"})
"""Operators between the item product and the TopKs that pick its candidates (``IGRec.head``'s
:func:`~model.network.block_top_k`): moving and comparing logits only. The later TopKs read re-scored or
normalised values, which pass through arithmetic."""

PADDING_BIAS = -1e30
"""What the int8 product adds to its padding columns before the per-row scale (``s`` in
:func:`int8_model`, at least ``tiny / 127``): below every real logit even for an all-zero query, and
finite unless a query component exceeds 4e10."""


def _item_product(model: onnx.ModelProto, n_items: int, path: Path) -> tuple[int, onnx.NodeProto, np.ndarray]:
    """(index of the item product's MatMul node, the Pad node that appends the query's 1, the float32
    ``[D + 1, W]`` table) of :func:`model.network.padded_product`: W >= ``n_items`` columns, the last row
    0 for the items and NEG for the padding columns."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = [(i, node) for i, node in enumerate(model.graph.node)
             if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2
             and inits[node.input[1]].dims[1] >= n_items
             and getattr(producer.get(node.input[0]), "op_type", None) == "Pad"]
    if len(found) != 1:
        raise ArtefactError(f"{path}: expected one padded item product [D + 1, >= {n_items}], found {len(found)} "
                            "(an artefact exported before the blockwise top-k: re-export it to score with a "
                            "reduced-precision item product)")
    index, node = found[0]
    return index, producer[node.input[0]], numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)


def _raise_candidates(model: onnx.ModelProto, nodes: list[onnx.NodeProto], logits: str,
                      path: Path) -> list[onnx.NodeProto]:
    """``nodes`` with the K of every TopK that picks the candidates from ``logits`` raised to
    :data:`RERANK_CANDIDATES` (capped at the width it reads, computed in the graph); refuses a graph
    without that exact re-scoring step."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    picks, pending, seen = [], [logits], set()
    while pending:
        name = pending.pop()
        for node in readers.get(name, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "TopK" and node.input[0] == name:
                picks.append(node)
            elif node.op_type in CANDIDATE_PATH:
                pending.extend(node.output)
    if not picks:
        raise ArtefactError(f"{path}: no exact re-scoring of the top candidates in this graph (an artefact "
                            "exported before it existed, or a network without IGRec.top_k): re-export it to "
                            "score with a reduced-precision item product")
    limit = f"{_PREFIX}candidates"
    model.graph.initializer.append(numpy_helper.from_array(np.array([RERANK_CANDIDATES], np.int64), limit))
    raised = []
    for node in nodes:
        if any(node is pick for pick in picks):
            width, k = f"{node.output[1]}_{_PREFIX}width", f"{node.output[1]}_{_PREFIX}k"
            raised += [helper.make_node("Shape", [node.input[0]], [width], start=-1),
                       helper.make_node("Min", [width, limit], [k])]
            node.input[1] = k
        raised.append(node)
    return raised


def _finish(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> bytes:
    """``model`` with ``nodes`` as its graph, less the initializers no node reads any more, serialised."""
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    read = {name for node in nodes for name in node.input} | {output.name for output in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def int8_model(path: Path, n_items: int) -> bytes:
    """The model with its item product in int8 (see the module docstring), for the CPU provider.

    Per session row: ``s = max|q| / 127``, ``q8 = round(q / s) + 128`` (uint8, zero point 128); per item
    column j: ``t = max|w_j| / WEIGHT_LEVELS``, ``w8_j = round(w_j / t)`` (int8). The logits are
    ``MatMulIntegerToFloat(q8, w8, bias) * s``: one int8 product and one pass over ``[B, W]`` for the row
    scales. The weights use 7 bits so that CPUs without VNNI, whose u8s8 kernel adds pairs of products in
    saturating int16 (``vpmaddubsw``), compute the same exact integer sums as those with it. The padding
    columns' NEG comes from the product's bias (:data:`PADDING_BIAS`), not from a quantised query column.
    """
    model = folded_model(path)
    index, pad, wide = _item_product(model, n_items, path)
    product = model.graph.node[index]
    table = wide[:-1]
    scale = np.maximum(np.abs(table).max(0) / WEIGHT_LEVELS, np.finfo(np.float32).tiny)
    names = {x: f"{_PREFIX}{x}" for x in ("table", "scale", "bias", "one", "axis", "tiny", "inv127", "zero", "zp")}
    constants = {"table": np.clip(np.round(table / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8),
                 "scale": scale.astype(np.float32), "one": np.array(1.0, np.float32),
                 "bias": np.where(wide[-1] < 0, PADDING_BIAS, 0).astype(np.float32),
                 "axis": np.array([-1], np.int64), "tiny": np.array(np.finfo(np.float32).tiny, np.float32),
                 "inv127": np.array(1 / 127.0, np.float32), "zero": np.array(128.0, np.float32),
                 "zp": np.array(128, np.uint8)}
    graph = model.graph
    graph.initializer.remove(next(i for i in graph.initializer if i.name == product.input[1]))
    graph.initializer.extend(numpy_helper.from_array(v, names[k]) for k, v in constants.items())
    query, logits = pad.input[0], product.output[0]
    t = {x: f"{_PREFIX}{x}_out" for x in ("abs", "max", "floor", "row", "div", "round", "shift", "q8", "dots")}
    quantise = [
        helper.make_node("Abs", [query], [t["abs"]]),
        helper.make_node("ReduceMax", [t["abs"], names["axis"]], [t["max"]], keepdims=1),
        helper.make_node("Max", [t["max"], names["tiny"]], [t["floor"]]),
        helper.make_node("Mul", [t["floor"], names["inv127"]], [t["row"]]),
        helper.make_node("Div", [query, t["row"]], [t["div"]]),
        helper.make_node("Round", [t["div"]], [t["round"]]),
        helper.make_node("Add", [t["round"], names["zero"]], [t["shift"]]),
        helper.make_node("Cast", [t["shift"]], [t["q8"]], to=TensorProto.UINT8),
        helper.make_node("MatMulIntegerToFloat", [t["q8"], names["table"], names["one"], names["scale"], names["zp"],
                                                  "", names["bias"]], [t["dots"]], domain="com.microsoft"),
        helper.make_node("Mul", [t["dots"], t["row"]], [logits]),
    ]
    nodes = [*graph.node[:index], *quantise, *graph.node[index + 1:]]
    if not any(pad.output[0] in node.input for node in nodes):
        nodes.remove(pad)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return _finish(model, _raise_candidates(model, nodes, _logits_of(nodes, logits), path))


def fp16_model(path: Path, n_items: int) -> bytes:
    """The model with its item product in float16 (see the module docstring), for the CUDA provider.

    The folded ``[D + 1, W]`` table is stored as float16 (its NEG padding bias clipped to float16's
    range) and its MatMul runs between two Casts. onnxruntime's generic ``convert_float_to_float16`` is not
    used: on this graph it emits duplicate node names (an invalid model).
    """
    model = folded_model(path)
    index, _, table = _item_product(model, n_items, path)
    product = model.graph.node[index]
    limit = np.finfo(np.float16).max
    half = numpy_helper.from_array(np.clip(table, -limit, limit).astype(np.float16), product.input[1])
    next(i for i in model.graph.initializer if i.name == product.input[1]).CopyFrom(half)
    query, logits = product.input[0], product.output[0]
    query_half, logits_half = f"{_PREFIX}query_fp16", f"{_PREFIX}logits_fp16"
    product.input[0], product.output[0] = query_half, logits_half
    nodes = [*model.graph.node[:index],
             helper.make_node("Cast", [query], [query_half], to=TensorProto.FLOAT16, name=f"{_PREFIX}cast_in"),
             product,
             helper.make_node("Cast", [logits_half], [logits], to=TensorProto.FLOAT, name=f"{_PREFIX}cast_out"),
             *model.graph.node[index + 1:]]
    return _finish(model, _raise_candidates(model, nodes, _logits_of(nodes, logits), path))


def _logits_of(nodes: list[onnx.NodeProto], product: str) -> str:
    """The explore logits: the product's output, or the co-occurrence prior's ScatterElements over it."""
    readers = [n for n in nodes if product in n.input]
    scatter = [n for n in readers if n.op_type == "ScatterElements"]
    return scatter[0].output[0] if len(readers) == 1 and scatter else product
