"""Load-time rewrites of a model graph into the graphs the inference core runs.

The artifact's ``model.onnx`` keeps the contract's outputs (raw ``score`` and
``contributions``).  At load the core derives from it, in memory:

* :func:`pruned` — the graph cut down to the nodes some outputs need
  (onnxruntime runs every node whatever outputs are fetched);
* :func:`without_imputation` — the graph for batches without a missing value:
  the imputation ``Where(IsNaN(features), medians, features)`` dropped, so a
  complete batch skips two passes over its values (12-20% of the cheapest
  graphs at 256 rows, 2-core reference machine).  For a row without NaN the
  ``Where`` returns the row itself, so scores are bit-identical;
* :func:`top_contributions` — the graph pruned to ``contributions`` with a
  ``TopK`` appended, run on the alerting rows where contributions come on
  demand.

Appending the card's calibration and threshold as nodes was measured too and
dropped: onnxruntime's ``Gather`` on a few hundred indices costs about as much
as numpy's fancy indexing, and the twenty nodes came to 11-14 µs per 256 rows
against 7.9 µs for :class:`models.calibration.KnotLookup`.  Only ``onnx`` is
imported, at load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["TOP_INDEX", "TOP_SHARE", "pruned", "top_contributions", "without_imputation"]

TOP_SHARE = "anomstream_top_share"
TOP_INDEX = "anomstream_top_index"


def _inputs_of(node: Any) -> set[str]:
    """Every tensor a node reads, its subgraphs' outer-scope references included."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in sub.node:
                names |= _inputs_of(inner)
    return names


def _copy(model: Any) -> Any:
    out = type(model)()
    out.CopyFrom(model)
    return out


def _set_nodes(graph: Any, nodes: Iterable[Any]) -> None:
    """Replace a graph's nodes (copied first: clearing a repeated field invalidates its items)."""
    kept = [_copy(n) for n in nodes]
    del graph.node[:]
    graph.node.extend(kept)


def _drop_unused_initializers(graph: Any) -> None:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used |= _inputs_of(node)
    inits = [_copy(t) for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def pruned(model: Any, outputs: list[str]) -> tuple[Any, bool]:
    """A copy of ``model`` keeping only ``outputs`` and the nodes they need; and whether any node went."""
    model = _copy(model)
    graph = model.graph
    nodes = list(graph.node)
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed |= _inputs_of(node)
    _set_nodes(graph, reversed(kept))
    outs = [_copy(o) for o in graph.output if o.name in outputs]
    del graph.output[:]
    graph.output.extend(outs)
    _drop_unused_initializers(graph)
    return model, len(kept) < len(nodes)


def without_imputation(model: Any) -> Any | None:
    """A copy of ``model`` for inputs without NaN, or None when it imputes nothing.

    Drops every ``Where(IsNaN(features), _, features)``, reading ``features``
    where its result was read (the ``IsNaN`` goes too when nothing else reads
    it).  Other uses of ``IsNaN`` (indicator columns) are kept.
    """
    model = _copy(model)
    graph = model.graph
    x = graph.input[0].name
    nodes = list(graph.node)
    isnan = {n.output[0] for n in nodes if n.op_type == "IsNaN" and n.input[0] == x}
    rename = {
        n.output[0]: x for n in nodes if n.op_type == "Where" and n.input[0] in isnan and n.input[2] == x
    }
    if not rename or any(o.name in rename for o in graph.output):
        return None
    _set_nodes(graph, [n for n in nodes if n.output[0] not in rename])
    _rename_inside(graph, rename)
    read = set().union(*(_inputs_of(n) for n in graph.node)) | {o.name for o in graph.output}
    _set_nodes(graph, [n for n in graph.node if not (n.op_type == "IsNaN" and n.output[0] not in read)])
    _drop_unused_initializers(graph)
    return model


def _rename_inside(graph: Any, rename: dict[str, str]) -> None:
    """Read ``rename[name]`` wherever a node (or a subgraph's node: If/Loop bodies) reads ``name``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_inside(sub, rename)


def top_contributions(model: Any, top_k: int) -> Any:
    """A copy of ``model`` pruned to ``contributions`` whose outputs are each row's top ``top_k`` of them.

    Outputs :data:`TOP_SHARE` (float32 ``[N, top_k]``) and :data:`TOP_INDEX`
    (int64 ``[N, top_k]``), largest first, ordered as the core's numpy path
    orders them: ties to the lower column, NaN after every number (``TopK``
    has no order for NaN, so NaN ranks as -inf there and the shares are read
    back from the contributions; shares are never -inf).  For the alerting
    rows of a batch, this saves the numpy selection (~3.5 µs for a few rows).
    """
    from onnx import TensorProto, helper, numpy_helper

    model, _ = pruned(model, ["contributions"])
    graph = model.graph
    c, nan, ranked, values = "contributions", "anomstream_top_nan", "anomstream_top_ranked", "anomstream_top_values"
    graph.initializer.extend([
        numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), "anomstream_minus_inf"),
        numpy_helper.from_array(np.array([top_k], dtype=np.int64), "anomstream_top_k"),
    ])
    graph.node.extend([
        helper.make_node("IsNaN", [c], [nan], name="anomstream_top_nan_node"),
        helper.make_node("Where", [nan, "anomstream_minus_inf", c], [ranked], name="anomstream_top_ranked_node"),
        helper.make_node("TopK", [ranked, "anomstream_top_k"], [values, TOP_INDEX], name="anomstream_top_node",
                         axis=1, largest=1, sorted=1),
        helper.make_node("GatherElements", [c, TOP_INDEX], [TOP_SHARE], name="anomstream_top_share_node", axis=1),
    ])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(TOP_SHARE, TensorProto.FLOAT, ["N", top_k]),
                         helper.make_tensor_value_info(TOP_INDEX, TensorProto.INT64, ["N", top_k])])
    return model
