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
  demand;
* :func:`cuda_capturable` — whether CUDA could replay the graph as one CUDA
  graph (no operator without a CUDA kernel, no control flow);
* :func:`fused_affine` — on the CPU, each per-column affine step on the
  input side (the histogram grids' ``z * 2**p + bias``, the scalers' and
  centrings' ``x - c``) as one ``BatchNormalization``.  onnxruntime
  broadcasts a ``[D]`` operand over ``[N, D]`` row by row (~2.5 µs per op at
  256 × 32, against ~0.4 µs for a scalar); the fused node costs less than
  one such op.  Every product is exact, so the bits are the original's.

Appending the card's calibration and threshold as nodes was measured too and
dropped: onnxruntime's ``Gather`` on a few hundred indices costs about as much
as numpy's fancy indexing, and the twenty nodes came to 11-14 µs per 256 rows
against 7.9 µs for :class:`models.calibration.KnotLookup` (the core now
calibrates 256 rows in ~6 µs, ``np.interp`` on the sorted scores).  Only ``onnx`` is
imported, at load.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TOP_INDEX", "TOP_SHARE", "DensityStage", "ExactStage", "ForestCut", "NeighbourCut", "NeighbourSearch", "PcaCut", "PrefixCount", "contribution_handover", "cuda_capturable",
    "density_stage", "forest_cut", "fused_affine", "grid_tail_total", "neighbour_cut", "pca_cut", "pruned", "top_contributions",
    "with_inputs", "with_outputs", "without_imputation",
]

TOP_SHARE = "anomstream_top_share"
TOP_INDEX = "anomstream_top_index"


_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def cuda_capturable(model: Any) -> bool:
    """Whether onnxruntime's CUDA provider could capture ``model`` as one CUDA graph.

    Capture needs every node on the GPU and no control flow: the ``ai.onnx.ml``
    operators (the tree ensembles) have no CUDA kernel, and ``If``, ``Loop`` and
    ``Scan`` cannot be captured.  A graph passing this check may still be
    refused at session creation; the core falls back then.
    """
    return not any(
        node.domain not in ("", "ai.onnx") or node.op_type in _CONTROL_FLOW for node in model.graph.node
    )


def _attr(node: Any, key: str, default: Any) -> Any:
    """A node's attribute ``key``, or ``default``."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)


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


def _part(model: Any, info: dict[str, Any], nodes: list[Any], inputs: list[str], outputs: list[str]) -> Any:
    """A copy of ``model`` holding ``nodes``, reading ``inputs`` and making ``outputs`` (typed from ``info``)."""
    part = _copy(model)
    _set_nodes(part.graph, nodes)
    del part.graph.input[:]
    part.graph.input.extend([_copy(info[n]) for n in inputs])
    del part.graph.output[:]
    part.graph.output.extend([_copy(info[n]) for n in outputs])
    _drop_unused_initializers(part.graph)
    return part


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


def _imputed(graph: Any) -> set[str]:
    """The outputs of the graph's ``Where(IsNaN(features), _, features)`` nodes (its input with NaN replaced)."""
    x = graph.input[0].name
    isnan = {n.output[0] for n in graph.node if n.op_type == "IsNaN" and n.input[0] == x}
    return {n.output[0] for n in graph.node if n.op_type == "Where" and n.input[0] in isnan and n.input[2] == x}


def imputes(model: Any) -> bool:
    """Whether ``model`` replaces NaN in its input (a ``Where(IsNaN(features), _, features)``)."""
    return bool(_imputed(model.graph))


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
    rename = dict.fromkeys(_imputed(graph), x)
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


def _tensor_infos(model: Any) -> dict[str, Any]:
    """Every typed tensor of ``model`` (inputs, intermediates, outputs) by name, from one shape inference."""
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(model).graph
    return {v.name: v for v in [*graph.input, *graph.value_info, *graph.output] if v.type.tensor_type.HasField("shape")}


def _row_width(info: Any) -> float:
    """Values per row (every dimension after the first) of a typed tensor; inf where a size is unknown."""
    width = 1.0
    for dim in info.type.tensor_type.shape.dim[1:]:
        width *= dim.dim_value if dim.HasField("dim_value") else float("inf")
    return width


def _positive_powers_of_two(v: NDArray[Any]) -> bool:
    """Whether every entry is a positive power of two in float32's normal range (products by it are exact)."""
    if v.dtype != np.float32 or not np.all(np.isfinite(v)) or not np.all(v > 0):
        return False
    mantissa, exponent = np.frexp(v)
    # x * 2**e rounds only where the product itself leaves the normal range, alike in every form.
    return bool(np.all(mantissa == 0.5) and np.all(exponent > -125) and np.all(exponent < 128))


# Producers a BatchNormalization must not follow: onnxruntime folds one after a MatMul or Conv
# (through reshapes) into the weights, which would round differently.
_NO_BN_AFTER = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}


