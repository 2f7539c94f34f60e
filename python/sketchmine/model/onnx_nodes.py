"""An ONNX node as the graph analyses read it (onnx_fields, onnx_resample): its attributes, strings
decoded, and its name in words, so that a refusal names the node a user can find in the graph."""
from __future__ import annotations

from typing import Any

from sketchmine.errors import SketchmineError


def attr(node: Any, name: str, default: Any) -> Any:
    """An attribute's value (ints, floats, a tensor, bytes), or `default` where the node has none."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def text(node: Any, name: str, default: str) -> str:
    """A string attribute (ONNX stores them as bytes)."""
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def node_name(node: Any) -> str:
    """`<op type> node '<name>'` (its first output where it has no name)."""
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def refused(node: Any, why: str) -> SketchmineError:
    """The receptive-field analysis' refusal of an op it cannot follow, naming the node."""
    return SketchmineError(f"receptive fields: {node_name(node)} {why}; not supported")
