"""The scoring graph cut in two where IGRec's item head begins (onnx only; never torch).

An artefact's graph is one ``model.onnx``, and its network part (the session graphs through the GGNN to
the query, :meth:`model.network.IGRec.head_inputs`) costs in proportion to the padded graph size, so the
Scorer runs a mixed batch in size buckets. The item head (:meth:`model.network.IGRec.head`: the
``[B, D] x [D, n_items]`` product, its TopK and log-normaliser, the repeat mixture) does not depend on
padding, but run per bucket it reads the 17 MB item table once per bucket: about 1 ms a run on a 2-core
Zen 4, 70-100 us per session at the worker's chunks of 32-64 (docs/results.md). Cut at the head inputs, the
network runs per bucket and the head over all of a call's rows (in row slices that the Scorer sizes by
cache, not by graph size: ``export.scorer.HEAD_ROWS``).

The exporter names the cut tensors (:data:`HEAD_PREFIX`) and lists them in the model's
``igrec.head`` metadata; :func:`split_at_head` cuts any graph with those tensors, including the reduced-
precision variants of :mod:`export.precision`, and refuses (returns None) a graph whose head reads anything
else of the network: then every bucket runs the whole graph, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx takes 0.6 s to import: the Scorer imports this module for its constants
    import onnx

HEAD_PREFIX = "head."
"""The exporter names each cut tensor ``head.<field>`` after :class:`model.network.HeadInputs`."""
HEAD_METADATA = "igrec.head"
"""The model metadata key that lists the cut tensors, comma-separated."""
ITEMS = "items"
"""The one graph input that the head reads besides the cut tensors (the session's own items)."""
INTEGER_HEAD_INPUTS = ("head.prior_ids",)
"""Cut tensors of type int64; the others are float32. All are ``[batch, width]``."""


def head_inputs(model: onnx.ModelProto) -> list[str]:
    """The cut tensors named in ``model``'s metadata ([] for a graph exported without them)."""
    value = next((p.value for p in model.metadata_props if p.key == HEAD_METADATA), "")
    return [name for name in value.split(",") if name]


def split_at_head(model: onnx.ModelProto) -> tuple[bytes, bytes] | None:
    """(network, head) as serialised models, or None when ``model`` cannot be cut cleanly.

    The network model has every input of ``model`` and the cut tensors as outputs; the head model has
    ``items`` and the cut tensors as inputs and ``model``'s outputs. Both keep ``model``'s opsets, metadata
    and initializers (each only those its nodes read).
    """
    import onnx
    from onnx import TensorProto, helper

    cut = head_inputs(model)
    graph = model.graph
    if not cut or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                      for node in graph.node for a in node.attribute):
        return None
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    inputs = {i.name: i for i in graph.input}
    if ITEMS not in inputs or any(name not in producer for name in cut):
        return None
    network = _reachable(graph, producer, cut, stop=set(inputs))
    head = _reachable(graph, producer, [o.name for o in graph.output], stop={*cut, ITEMS})
    initializers = {i.name: i for i in graph.initializer}
    if _external(graph, head, initializers) - {*cut, ITEMS}:
        return None
    cut_info = [helper.make_tensor_value_info(
        name, TensorProto.INT64 if name in INTEGER_HEAD_INPUTS else TensorProto.FLOAT, ["batch", f"{name}_width"])
        for name in cut]
    return (_model(model, network, list(graph.input), cut_info, initializers),
            _model(model, head, [inputs[ITEMS], *cut_info], list(graph.output), initializers))


def _reachable(graph: onnx.GraphProto, producer: dict[str, int], outputs: list[str], stop: set[str]) -> list[int]:
    """Indices (in graph order, so still topologically sorted) of the nodes that ``outputs`` depend on,
    not looking past ``stop``."""
    seen: set[int] = set()
    pending = list(outputs)
    while pending:
        name = pending.pop()
        if name in stop or name not in producer or producer[name] in seen:
            continue
        seen.add(producer[name])
        pending.extend(x for x in graph.node[producer[name]].input if x)
    return sorted(seen)


def _external(graph: onnx.GraphProto, nodes: list[int], initializers: dict) -> set[str]:
    """What ``nodes`` read that none of them makes and no initializer holds."""
    made = {name for i in nodes for name in graph.node[i].output}
    return {x for i in nodes for x in graph.node[i].input if x and x not in made and x not in initializers}


def _model(model: onnx.ModelProto, nodes: list[int], inputs: list, outputs: list, initializers: dict) -> bytes:
    from onnx import helper

    graph = model.graph
    read = {x for i in nodes for x in graph.node[i].input}
    part = helper.make_graph([graph.node[i] for i in nodes], graph.name, inputs, outputs,
                             [tensor for name, tensor in initializers.items() if name in read])
    cut = helper.make_model(part, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name=model.producer_name, functions=list(model.functions))
    cut.metadata_props.extend(model.metadata_props)
    return cut.SerializeToString()