def fused_affine(model: Any) -> Any | None:
    """A copy of ``model`` with its per-column affine steps on ``[N, D]`` as ``BatchNormalization``; None if none.

    Rewrites, with ``c``, ``b``, ``s`` float32 initializers of shape ``[D]``
    and ``s`` positive powers of two: ``Add(Mul(x, s), b)`` (nothing else
    reading the product) as ``x * s + b``; ``Sub(x, c)`` as ``x * 1 + (-c)``;
    ``Add(x, b)`` as ``x * 1 + b``; ``Mul(x, s)`` as ``x * s + (-0.0)``;
    ``Div(x, s)`` as ``x * (1 / s) + (-0.0)``.  ``BatchNormalization`` with
    mean 0, variance 1 and epsilon 0 computes ``x * scale + bias``, and every
    product here is exact, so whether the node rounds once (a fused
    multiply-add) or twice, each result is the original's bit for bit: the
    one rounding is the addition's, ``x - c`` is ``x + (-c)`` in IEEE
    arithmetic, and adding ``-0.0`` keeps every value, ``-0.0`` included.
    ``x`` must have rank 2 with ``D`` columns (shape inference) and not come
    from a MatMul, Gemm, Conv or reshape, which onnxruntime would fold a
    ``BatchNormalization`` into.  For the CPU only: cuDNN raises epsilon to
    1e-5.
    """
    from onnx import helper, numpy_helper

    widths = {name: _row_width(v) for name, v in _tensor_infos(model).items()
              if len(v.type.tensor_type.shape.dim) == 2}  # [N, D]: D
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[Any]] = {}
    producer: dict[str, str] = {}
    for node in model.graph.node:
        for name in _inputs_of(node):
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node.op_type
    outputs = {o.name for o in model.graph.output}

    def vector(name: str) -> NDArray[np.float32] | None:
        t = inits.get(name)
        if t is None:
            return None
        v = numpy_helper.to_array(t)
        return v if v.ndim == 1 and v.dtype == np.float32 and np.all(np.isfinite(v)) else None

    def affine(node: Any) -> tuple[str, NDArray[np.float32], NDArray[np.float32], Any | None] | None:
        """(x, scale, bias, the Add folded in or None) for a node that is a per-column affine step."""
        if node.op_type not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2:
            return None
        x, v = node.input[0], vector(node.input[1])
        if v is None and node.op_type in ("Mul", "Add"):
            x, v = node.input[1], vector(node.input[0])
        if v is None or inits.get(x) is not None or producer.get(x) in _NO_BN_AFTER or widths.get(x) != v.size:
            return None
        one, minus_zero = np.ones_like(v), np.full_like(v, -0.0)
        if node.op_type == "Sub":
            return x, one, -v, None
        if node.op_type == "Add":
            return x, one, v, None
        if not _positive_powers_of_two(v):
            return None
        if node.op_type == "Div":
            return x, (1.0 / v).astype(np.float32), minus_zero, None
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add" and node.output[0] not in outputs:
            add = after[0]
            bias = vector(add.input[1] if add.input[0] == node.output[0] else add.input[0])
            if bias is not None and bias.shape == v.shape:
                return x, v, bias, add
        return x, v, minus_zero, None

    nodes = list(model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    fused: dict[int, Any] = {}  # position of a node -> its replacement
    dropped: set[int] = set()  # positions of Adds folded into a Mul's replacement
    extra: list[Any] = []
    for at, node in enumerate(nodes):
        if at in dropped:
            continue
        found = affine(node)
        if found is None:
            continue
        x, scale, bias, add = found
        out = node.output[0] if add is None else add.output[0]
        k = f"anomstream_affine{len(fused)}"
        extra += [numpy_helper.from_array(scale, f"{k}_scale"), numpy_helper.from_array(bias, f"{k}_bias"),
                  numpy_helper.from_array(np.zeros_like(scale), f"{k}_mean"),
                  numpy_helper.from_array(np.ones_like(scale), f"{k}_var")]
        fused[at] = helper.make_node(
            "BatchNormalization", [x, f"{k}_scale", f"{k}_bias", f"{k}_mean", f"{k}_var"], [out],
            name=f"{k}_node", epsilon=0.0,
        )
        if add is not None:
            dropped.add(position[id(add)])
    if not fused:
        return None
    model = _copy(model)
    _set_nodes(model.graph, [fused.get(i, n) for i, n in enumerate(model.graph.node) if i not in dropped])
    model.graph.initializer.extend(extra)
    _drop_unused_initializers(model.graph)
    return model


# Ops whose results are worth handing over rather than recomputing for a few rows.
_COSTLY = {"TopK", "MatMul", "Gemm", "TreeEnsembleRegressor", "TreeEnsembleClassifier", "TreeEnsemble", "Conv"}
_HANDOVER_WIDTH = 64  # at most this many values per row are handed from the score call to the contributions call


def _ancestors(producer: dict[str, Any], names: set[str], *, stop: str | None = None) -> list[Any]:
    """The nodes (of those in ``producer``, by output name) that the tensors ``names`` are computed from.

    Nodes of type ``stop`` are included but not walked past.
    """
    seen: set[int] = set()
    out: list[Any] = []
    stack = [producer[n] for n in names if n in producer]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if node.op_type != stop:
            stack.extend(producer[i] for i in _inputs_of(node) if i in producer)
    return out


def contribution_handover(model: Any) -> list[str]:
    """Tensors the score call can hand to the alerting rows' contributions call, sparing its costly part.

    The contributions need some nodes the score needs too (the neighbour
    search of KNN and LOF: a distance product over every reference row and
    two ``TopK``).  Walking back from the contributions-only nodes, a tensor
    the score also computes is handed over when it is narrow (at most 64
    values per row, e.g. the candidates' row numbers and the neighbours'
    weights) and some costly op (``TopK``, a matrix product, a tree
    ensemble) lies behind it; otherwise its producer is recomputed on the
    alerting rows (per-feature differences to the candidates: wide, cheap
    for a few rows).  Empty where the contributions share nothing costly
    with the score (IForest's credit forest reads the features only).
    """
    width = {name: _row_width(v) for name, v in _tensor_infos(model).items() if v.type.tensor_type.shape.dim}
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    behind_costly: set[str] = set()  # tensors with a costly op among their producers (nodes are in order)
    for node in graph.node:
        if node.op_type in _COSTLY or behind_costly.intersection(_inputs_of(node)):
            behind_costly.update(node.output)

    score_side = {id(n) for n in _ancestors(producer, {"score"})}
    handover: list[str] = []
    stack = [i for n in _ancestors(producer, {"contributions"}) if id(n) not in score_side for i in _inputs_of(n)]
    visited: set[str] = set()
    while stack:
        name = stack.pop()
        if name in visited or name in constants or name not in producer:
            continue
        visited.add(name)
        node = producer[name]
        if id(node) not in score_side:
            stack.extend(_inputs_of(node))
            continue
        if name in behind_costly and width.get(name, float("inf")) <= _HANDOVER_WIDTH:
            handover.append(name)
        else:
            stack.extend(_inputs_of(node))  # recomputed for the alerting rows
    return sorted(handover)


def with_inputs(model: Any, names: list[str]) -> Any:
    """A copy of ``model`` reading the tensors ``names`` as graph inputs (their producers dropped where unneeded).

    Only the outputs that do not need the dropped producers' other results
    should be fetched from it; :func:`pruned` to those outputs first or after.
    """
    info = _tensor_infos(model)
    model = _copy(model)
    graph = model.graph
    cut = set(names)
    _set_nodes(graph, [n for n in graph.node if not cut.intersection(n.output)])
    graph.input.extend([_copy(info[n]) for n in names])
    return model


def with_outputs(model: Any, names: list[str]) -> Any:
    """A copy of ``model`` that also outputs the (intermediate) tensors ``names``."""
    info = _tensor_infos(model)
    model = _copy(model)
    model.graph.output.extend([_copy(info[n]) for n in names])
    return model


_INT32 = 6  # onnx TensorProto.INT32
_CANDIDATES = re.compile(r"(^|[_/.])candidates(_\d+)?$")
_SEARCH_OPS = frozenset({"Pad", "MatMul", "Reshape", "ReduceMin", "TopK", "Unsqueeze", "GatherND",
                         "ReduceMax", "Abs", "Mul", "Add", "Min", "Div", "GatherElements", "Mod"})


@dataclass(frozen=True)
class NeighbourSearch:
    """One neighbour-candidate search of a graph (:func:`neighbour_cut`), as :mod:`stream.native` runs it.

    The nodes from ``Pad(x)`` to ``output`` compute, for each row of ``x``
    [N, D] (float32, centred), the ``kk`` columns of smallest float32 product
    ``[x, 1] @ weights`` (weights [D + 1, width], width a multiple of 64), as
    int64 [N, kk] (``models.zoo.neighbours``).
    """

    x: str
    weights: NDArray[np.float32]
    kk: int
    output: str
    exact: ExactStage | None = None


@dataclass(frozen=True)
class ExactStage:
    """The start of the exact stage after a search: ``output`` = ``(float64(x)[:, None, :] - rows[candidates])**2``.

    ``x`` [N, D] float32, ``rows`` [M, D] float64; ``output`` [N, kk, D]
    float64 (``Gather``, ``Cast``, ``Tile``, ``Reshape``, ``Sub``, ``Mul``
    in the graph: element-wise, so any code gives its bits).
    """

    x: str
    rows: NDArray[np.float64]
    output: str


@dataclass(frozen=True)
class PrefixCount:
    """One ECDF count of a graph (:meth:`models.onnx_graph.GraphBuilder.prefix_count`, :func:`neighbour_cut`).

    ``output`` (int64 [N, D]) holds, per cell of ``x`` [N, D], how many of
    its column's ascending values ``values[j]`` (float32 [D, width], width
    ``2**k - 1``, padded with +inf) satisfy ``v <= x`` (``v < x`` where
    ``strict``), as the graph's unrolled search finds it (a NaN counts 0).
    """

    x: str
    values: NDArray[np.float32]
    strict: bool
    output: str


@dataclass(frozen=True)
class NeighbourCut:
    """A graph cut around its neighbour searches and ECDF counts: ``head`` (None where nothing precedes them),
    the searches and counts, and ``tail`` reading the head's ``head_outputs`` and their outputs."""

    head: Any
    head_outputs: list[str]
    searches: list[NeighbourSearch]
    tail: Any
    tail_inputs: list[str]
    counts: list[PrefixCount] = field(default_factory=list)


def neighbour_cut(model: Any, *, searches: bool = True, counts: bool = False) -> NeighbourCut | None:
    """``model`` cut around its grouped neighbour-candidate searches (and, with ``counts``, its ECDF counts), or
    None where it has none.

    A search is found by its output's name (``candidates``, as
    :meth:`models.zoo.neighbours.ReferenceSet.onnx_nearest` names it, with
    any prefix an ensemble gives) and checked by its shape: the nodes behind
    that output, back to the ``Pad`` appending a one to the centred rows,
    are the grouped search's operators only, hold one ``MatMul`` by a
    float32 constant ``[D + 1, width]`` (width a multiple of 64), one
    ``ReduceMin`` and ``TopK`` nodes all keeping the same constant ``kk``,
    and feed nothing else.  Anything else leaves the graph whole.  Where the
    exact stage after a search starts as :class:`ExactStage` describes, its
    first nodes join the search (they read nothing the head does not make).
    An ECDF count (:class:`PrefixCount`) is found by its chain of ``Where``
    nodes and checked step by step against its table.
    """
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: t for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in _inputs_of(node):
            readers.setdefault(name, []).append(node)
    found_searches: list[NeighbourSearch] = []
    found_counts: list[PrefixCount] = []
    cut: set[int] = set()
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if counts and node.op_type == "Where" and not any(
                r.op_type == "Where" and r.input[2] == out for r in readers.get(out, [])):
            count = _count_behind(out, producer, consts, readers, numpy_helper)
            if count is not None:
                found_counts.append(count[0])
                cut |= {id(n) for n in count[1]}
            continue
        if not searches or node.op_type != "Add" or not _CANDIDATES.search(out):
            continue
        found = _search_behind(out, producer, consts, readers, numpy_helper)
        if found is None:
            continue
        search, nodes = found
        exact = _exact_after(search, producer, consts, readers, numpy_helper)
        if exact is not None:
            search = replace(search, exact=exact[0])
            nodes = nodes + exact[1]
        found_searches.append(search)
        cut |= {id(n) for n in nodes}
    if not found_searches and not found_counts:
        return None
    rest = [n for n in graph.node if id(n) not in cut]
    rest_producer = {o: n for n in rest for o in n.output}
    wanted = [s.x for s in found_searches] + [s.exact.x for s in found_searches if s.exact is not None] \
        + [c.x for c in found_counts]
    head_ids = {id(n) for n in _ancestors(rest_producer, set(wanted))}
    head_nodes = [n for n in rest if id(n) in head_ids]
    tail_nodes = [n for n in rest if id(n) not in head_ids]
    graph_inputs = [i.name for i in graph.input]
    outputs = {o.name for o in graph.output}
    head_made = {o for n in head_nodes for o in n.output}
    searched = {s.output for s in found_searches} | {s.exact.output for s in found_searches if s.exact is not None} \
        | {c.output for c in found_counts}
    tail_reads = set().union(*(_inputs_of(n) for n in tail_nodes)) if tail_nodes else set()
    tail_inputs = [name for name in [*graph_inputs, *sorted(head_made), *sorted(searched)]
                   if name in tail_reads and name not in consts]
    head_outputs = sorted({x for x in wanted if x in head_made}
                          | {n for n in tail_inputs if n in head_made} | (head_made & outputs))
    info = _tensor_infos(model)
    head = _part(model, info, head_nodes, graph_inputs, head_outputs) if head_nodes else None
    tail_made = {o for n in tail_nodes for o in n.output}
    tail = _part(model, info, tail_nodes, tail_inputs, [o.name for o in graph.output if o.name in tail_made])
    return NeighbourCut(head, head_outputs, found_searches, tail, tail_inputs, found_counts)


def _count_behind(out: str, producer: dict[str, Any], consts: dict[str, Any], readers: dict[str, list[Any]],
                  numpy_helper: Any) -> tuple[PrefixCount, list[Any]] | None:
    """The ECDF count ending at ``out`` and its nodes, or None where the nodes behind it are not one.

    Step by step from the last: ``pos = Where(op(value, x), longer, prev)``
    with ``op`` ``LessOrEqual`` or ``Less`` (the same in every step) on the
    same ``x``; in the first step ``prev`` is the int64 constant 0, ``longer``
    the step and ``value`` a constant row; in the others ``longer =
    Add(prev, step)`` and ``value`` the table read at ``Add(prev, offset)``
    (``Reshape``, ``GatherElements`` along axis 1, ``Reshape``).  The steps
    must halve from ``(width + 1) / 2`` to 1 and every offset and first
    value be the table's, for a table of ``D`` ascending rows of width ``2**k
    - 1``; nothing but the last ``pos`` may be read outside the chain.
    """
    def const(name: str) -> NDArray[Any] | None:
        return numpy_helper.to_array(consts[name]) if name in consts else None

    def shape_is(name: str, want: list[int]) -> bool:
        v = const(name)
        return v is not None and v.tolist() == want

    def made_by(name: str, op: str, n_in: int) -> Any:
        got = producer.get(name)
        if got is None or got.op_type != op or len(got.input) != n_in or got.domain not in ("", "ai.onnx"):
            raise _NoMatch(name)
        return got

    nodes: list[Any] = []
    steps: list[tuple[int, NDArray[Any], bool]] = []  # (step, offsets or first values, first)
    x = op = table = None
    name = out
    try:
        while True:
            where = made_by(name, "Where", 3)
            inside = producer.get(where.input[0])
            if inside is None or inside.op_type not in ("LessOrEqual", "Less") or len(inside.input) != 2:
                return None
            if (x is not None and inside.input[1] != x) or (op is not None and inside.op_type != op):
                return None
            x, op = inside.input[1], inside.op_type
            nodes += [where, inside]
            prev = where.input[2]
            zero = const(prev)
            if zero is not None:  # the first step
                step, probes = const(where.input[1]), const(inside.input[0])
                if zero.dtype != np.int64 or zero.size != 1 or int(zero.reshape(-1)[0]) != 0 or step is None \
                        or step.size != 1 or probes is None or probes.dtype != np.float32 or probes.ndim != 1:
                    return None
                steps.append((int(step.reshape(-1)[0]), probes, True))
                break
            longer = made_by(where.input[1], "Add", 2)
            back = made_by(inside.input[0], "Reshape", 2)
            gather = made_by(back.input[0], "GatherElements", 2)
            flat = made_by(gather.input[1], "Reshape", 2)
            at = made_by(flat.input[0], "Add", 2)
            step, offsets = const(longer.input[1]), const(at.input[1])
            t = const(gather.input[0])
            if (longer.input[0] != prev or at.input[0] != prev or step is None or step.size != 1 or offsets is None
                    or offsets.dtype != np.int64 or offsets.ndim != 1 or t is None or t.dtype != np.float32
                    or t.ndim != 2 or t.shape[0] != 1 or _attr(gather, "axis", 0) != 1
                    or (table is not None and gather.input[0] != table)
                    or not shape_is(flat.input[1], [1, -1]) or not shape_is(back.input[1], [-1, offsets.size])):
                return None
            table = gather.input[0]
            nodes += [longer, back, gather, flat, at]
            steps.append((int(step.reshape(-1)[0]), offsets, False))
            name = prev
    except _NoMatch:
        return None
    if table is None or x is None:
        return None
    flat_table = const(table)
    assert flat_table is not None
    d = steps[-1][1].size
    width = flat_table.size // d if d else 0
    steps.reverse()
    starts = np.arange(d, dtype=np.int64) * width
    want = (width + 1) // 2
    if d < 1 or width < 1 or width * d != flat_table.size or (width + 1) & width:
        return None
    values = np.ascontiguousarray(flat_table.reshape(d, width))
    for size, probe, first in steps:
        if size != want or probe.size != d:
            return None
        if first and not np.array_equal(probe.view(np.uint32), values[:, size - 1].view(np.uint32)):
            return None
        if not first and not np.array_equal(probe, starts + (size - 1)):
            return None
        want //= 2
    if want != 0 or np.any(values[:, 1:] < values[:, :-1]):  # every step down to 1; ascending rows
        return None
    if not _sealed(nodes, out, readers):
        return None
    return PrefixCount(x, values, op == "Less", out), nodes


def _sealed(nodes: list[Any], out: str, readers: dict[str, list[Any]]) -> bool:
    """Whether nothing ``nodes`` make but ``out`` is read by a node outside them."""
    ids = {id(n) for n in nodes}
    return not any(o != out and any(id(r) not in ids for r in readers.get(o, [])) for n in nodes for o in n.output)


def _search_behind(out: str, producer: dict[str, Any], consts: dict[str, Any], readers: dict[str, list[Any]],
                   numpy_helper: Any) -> tuple[NeighbourSearch, list[Any]] | None:
    """The grouped search ending at ``out`` and its nodes, or None where the nodes behind it are not one.

    The search starts at the ``Pad`` appending a one to the centred rows
    (whether the centring is a ``Sub`` or, after :func:`fused_affine`, part of
    a ``BatchNormalization``, it stays in the head).
    """
    nodes = _ancestors(producer, {out}, stop="Pad")
    for node in nodes:
        if node.op_type not in _SEARCH_OPS or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type != "Pad" and any(i not in consts and i not in producer for i in _inputs_of(node)):
            return None  # a graph input reached without passing the Pad
    ops = [n.op_type for n in nodes]
    if ops.count("MatMul") != 1 or ops.count("ReduceMin") != 1 or ops.count("Pad") != 1:
        return None
    if not _sealed(nodes, out, readers):  # nothing but the output leaves the search
        return None
    matmul = next(n for n in nodes if n.op_type == "MatMul")
    pad = next(n for n in nodes if n.op_type == "Pad")
    if matmul.input[0] != pad.output[0] or matmul.input[1] not in consts:
        return None
    weights = numpy_helper.to_array(consts[matmul.input[1]])
    pads = numpy_helper.to_array(consts[pad.input[1]]) if len(pad.input) > 1 and pad.input[1] in consts else None
    one = numpy_helper.to_array(consts[pad.input[2]]) if len(pad.input) > 2 and pad.input[2] in consts else None
    ks = {numpy_helper.to_array(consts[n.input[1]]).reshape(-1)[0].item() for n in nodes
          if n.op_type == "TopK" and n.input[1] in consts}
    if (weights.dtype != np.float32 or weights.ndim != 2 or weights.shape[1] % 64 or pads is None
            or pads.tolist() != [0, 0, 0, 1] or one is None or float(one) != 1.0 or len(ks) != 1
            or ops.count("TopK") != sum(1 for n in nodes if n.op_type == "TopK" and n.input[1] in consts)):
        return None
    kk = int(ks.pop())
    if not 1 <= kk <= min(64, weights.shape[1] // 64):
        return None
    return NeighbourSearch(pad.input[0], np.ascontiguousarray(weights), kk, out), nodes


def _exact_after(search: NeighbourSearch, producer: dict[str, Any], consts: dict[str, Any],
                 readers: dict[str, list[Any]], numpy_helper: Any) -> tuple[ExactStage, list[Any]] | None:
    """The exact stage's first nodes reading ``search``'s candidates, or None where they are not there.

    ``Gather(rows, candidates)`` (float64 constant rows), ``Cast(x, double)``
    tiled ``kk`` times and reshaped to ``[N, kk, D]``, their ``Sub`` and its
    square (``Mul(diff, diff)``), each read only by the next.
    """
    kk = search.kk
    gathers = [n for n in readers.get(search.output, []) if n.op_type == "Gather" and n.input[1] == search.output
               and n.input[0] in consts]
    if len(gathers) != 1:
        return None
    gather = gathers[0]
    rows = numpy_helper.to_array(consts[gather.input[0]])
    axis = _attr(gather, "axis", 0)
    d = search.weights.shape[0] - 1
    if rows.dtype != np.float64 or rows.ndim != 2 or rows.shape[1] != d or axis != 0:
        return None

    def sole_reader(name: str, op: str) -> Any | None:
        got = {id(n): n for n in readers.get(name, [])}
        if len(got) != 1:
            return None
        node = next(iter(got.values()))
        return node if node.op_type == op else None

    sub = sole_reader(gather.output[0], "Sub")
    if sub is None or sub.input[1] != gather.output[0] or sub.input[0] not in producer:
        return None
    reshape = producer[sub.input[0]]
    if reshape.op_type != "Reshape" or reshape.input[1] not in consts or reshape.input[0] not in producer:
        return None
    tile = producer[reshape.input[0]]
    if tile.op_type != "Tile" or tile.input[1] not in consts or tile.input[0] not in producer:
        return None
    cast = producer[tile.input[0]]
    to = _attr(cast, "to", None)
    if cast.op_type != "Cast" or to != 11 or cast.input[0] in consts:  # 11: DOUBLE
        return None
    if (numpy_helper.to_array(consts[reshape.input[1]]).tolist() != [0, kk, d]
            or numpy_helper.to_array(consts[tile.input[1]]).tolist() != [1, kk]):
        return None
    mul = sole_reader(sub.output[0], "Mul")
    if mul is None or list(mul.input) != [sub.output[0], sub.output[0]]:
        return None
    for node, nxt in ((cast, tile), (tile, reshape), (reshape, sub)):
        if [id(r) for r in readers.get(node.output[0], [])] != [id(nxt)]:
            return None
    stage = ExactStage(cast.input[0], np.ascontiguousarray(rows), mul.output[0])
    return stage, [gather, cast, tile, reshape, sub, mul]


@dataclass(frozen=True)
class DensityStage:
    """LOF's stage after its exact sums (:func:`density_stage`), as :mod:`stream.native` runs it compiled.

    From the candidates ``candidates`` [N, kk] of a search with an exact
    stage: the ``k_sq``-th smallest summed squared difference splits them,
    ties filled by row number (the ``k_key``-th smallest key), and the score
    is ``float32(mean(lrd[chosen]) * (mean(max(dist, k_distance[chosen])) +
    eps))`` with the means as ``sum * inv_k``.  ``score`` and ``chosen``
    name the graph's tensors it computes; ``k_distance`` and ``lrd`` are the
    float64 tables per reference row.
    """

    candidates: str
    score: str
    chosen: str
    k_sq: int
    k_key: int
    k_distance: NDArray[np.float64]
    lrd: NDArray[np.float64]
    inv_k: float
    eps: float


class _NoMatch(Exception):
    pass


def density_stage(cut: NeighbourCut) -> DensityStage | None:
    """LOF's density stage in ``cut``'s tail, matched node by node, or None where the tail is anything else.

    The cut must hold one search with an exact stage; the tail's ``score``
    output must come from its squared differences as
    :meth:`models.zoo.lof.LOF.onnx_graph` and
    :meth:`models.zoo.neighbours.ReferenceSet.onnx_nearest_set` build it
    (``ReduceSum`` over the features; ``TopK`` and ``ReduceMin``/``ReduceMax``
    for the two k-th smallest values; ``Equal``/``Less``/``Where`` for the tie
    key; ``LessOrEqual`` and a ``Cast`` to double for the 0/1 weight;
    ``Sqrt``, the two ``GatherElements`` lookups between ``Reshape`` nodes,
    ``Max``, the two weighted ``ReduceSum`` means, ``Add`` of ``eps``, ``Mul``,
    a ``Cast`` to float and an ``Identity``), with every constant of the
    expected value and type.
    """
    from onnx import numpy_helper

    if len(cut.searches) != 1 or cut.searches[0].exact is None:
        return None
    search = cut.searches[0]
    exact = search.exact
    assert exact is not None
    graph = cut.tail.graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kk, rows = search.kk, exact.rows.shape[0]

    def node(name: str, op: str, n_in: int) -> Any:
        got = producer.get(name)
        if got is None or got.op_type != op or len(got.input) != n_in or got.domain not in ("", "ai.onnx"):
            raise _NoMatch(name)
        return got

    def const(name: str, dtype: Any, shape: tuple[int, ...] | None = None) -> NDArray[Any]:
        if name not in consts or consts[name].dtype != dtype or (shape is not None and consts[name].shape != shape):
            raise _NoMatch(name)
        return consts[name]

    def scalar(name: str) -> float:
        v = const(name, np.float64)
        if v.size != 1:
            raise _NoMatch(name)
        return float(v.reshape(-1)[0])

    def axes(n: Any, want: int) -> None:
        """``n`` reduces its input's last axis, ``want`` (or -1)."""
        got = list(_attr(n, "axes", [])) if len(n.input) == 1 else const(n.input[1], np.int64).reshape(-1).tolist()
        if got not in ([want], [-1]) or _attr(n, "noop_with_empty_axes", 0):
            raise _NoMatch(n.name)

    def kth(name: str, of: str) -> int:
        """The k of a k-th smallest of ``of`` along its rows (TopK then ReduceMax/ReduceMin)."""
        red = producer.get(name)
        if red is None or red.op_type not in ("ReduceMax", "ReduceMin") or _attr(red, "keepdims", 1) != 1:
            raise _NoMatch(name)
        axes(red, 1)
        top = node(red.input[0], "TopK", 2)
        count = const(top.input[1], np.int64).reshape(-1)
        if top.input[0] != of or top.output[0] != red.input[0] or count.size != 1 or _attr(top, "axis", -1) not in (1, -1):
            raise _NoMatch(name)
        largest, c = _attr(top, "largest", 1), int(count[0])
        if not 1 <= c <= kk:
            raise _NoMatch(name)
        if largest == 0 and red.op_type == "ReduceMax":  # the largest of the c smallest
            return c
        if largest == 1 and red.op_type == "ReduceMin":  # the smallest of the c largest
            return kk - c + 1
        raise _NoMatch(name)

    def lookup(name: str) -> NDArray[np.float64]:
        back = node(name, "Reshape", 2)
        gather = node(back.input[0], "GatherElements", 2)
        flat = node(gather.input[1], "Reshape", 2)
        table = const(gather.input[0], np.float64, (1, rows))
        if (_attr(gather, "axis", 0) != 1 or flat.input[0] != search.output
                or const(flat.input[1], np.int64).tolist() != [1, -1]
                or const(back.input[1], np.int64).tolist() != [-1, kk]):
            raise _NoMatch(name)
        return np.ascontiguousarray(table.reshape(-1))

    def mean(name: str) -> tuple[str, str, float]:
        """(values, weight, inv_k) of ``Mul(ReduceSum(Mul(values, weight), last axis), inv_k)``."""
        scaled = node(name, "Mul", 2)
        total = node(scaled.input[0], "ReduceSum", 2)
        axes(total, 1)
        weighted = node(total.input[0], "Mul", 2)
        if _attr(total, "keepdims", 1) != 0:
            raise _NoMatch(name)
        return weighted.input[0], weighted.input[1], scalar(scaled.input[1])

    def where_const(name: str, value: float) -> None:
        if scalar(name) != value:
            raise _NoMatch(name)

    try:
        if "score" not in {o.name for o in graph.output}:
            return None
        out = node("score", "Identity", 1)
        to_float = node(out.input[0], "Cast", 1)
        if _attr(to_float, "to", 0) != 1:  # FLOAT
            return None
        lof = node(to_float.input[0], "Mul", 2)
        shifted = node(lof.input[1], "Add", 2)
        eps = scalar(shifted.input[1])
        lrd_nbrs, chosen, inv_k = mean(lof.input[0])
        reach_name, chosen_again, inv_k_again = mean(shifted.input[0])
        if chosen_again != chosen or inv_k_again != inv_k:
            return None
        reach = node(reach_name, "Max", 2)
        dist = node(reach.input[0], "Sqrt", 1)
        sq = dist.input[0]
        total = node(sq, "ReduceSum", 2)
        axes(total, 2)
        if total.input[0] != exact.output or _attr(total, "keepdims", 1) != 0:
            return None
        k_distance, lrd = lookup(reach.input[1]), lookup(lrd_nbrs)
        weight = node(chosen, "Cast", 1)
        hit = node(weight.input[0], "LessOrEqual", 2)
        if _attr(weight, "to", 0) != 11:  # DOUBLE
            return None
        key = hit.input[0]
        k_key = kth(hit.input[1], key)
        below = node(key, "Where", 3)
        less = node(below.input[0], "Less", 2)
        where_const(below.input[1], -1.0)
        at = node(below.input[2], "Where", 3)
        equal = node(at.input[0], "Equal", 2)
        number = node(at.input[1], "Cast", 1)
        where_const(at.input[2], float("inf"))
        t = less.input[1]
        if (less.input[0] != sq or list(equal.input) != [sq, t] or number.input[0] != search.output
                or _attr(number, "to", 0) != 11):
            return None
        k_sq = kth(t, sq)
    except _NoMatch:
        return None
    return DensityStage(search.output, "score", chosen, k_sq, k_key, k_distance, lrd, inv_k, eps)

def grid_tail_total(cut: GridCut) -> float | None:
    """The constant HBOS's tail adds to the terms' row sums, or None where the tail is anything else.

    The tail (after :func:`grid_cut`) must be ``score = ReduceSum(terms, axis
    1) + total`` (a float32 scalar) and, where the contributions are kept,
    ``contributions = LpNormalization(terms, axis 1, p 1)``, each output
    through an ``Identity``: what ``grading.grid_tail`` computes.
    """
    from onnx import numpy_helper

    graph = cut.tail.graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outputs = [o.name for o in graph.output]
    if outputs not in (["score"], ["score", "contributions"]):
        return None
    try:
        def node(name: str, op: str) -> Any:
            got = producer.get(name)
            if got is None or got.op_type != op or got.domain not in ("", "ai.onnx"):
                raise _NoMatch(name)
            return got

        add = node(node("score", "Identity").input[0], "Add")
        total = consts.get(add.input[1])
        total_sum = node(add.input[0], "ReduceSum")
        axes = (list(_attr(total_sum, "axes", [])) if len(total_sum.input) == 1 else
                consts[total_sum.input[1]].reshape(-1).tolist() if total_sum.input[1] in consts else None)
        if (total is None or total.dtype != np.float32 or total.size != 1 or total_sum.input[0] != cut.terms
                or axes not in ([1], [-1]) or _attr(total_sum, "keepdims", 1) != 0):
            return None
        used = 3
        if "contributions" in outputs:
            lp = node(node("contributions", "Identity").input[0], "LpNormalization")
            if lp.input[0] != cut.terms or _attr(lp, "axis", -1) not in (1, -1) or _attr(lp, "p", 2) != 1:
                return None
            used += 2
        if used != len(graph.node):
            return None
    except _NoMatch:
        return None
    return float(total.reshape(-1)[0])


@dataclass(frozen=True)
class PcaCut:
    """PCA's score graph (:func:`pca_cut`), as ``stream._native._grading.pca_scores`` computes it.

    From the input ``x`` [N, D]: ``xc = x * scale + bias`` (a ``BatchNormalization``; None where the graph
    has none), ``score = sqrt(relu(xc @ w2 + (xc**2 @ w1 + c1))) @ w``, all float32: ``w1``, ``w2`` [D, K],
    ``c1``, ``w`` [K].
    """

    x: str
    scale: NDArray[np.float32] | None
    bias: NDArray[np.float32] | None
    w1: NDArray[np.float32]
    c1: NDArray[np.float32]
    w2: NDArray[np.float32]
    w: NDArray[np.float32]
    medians: NDArray[np.float32] | None = None  # NaN in x replaced by these first (the imputation), if given


class _ScoreNodes:
    """A score-only graph matched node by node from ``score`` back to its input (:func:`pca_cut`, :func:`forest_cut`).

    :meth:`node` returns the producer of a tensor if it is the op expected
    (else raises :class:`_NoMatch`) and counts it as matched; :meth:`reached`
    tells whether a tensor is the graph's input and every node was matched.
    """

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.score_only = [o.name for o in graph.output] == ["score"] and len(graph.input) == 1
        self.input = graph.input[0].name if graph.input else ""
        self.nodes = len(graph.node)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.used: list[Any] = []

    def node(self, name: str, op: str, n_in: int, domain: tuple[str, ...] = ("", "ai.onnx")) -> Any:
        got = self.producer.get(name)
        if got is None or got.op_type != op or len(got.input) != n_in or got.domain not in domain:
            raise _NoMatch(name)
        self.used.append(got)
        return got

    def last(self) -> str:
        """The tensor behind the ``Identity`` to ``score`` (or ``score`` itself where there is none)."""
        made = self.producer.get("score")
        return self.node("score", "Identity", 1).input[0] if made is not None and made.op_type == "Identity" \
            else "score"

    def reached(self, x: str) -> bool:
        return x == self.input and len(self.used) == self.nodes


def pca_cut(model: Any) -> PcaCut | None:
    """``model`` as PCA's score graph, matched node by node, or None where it is anything else.

    The graph must hold exactly :meth:`models.zoo.pca.PCA._graph`'s score
    nodes on a graph input (the contributions pruned away), after the
    optional imputation ``Where(IsNaN(x), medians, x)``: an optional ``BatchNormalization`` (mean 0, variance 1, epsilon 0, as
    :func:`fused_affine` makes them), ``Mul`` of its output by itself, a
    ``Gemm`` of that by a ``[D, K]`` constant plus a ``[1, K]`` constant, a
    ``Gemm`` of the first output by a ``[D, K]`` constant plus that, ``Relu``,
    ``Sqrt``, ``MatMul`` by a ``[K, 1]`` constant and a ``Reshape`` to one
    axis (then an ``Identity`` to ``score``), every ``Gemm`` plain (alpha 1,
    beta 1, no transposes) and every tensor float32.
    """
    m = _ScoreNodes(model)
    if not m.score_only:
        return None
    node, producer, consts = m.node, m.producer, m.consts

    def const(name: str, shape: tuple[int, ...]) -> NDArray[np.float32]:
        v = consts.get(name)
        if v is None or v.dtype != np.float32 or v.shape != shape:
            raise _NoMatch(name)
        return np.ascontiguousarray(v)

    def plain_gemm(g: Any) -> None:
        if (_attr(g, "alpha", 1.0) != 1.0 or _attr(g, "beta", 1.0) != 1.0 or _attr(g, "transA", 0)
                or _attr(g, "transB", 0)):
            raise _NoMatch(g.name)

    try:
        flat = node(m.last(), "Reshape", 2)
        if consts.get(flat.input[1]) is None or consts[flat.input[1]].tolist() != [-1]:
            return None
        matmul = node(flat.input[0], "MatMul", 2)
        dist = node(matmul.input[0], "Sqrt", 1)
        relu = node(dist.input[0], "Relu", 1)
        outer = node(relu.input[0], "Gemm", 3)
        inner = node(outer.input[2], "Gemm", 3)
        square = node(inner.input[0], "Mul", 2)
        plain_gemm(outer)
        plain_gemm(inner)
        xc = square.input[0]
        if square.input[1] != xc or outer.input[0] != xc:
            return None
        w1 = consts.get(inner.input[1])
        if w1 is None or w1.ndim != 2:
            return None
        d, k = w1.shape
        w1, w2 = const(inner.input[1], (d, k)), const(outer.input[1], (d, k))
        c1 = const(inner.input[2], (1, k)).reshape(-1)
        w = const(matmul.input[1], (k, 1)).reshape(-1)
        scale = bias = None
        x = xc
        if xc in producer and producer[xc].op_type == "BatchNormalization":
            bn = node(xc, "BatchNormalization", 5)
            scale, bias = const(bn.input[1], (d,)), const(bn.input[2], (d,))
            mean, var = const(bn.input[3], (d,)), const(bn.input[4], (d,))
            if _attr(bn, "epsilon", 1e-5) != 0.0 or np.any(mean != 0) or np.any(var != 1):
                return None
            x = bn.input[0]
        x, medians = _before_imputation(x, d, node, consts)
        if not m.reached(x):
            return None
    except _NoMatch:
        return None
    return PcaCut(x, scale, bias, w1, np.ascontiguousarray(c1), w2, np.ascontiguousarray(w), medians)


def _before_imputation(x: str, d: int, node: Any, consts: dict[str, Any]) -> tuple[str, NDArray[np.float32] | None]:
    """The tensor behind ``x`` = ``Where(IsNaN(t), medians, t)`` and its ``d`` float32 medians, else (``x``, None).

    ``node(name, op, n_in)`` is the caller's matcher (it raises :class:`_NoMatch`).
    """
    try:
        where = node(x, "Where", 3)
    except _NoMatch:
        return x, None
    isnan = node(where.input[0], "IsNaN", 1)
    medians = consts.get(where.input[1])
    if medians is None or medians.dtype != np.float32 or medians.size != d or medians.ndim > 2 \
            or isnan.input[0] != where.input[2]:
        raise _NoMatch(x)
    return isnan.input[0], np.ascontiguousarray(medians.reshape(-1))


FOREST_MAX_DEPTH = 12  # deeper trees (over 4,096 leaves as complete trees) stay in the graph


@dataclass(frozen=True)
class ForestCut:
    """IForest's score graph (:func:`forest_cut`), as ``stream._native._grading.forest_scores`` computes it.

    ``score = base ** (sum of the trees' leaf values * factor)`` in float32,
    the trees as complete binary trees of ``depth`` levels: node ``i`` of
    tree ``t`` splits on column ``feat[t, i]`` at ``thr[t, i]`` (``x <=
    thr`` to ``2i + 1``, else ``2i + 2``) and ``leaf[t, j]`` is the value at
    the ``j``-th node of the last level.  A leaf of the graph above the last
    level is repeated over the nodes below it (their splits, on column 0,
    lead to the same value whichever way they go).
    """

    x: str
    feat: NDArray[np.int32]  # [trees, 2**depth - 1]
    thr: NDArray[np.float32]  # [trees, 2**depth - 1]
    leaf: NDArray[np.float32]  # [trees, 2**depth]
    depth: int
    factor: float
    base: float
    medians: NDArray[np.float32] | None = None  # NaN in x replaced by these first (the imputation), if given


def forest_cut(model: Any) -> ForestCut | None:
    """``model`` as IForest's score graph, matched node by node, or None where it is anything else.

    The graph must hold exactly :meth:`models.zoo.iforest.IForest.onnx_graph`'s
    score nodes on a graph input (the contributions pruned away), after the
    optional imputation ``Where(IsNaN(x), medians, x)``: one
    ``TreeEnsembleRegressor`` (one target, ``SUM``, no post-transform, no
    base values, ``BRANCH_LEQ`` splits on float32 thresholds, no missing-value
    tracking, one weight per leaf, trees of at most ``FOREST_MAX_DEPTH``
    levels), ``Squeeze`` of axis 1, ``Mul`` by a float32 scalar and ``Pow``
    of a float32 scalar to that (then an ``Identity`` to ``score``).
    """
    m = _ScoreNodes(model)
    if not m.score_only:
        return None
    node, consts = m.node, m.consts

    def scalar(name: str) -> float:
        v = consts.get(name)
        if v is None or v.dtype != np.float32 or v.size != 1:
            raise _NoMatch(name)
        return float(v.reshape(-1)[0])

    try:
        power = node(m.last(), "Pow", 2)
        base = scalar(power.input[0])
        product = node(power.input[1], "Mul", 2)
        path, factor_name = product.input if product.input[1] in consts else product.input[::-1]
        factor = scalar(factor_name)
        squeeze = node(path, "Squeeze", 2)
        if consts.get(squeeze.input[1]) is None or consts[squeeze.input[1]].reshape(-1).tolist() not in ([1], [-1]):
            return None
        forest = node(squeeze.input[0], "TreeEnsembleRegressor", 1, ("ai.onnx.ml",))
        info = _tensor_infos(model)
        x = forest.input[0]
        width = info[m.input].type.tensor_type.shape.dim
        if len(width) != 2 or not width[1].HasField("dim_value"):
            return None
        d = int(width[1].dim_value)
        x, medians = _before_imputation(x, d, node, consts)
        if not m.reached(x):
            return None
        trees = _complete_trees(forest, d)
    except _NoMatch:
        return None
    if trees is None:
        return None
    feat, thr, leaf, depth = trees
    return ForestCut(x, feat, thr, leaf, depth, factor, base, medians)


def _complete_trees(forest: Any, d: int) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.float32],
                                                     int] | None:
    """A ``TreeEnsembleRegressor``'s trees as :class:`ForestCut`'s complete trees, or None where it cannot be."""
    attrs = {a.name: a for a in forest.attribute}
    allowed = {"aggregate_function", "n_targets", "post_transform", "base_values", "nodes_treeids", "nodes_nodeids",
               "nodes_featureids", "nodes_values", "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids",
               "nodes_hitrates", "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids", "target_ids",
               "target_weights"}
    if not allowed.issuperset(attrs) or _attr(forest, "n_targets", 0) != 1 \
            or _attr(forest, "aggregate_function", b"SUM") not in (b"SUM", "SUM") \
            or _attr(forest, "post_transform", b"NONE") not in (b"NONE", "NONE") \
            or any(_attr(forest, "base_values", [])) or any(_attr(forest, "nodes_missing_value_tracks_true", [])):
        return None
    tree_ids = np.asarray(_attr(forest, "nodes_treeids", []), dtype=np.int64)
    node_ids = np.asarray(_attr(forest, "nodes_nodeids", []), dtype=np.int64)
    features = np.asarray(_attr(forest, "nodes_featureids", []), dtype=np.int64)
    values = np.asarray(_attr(forest, "nodes_values", []), dtype=np.float32)
    modes = [m.decode() if isinstance(m, bytes) else m for m in _attr(forest, "nodes_modes", [])]
    true_ids = np.asarray(_attr(forest, "nodes_truenodeids", []), dtype=np.int64)
    false_ids = np.asarray(_attr(forest, "nodes_falsenodeids", []), dtype=np.int64)
    n = len(tree_ids)
    if n == 0 or not all(len(a) == n for a in (node_ids, features, values, modes, true_ids, false_ids)) \
            or not set(modes) <= {"BRANCH_LEQ", "LEAF"}:
        return None
    weights: dict[tuple[int, int], float] = {}
    t_trees, t_nodes = _attr(forest, "target_treeids", []), _attr(forest, "target_nodeids", [])
    t_ids, t_weights = _attr(forest, "target_ids", []), _attr(forest, "target_weights", [])
    if not len(t_trees) == len(t_nodes) == len(t_ids) == len(t_weights) or any(t_ids):
        return None
    for tree, at, w in zip(t_trees, t_nodes, t_weights):
        if (tree, at) in weights:
            return None  # two weights on one leaf: onnxruntime would add them, in its own order
        weights[(tree, at)] = float(np.float32(w))
    count = int(tree_ids.max()) + 1
    index: list[dict[int, int]] = [{} for _ in range(count)]
    for i, (tree, at) in enumerate(zip(tree_ids.tolist(), node_ids.tolist())):
        if tree < 0 or at in index[tree]:
            return None
        index[tree][at] = i
    if any(not nodes or 0 not in nodes for nodes in index):
        return None

    def depth_of(tree: int) -> int:
        deepest, stack = 0, [(0, 0)]
        while stack:
            at, level = stack.pop()
            i = index[tree].get(at)
            if i is None or level > FOREST_MAX_DEPTH:
                raise _NoMatch(str(at))
            if modes[i] == "LEAF":
                if (tree, at) not in weights:
                    raise _NoMatch(str(at))
                deepest = max(deepest, level)
            else:
                if not 0 <= features[i] < d:
                    raise _NoMatch(str(at))
                stack += [(int(true_ids[i]), level + 1), (int(false_ids[i]), level + 1)]
        return deepest

    try:
        depth = max(1, max(depth_of(t) for t in range(count)))
    except _NoMatch:
        return None
    inner = (1 << depth) - 1
    feat = np.zeros((count, inner), dtype=np.int32)
    thr = np.zeros((count, inner), dtype=np.float32)
    leaf = np.zeros((count, inner + 1), dtype=np.float32)
    for tree in range(count):
        stack = [(0, 0, 0)]  # the graph's node, its place in the complete tree, its level
        while stack:
            at, place, level = stack.pop()
            i = index[tree][at]
            if modes[i] == "LEAF":
                below = depth - level  # the leaf spreads over the last level's nodes under its place
                first = ((place + 1) << below) - 1 - inner
                leaf[tree, first:first + (1 << below)] = weights[(tree, at)]
                continue
            feat[tree, place], thr[tree, place] = features[i], values[i]
            stack += [(int(true_ids[i]), 2 * place + 1, level + 1), (int(false_ids[i]), 2 * place + 2, level + 1)]
    return feat, thr, leaf, depth


