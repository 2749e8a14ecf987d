"""A small builder that writes ONNX graphs as arithmetic on symbolic tensors.

Graph code reads like the numpy references it is tested against: ``mean + std * noise`` builds ``Add``
and ``Mul`` nodes. Node and constant names come from counters, so the same build gives the same bytes
(and the same sha256) every time. Only float32 tensors carry data; bools and int64 appear as masks,
indices and the optimiser's step counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ONNX_DTYPES", "GraphBuilder", "Var", "maximum", "minimum", "where"]

ONNX_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}
"""Manifest dtype name -> ONNX element type, for the types these graphs use."""

Dim = int | str


class Var:
    """A tensor inside a :class:`GraphBuilder`; arithmetic operators add nodes."""

    def __init__(self, builder: GraphBuilder, name: str) -> None:
        self.b = builder
        self.name = name

    def _other(self, other: Var | float) -> Var:
        return other if isinstance(other, Var) else self.b.const(other)

    def __add__(self, other: Var | float) -> Var:
        return self.b.op("Add", self, self._other(other))

    def __radd__(self, other: float) -> Var:
        return self.b.op("Add", self._other(other), self)

    def __sub__(self, other: Var | float) -> Var:
        return self.b.op("Sub", self, self._other(other))

    def __rsub__(self, other: float) -> Var:
        return self.b.op("Sub", self._other(other), self)

    def __mul__(self, other: Var | float) -> Var:
        return self.b.op("Mul", self, self._other(other))

    def __rmul__(self, other: float) -> Var:
        return self.b.op("Mul", self._other(other), self)

    def __truediv__(self, other: Var | float) -> Var:
        return self.b.op("Div", self, self._other(other))

    def __rtruediv__(self, other: float) -> Var:
        return self.b.op("Div", self._other(other), self)

    def __neg__(self) -> Var:
        return self.b.op("Neg", self)

    # elementwise functions
    def exp(self) -> Var:
        return self.b.op("Exp", self)

    def log(self) -> Var:
        return self.b.op("Log", self)

    def sqrt(self) -> Var:
        return self.b.op("Sqrt", self)

    def abs(self) -> Var:
        return self.b.op("Abs", self)

    def square(self) -> Var:
        return self.b.op("Mul", self, self)

    def erf(self) -> Var:
        return self.b.op("Erf", self)

    def sinh(self) -> Var:
        return self.b.op("Sinh", self)

    def cast(self, dtype: str) -> Var:
        return self.b.op("Cast", self, to=ONNX_DTYPES[dtype])

    # comparisons (methods, not operators: ``==`` keeps its Python meaning)
    def lt(self, other: Var | float) -> Var:
        return self.b.op("Less", self, self._other(other))

    def le(self, other: Var | float) -> Var:
        return self.b.op("LessOrEqual", self, self._other(other))

    def gt(self, other: Var | float) -> Var:
        return self.b.op("Greater", self, self._other(other))

    def logical_and(self, other: Var) -> Var:
        return self.b.op("And", self, other)

    # shape operations
    def sum(self, axes: Sequence[int] | None = None, keepdims: bool = False) -> Var:
        """``ReduceSum`` over ``axes`` (all axes when ``None``)."""
        if axes is None:
            return self.b.op("ReduceSum", self, keepdims=int(keepdims))
        return self.b.op("ReduceSum", self, self.b.const_int(list(axes)), keepdims=int(keepdims))

    def take(self, index: int | Var, axis: int) -> Var:
        """``Gather`` one index (a scalar removes the axis) or an index tensor along ``axis``."""
        idx = index if isinstance(index, Var) else self.b.const_int(int(index))
        return self.b.op("Gather", self, idx, axis=axis)

    def clip(self, low: float, high: float) -> Var:
        return self.b.op("Clip", self, self.b.const(low), self.b.const(high))


def where(cond: Var, x: Var | float, y: Var | float) -> Var:
    """``Where(cond, x, y)`` with Python floats turned into float32 constants."""
    b = cond.b
    return b.op(
        "Where", cond, x if isinstance(x, Var) else b.const(x), y if isinstance(y, Var) else b.const(y)
    )


def maximum(x: Var, y: Var | float) -> Var:
    return x.b.op("Max", x, x._other(y))


def minimum(x: Var, y: Var | float) -> Var:
    return x.b.op("Min", x, x._other(y))


class GraphBuilder:
    """Collects inputs, nodes, constants and outputs of one graph.

    Parameters
    ----------
    name : str
        Graph name (also the manifest entry's name).
    doc : str
        Human-readable description stored in the model's ``doc_string``.
    """

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._count = 0
        self.input_specs: list[tuple[str, tuple[Dim, ...], str]] = []
        self.output_specs: list[tuple[str, tuple[Dim, ...], str]] = []

    def _fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def input(self, name: str, shape: Sequence[Dim], dtype: str = "float32") -> Var:
        """Declare a graph input of the given shape (ints fixed, strings symbolic)."""
        self._inputs.append(helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], list(shape)))
        self.input_specs.append((name, tuple(shape), dtype))
        return Var(self, name)

    def output(self, value: Var, name: str, shape: Sequence[Dim], dtype: str = "float32") -> None:
        """Expose ``value`` as the graph output ``name``."""
        self._nodes.append(helper.make_node("Identity", [value.name], [name], name=self._fresh("out")))
        self._outputs.append(helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], list(shape)))
        self.output_specs.append((name, tuple(shape), dtype))

    def const(self, value: Any, dtype: str = "float32") -> Var:
        """A constant initializer (deduplicated by dtype, shape and bytes)."""
        arr = np.asarray(value, dtype=np.float32 if dtype == "float32" else np.int64)
        key = (dtype, arr.tobytes(), arr.shape)
        if key not in self._consts:
            name = self._fresh("c")
            self._initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return Var(self, self._consts[key])

    def const_int(self, value: Any) -> Var:
        return self.const(value, dtype="int64")

    def op(self, op_type: str, *inputs: Var, **attrs: Any) -> Var:
        """Add a single-output node and return its output."""
        out = self._fresh(op_type.lower())
        node = helper.make_node(op_type, [v.name for v in inputs], [out], name=self._fresh("n"), **attrs)
        self._nodes.append(node)
        return Var(self, out)

    def model(self, opset: int) -> onnx.ModelProto:
        """The checked model, with the lowest IR version that carries ``opset`` (older runtimes load it)."""
        graph = helper.make_graph(
            self._nodes,
            self.name,
            self._inputs,
            self._outputs,
            initializer=self._initializers,
            doc_string=self.doc,
        )
        opset_id = helper.make_opsetid("", opset)
        model = helper.make_model(
            graph,
            opset_imports=[opset_id],
            producer_name="veil",
            ir_version=helper.find_min_ir_version_for([opset_id]),
            doc_string=self.doc,
        )
        onnx.checker.check_model(model, full_check=True)
        return model
