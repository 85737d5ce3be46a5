"""A tiny builder for the ONNX graphs the zoo exports.

Every exported model has the same interface (see CONTRACT.md §3): input
``features`` float32 ``[N, D]``; outputs ``score`` float32 ``[N]`` and
``contributions`` float32 ``[N, D]``; opsets ai.onnx 17 and ai.onnx.ml 3.

Examples
--------
>>> import numpy as np
>>> g = GraphBuilder()
>>> two = g.initializer("two", np.array(2.0, dtype=np.float32))
>>> s = g.node("ReduceSum", ["features", g.initializer("axes", np.array([1]))], keepdims=0)
>>> c = g.node("Mul", ["features", two])
>>> model = g.build("features", 3, {"score": s, "contributions": c})
>>> onnx.checker.check_model(model)
>>> [o.name for o in model.graph.output]
['score', 'contributions']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ML_DOMAIN", "ML_OPSET", "OPSET", "GraphBuilder", "row_shares", "rowwise_matmul"]

OPSET = 17
ML_OPSET = 3
ML_DOMAIN = "ai.onnx.ml"
# IR version 8 is the one that goes with opset 17: readable by every onnxruntime we support.
_IR_VERSION = 8
_OUTPUT_RANK = {"score": 1, "contributions": 2}


def row_shares(a: NDArray[np.floating]) -> NDArray[np.float64]:
    """Divide each non-negative row by its sum (an all-zero row stays zero).

    The native twin of :meth:`GraphBuilder.row_shares`; detectors use both so
    their contributions are normalised alike.
    """
    a = np.asarray(a, dtype=np.float64)
    total = a.sum(axis=1, keepdims=True)
    out = np.zeros_like(a)
    np.divide(a, total, out=out, where=total > 0)
    return out


def rowwise_matmul(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """``a @ b`` accumulated in a fixed order, so a row's result never depends on the batch.

    BLAS picks its blocking by the batch size, which moves the last bits.
    """
    out = np.zeros((a.shape[0], b.shape[1]))
    for j in range(a.shape[1]):
        out += a[:, j : j + 1] * b[j]
    return out


class GraphBuilder:
    """Collect nodes and initializers, handing out unique tensor names.

    The model's input and output names (``features``, ``score``,
    ``contributions``) are reserved, so intermediate tensors never clash with
    the names :meth:`build` gives the final outputs.
    """

    def __init__(self) -> None:
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[TensorProto] = []
        self._used: set[str] = {"features", *_OUTPUT_RANK}

    def _fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            name, i = f"{hint}_{i}", i + 1
        self._used.add(name)
        return name

    def initializer(self, name_hint: str, array: NDArray[Any]) -> str:
        """Add a constant tensor; returns its (unique) name."""
        name = self._fresh(name_hint)
        self._initializers.append(numpy_helper.from_array(np.asarray(array), name=name))
        return name

    @overload
    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        domain: str = ...,
        n_outputs: Literal[1] = ...,
        name_hint: str | None = ...,
        **attrs: Any,
    ) -> str: ...

    @overload
    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        domain: str = ...,
        n_outputs: int,
        name_hint: str | None = ...,
        **attrs: Any,
    ) -> list[str]: ...

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        *,
        domain: str = "",
        n_outputs: int = 1,
        name_hint: str | None = None,
        **attrs: Any,
    ) -> str | list[str]:
        """Add a node; returns its output name, or a list of names when ``n_outputs > 1``.

        Attributes whose value is ``None`` are left out.
        """
        hint = name_hint or op_type.lower()
        outputs = [self._fresh(hint) for _ in range(n_outputs)]
        kept = {k: v for k, v in attrs.items() if v is not None}
        self._nodes.append(
            helper.make_node(
                op_type,
                list(inputs),
                outputs,
                name=self._fresh(f"{hint}_node"),
                domain=domain,
                **kept,
            )
        )
        return outputs[0] if n_outputs == 1 else outputs

    def include(self, model: onnx.ModelProto, inputs: dict[str, str], *, prefix: str) -> dict[str, str]:
        """Copy another model's graph in (a torch or skl2onnx export, say).

        ``inputs`` maps each graph input of ``model`` to a tensor of this
        builder; every other tensor is renamed under ``prefix``.  Returns the
        model's output names mapped to their tensors here.  The included model
        must use opsets this builder exports (ai.onnx <= 17, ai.onnx.ml <= 3).
        """
        for opset in model.opset_import:
            limit = OPSET if opset.domain in ("", "ai.onnx") else ML_OPSET if opset.domain == ML_DOMAIN else None
            if limit is None or opset.version > limit:
                raise ValueError(f"cannot include a model using opset {opset.domain or 'ai.onnx'} {opset.version}")
        graph = model.graph
        missing = [i.name for i in graph.input if i.name not in inputs and i.name not in {t.name for t in graph.initializer}]
        if missing:
            raise ValueError(f"inputs {missing} of the included model are not mapped")
        rename: dict[str, str] = dict(inputs)

        def fresh(name: str) -> str:
            if name == "":
                return ""
            if name not in rename:
                rename[name] = self._fresh(f"{prefix}_{name}".replace("/", "_").replace(":", "_").replace(".", "_"))
            return rename[name]

        for init in graph.initializer:
            t = TensorProto()
            t.CopyFrom(init)
            t.name = fresh(init.name)
            self._initializers.append(t)
        for node in graph.node:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.ClearField("input")
            n.ClearField("output")
            n.input.extend(fresh(i) for i in node.input)
            n.output.extend(fresh(o) for o in node.output)
            n.name = self._fresh(f"{prefix}_{node.name or node.op_type}_node")
            self._nodes.append(n)
        return {o.name: rename[o.name] for o in graph.output}

    def lookup(self, table: str, idx: str, width: int, *, name_hint: str = "lookup") -> str:
        """Nodes reading ``table[0, idx]`` for a table held as one row [1, X] and int64 indices ``idx`` [N, width].

        ``GatherElements`` along the row between two reshapes, [N, width] out:
        onnxruntime's ``Gather`` on a one-axis table copies value by value
        (117.8 against 27.6 µs at 256 × 32 from 524,256 values, 2-core
        machine, 2026-11-23); the values are the same.
        """
        row = self.initializer("lookup_row_shape", np.array([1, -1], dtype=np.int64))
        rows = self.initializer("lookup_rows_shape", np.array([-1, width], dtype=np.int64))
        flat = self.node("Reshape", [idx, row], name_hint=f"{name_hint}_index")
        got = self.node("GatherElements", [table, flat], axis=1, name_hint=f"{name_hint}_row")
        return self.node("Reshape", [got, rows], name_hint=name_hint)

    def prefix_count(self, x: str, values: np.ndarray, table: str, op: str, *, name_hint: str = "probe") -> str:
        """Nodes counting, per cell of ``x`` [N, D], how many of its column's sorted values ``v`` satisfy ``op(v, x)``.

        ``values`` [D, width] holds each column's values ascending, padded with
        +inf to ``width = 2**k - 1``; ``table`` is the initializer of
        ``values.reshape(1, -1)``.  The count (int64 [N, D], at most ``width``)
        is a prefix length found bit by bit from the highest: an unrolled binary
        search.  The first probe is the same for every row (a constant); the
        others read the table with :meth:`lookup`.
        """
        d, width = values.shape
        flat = values.ravel()
        col_start = np.arange(d, dtype=np.int64) * width
        pos = self.initializer(f"{name_hint}_zero", np.array(0, dtype=np.int64))
        first = True
        step = (width + 1) // 2
        while step >= 1:
            # Is the last value of the candidate prefix pos + step inside?
            if first:
                value = self.initializer(f"{name_hint}_value", flat[col_start + (step - 1)])
            else:
                offset = self.initializer(f"{name_hint}_offset", col_start + (step - 1))
                value = self.lookup(table, self.node("Add", [pos, offset], name_hint=name_hint), d,
                                    name_hint=f"{name_hint}_value")
            inside = self.node(op, [value, x], name_hint=f"{name_hint}_inside")
            step_c = self.initializer(f"{name_hint}_step", np.array(step, dtype=np.int64))
            longer = step_c if first else self.node("Add", [pos, step_c], name_hint=f"{name_hint}_longer")
            pos = self.node("Where", [inside, longer, pos], name_hint=f"{name_hint}_prefix")
            first, step = False, step // 2
        return pos

    def row_shares(self, x: str) -> str:
        """Nodes dividing each row of the non-negative ``[N, D]`` tensor ``x`` by its sum."""
        axes = self.initializer("axes1", np.array([1], dtype=np.int64))
        total = self.node("ReduceSum", [x, axes], keepdims=1, name_hint="row_total")
        zero = self.initializer("zero", np.array(0.0, dtype=np.float32))
        one = self.initializer("one", np.array(1.0, dtype=np.float32))
        positive = self.node("Greater", [total, zero], name_hint="row_positive")
        # An all-zero row divides by 1 and stays zero.
        safe = self.node("Where", [positive, total, one], name_hint="row_divisor")
        return self.node("Div", [x, safe], name_hint="shares")

    def build(self, input_name: str, n_features: int, outputs: dict[str, str]) -> onnx.ModelProto:
        """Finish the model: one float32 ``[N, n_features]`` input, named outputs.

        ``outputs`` maps each final name (``score``, ``contributions``) to the
        tensor holding it; an Identity node gives it its final name.
        """
        unknown = sorted(set(outputs) - set(_OUTPUT_RANK))
        if unknown:
            raise ValueError(f"unknown graph outputs {unknown}, expected {sorted(_OUTPUT_RANK)}")
        nodes = list(self._nodes)
        out_infos = []
        for final, tensor in outputs.items():
            nodes.append(helper.make_node("Identity", [tensor], [final], name=f"{final}_out"))
            shape: list[str | int] = ["N"] if _OUTPUT_RANK[final] == 1 else ["N", n_features]
            out_infos.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, shape))
        graph = helper.make_graph(
            nodes,
            "anomstream",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n_features])],
            out_infos,
            initializer=self._initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", OPSET),
                helper.make_opsetid(ML_DOMAIN, ML_OPSET),
            ],
            producer_name="anomstream",
        )
        model.ir_version = _IR_VERSION
        return model