@dataclass(frozen=True)
class GridCut:
    """A graph whose step-grid lookup on its input rows runs compiled (:func:`grid_cut`, :mod:`stream.native`).

    The lookup (``models/step_grid.py``, flat layout; HBOS's bins) turns the
    input ``x`` [N, D] into ``terms`` [N, D]; ``tail`` is the rest of the
    graph, reading ``tail_inputs`` (``terms``, and ``x`` where it still reads
    it).  The arrays are float32: the grid's scale and offset per column
    (two ``BatchNormalization`` steps), the ``Clip`` bounds, and the flat
    threshold and value tables.
    """

    x: str
    terms: str
    pos_scale: NDArray[np.float32]
    pos_bias: NDArray[np.float32]
    low: float
    high: float
    flat_scale: NDArray[np.float32]
    flat_bias: NDArray[np.float32]
    thresholds: NDArray[np.float32]
    values: NDArray[np.float32]
    tail: Any
    tail_inputs: list[str]


def grid_cut(model: Any) -> GridCut | None:
    """``model`` cut after the step-grid lookup on its input rows, or None where it has no such lookup.

    The lookup is matched node by node: ``BatchNormalization`` of a graph
    input (mean 0, variance 1, epsilon 0), ``Clip`` by two constants, a
    second such ``BatchNormalization``, ``Cast`` to int32 and a ``Reshape``
    to one row (the cells); the input reshaped the same way; a
    ``GatherElements`` of a ``[1, K]`` float32 threshold table at the cells,
    ``Less`` than the input, ``Cast`` to int32, ``Add`` to the cells, a
    ``GatherElements`` of a ``[1, K]`` value table there, and a ``Reshape``
    back to ``[N, D]``.  Its intermediate tensors must feed nothing else, and
    every cell the clipped range can reach must leave room for the step in
    the tables.  The compiled lookup rounds each step as these nodes do, so
    the terms are the graph's bits.
    """
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in _inputs_of(node):
            readers.setdefault(name, []).append(node)
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}

    def only(name: str, op: str) -> Any | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op and name not in outputs else None

    def bn(node: Any | None) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
        if node is None or len(node.input) != 5 or any(i not in consts for i in node.input[1:]):
            return None
        scale, bias, mean, var = (consts[i] for i in node.input[1:])
        if _attr(node, "epsilon", 1e-5) != 0.0 or scale.dtype != np.float32 or bias.dtype != np.float32:
            return None
        if scale.ndim != 1 or bias.shape != scale.shape or np.any(mean != 0) or np.any(var != 1):
            return None
        return scale, bias

    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) != 2:
            continue
        terms = node.output[0]
        gather = only(node.input[0], "GatherElements")
        if gather is None or _attr(gather, "axis", 0) != 1 or gather.input[0] not in consts:
            continue
        add = only(gather.input[1], "Add")
        if add is None or len(add.input) != 2:
            continue
        found: tuple[str, Any, Any, Any] | None = None
        for cell, step in (add.input, add.input[::-1]):
            cast = only(step, "Cast")
            less = only(cast.input[0], "Less") if cast is not None and _attr(cast, "to", 0) == _INT32 else None
            edge = only(less.input[0], "GatherElements") if less is not None else None
            if (edge is not None and less is not None and _attr(edge, "axis", 0) == 1 and edge.input[0] in consts
                    and edge.input[1] == cell):
                found = cell, cast, less, edge
        if found is None:
            continue
        cell, cast, less, edge = found
        view = only(less.input[1], "Reshape")
        cells = only(cell, "Reshape")
        if view is None or cells is None or view.input[0] not in inputs or view.input[1] not in consts:
            continue
        x = view.input[0]
        to_int = only(cells.input[0], "Cast")
        flat = only(to_int.input[0], "BatchNormalization") if to_int is not None and _attr(to_int, "to", 0) == _INT32 else None
        clip = only(flat.input[0], "Clip") if flat is not None else None
        pos = only(clip.input[0], "BatchNormalization") if clip is not None and len(clip.input) == 3 else None
        if pos is None or clip is None or pos.input[0] != x or cells.input[1] not in consts:
            continue
        pos_step, flat_step = bn(pos), bn(flat)
        if pos_step is None or flat_step is None or any(i not in consts for i in clip.input[1:]):
            continue
        (ps, pb), (fs, fb) = pos_step, flat_step
        low, high = (consts[i] for i in clip.input[1:])
        thresholds, values = consts[edge.input[0]], consts[gather.input[0]]
        d = ps.shape[0]
        if fs.shape != (d,) or low.size != 1 or high.size != 1 or low.dtype != np.float32 or high.dtype != np.float32:
            continue
        if thresholds.dtype != np.float32 or values.dtype != np.float32 or thresholds.ndim != 2 or thresholds.shape[0] != 1:
            continue
        if values.shape != thresholds.shape or list(consts[view.input[1]]) != [1, -1] or list(consts[cells.input[1]]) != [1, -1]:
            continue
        if list(consts[node.input[1]]) != [-1, d]:
            continue
        # The cells the clipped range reaches, rounded as the graph rounds them: each must leave room for its step.
        lo, hi = np.float32(low.item()), np.float32(high.item())
        reach = [(np.float32(np.float32(b * fs) + fb)).astype(np.int64) for b in (lo, hi)]
        k = thresholds.shape[1]
        if reach[0].min() < 0 or reach[1].max() > k - 2 or not lo <= hi:
            continue
        chain = [pos, clip, flat, to_int, cells, view, edge, less, cast, add, gather, node]
        made = {o for n in chain for o in n.output} - {terms}
        if any(r not in chain for name in made for r in readers.get(name, [])):
            continue
        rest = [n for n in graph.node if all(n is not c for c in chain)]
        tail_reads = set().union(*(_inputs_of(n) for n in rest)) if rest else set()
        tail_inputs = [terms] + [i.name for i in graph.input if i.name in tail_reads]
        tail = _part(model, _tensor_infos(model), rest, tail_inputs, [o.name for o in graph.output])
        return GridCut(x, terms, ps, pb, float(lo), float(hi), fs, fb, np.ascontiguousarray(thresholds.ravel()),
                       np.ascontiguousarray(values.ravel()), tail, tail_inputs)
    return None
