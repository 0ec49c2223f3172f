"""Static check that TensorRT's ONNX parser supports every op of an exported graph (no TensorRT needed).

The table `engine/data/tensorrt_11.1_onnx_ops.tsv` lists each ONNX op with Y/N and the parser's notes; its first
line names its source. Ops of local functions are checked too, since the parser inlines them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import BackendError

TABLE = Path(__file__).resolve().parent.parent / "data" / "tensorrt_11.1_onnx_ops.tsv"


@dataclass(frozen=True)
class OpTable:
    source: str
    supported: frozenset
    unsupported: frozenset
    notes: dict


@lru_cache(maxsize=1)
def op_table(path: Path = TABLE) -> OpTable:
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("# source:"):
        raise BackendError(f"{path} must start with a '# source:' line naming where its facts come from")
    supported, unsupported, notes = set(), set(), {}
    for row in csv.DictReader(lines[1:], delimiter="\t"):
        op = (row.get("op") or "").strip()
        if not op:
            continue
        (supported if row["supported"].strip() == "Y" else unsupported).add(op)
        notes[op] = (row.get("notes") or "").strip()
    return OpTable(lines[0][len("# source:"):].strip(), frozenset(supported), frozenset(unsupported), notes)


def unsupported_ops(ops) -> list:
    """The ops TensorRT's parser cannot take: listed as unsupported, unknown to the table, or of another domain."""
    table = op_table()
    return sorted(op for op in ops if op not in table.supported)


def check_tensorrt_ops(proto, what: str = "graph") -> None:
    """Raise `BackendError` naming every op of `proto` that TensorRT 11.1's ONNX parser does not support."""
    from .onnx_export import graph_ops

    bad = unsupported_ops(graph_ops(proto))
    if bad:
        raise BackendError(f"{what} has ops TensorRT 11.1's ONNX parser does not support: {', '.join(bad)} "
                           f"(table {TABLE.name}); the TensorRT build would fail")
