"""Mutation strategies and the one rule of the fuzz targets: only the engine's typed errors may come out."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from engine.errors import HTError


def only_typed_errors(load, sample) -> None:
    """Run `load()`; an HTError is a refusal (fine), any other exception fails with the input that caused it."""
    try:
        load()
    except HTError:
        pass
    except Exception as exc:  # the property under test: nothing untyped escapes a loader
        raise AssertionError(f"untyped {type(exc).__name__} escaped: {exc!s:.300} — input: {sample!r:.400}") from exc


def _apply(data: bytes, edits, cut, insert) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    if insert is not None:
        position, blob = insert
        out[position % (len(out) + 1):position % (len(out) + 1)] = blob
    return bytes(out[:cut] if cut is not None else out)


def mutated_bytes(data: bytes, region: tuple[int, int] | None = None):
    """`data` with a few bytes overwritten (inside `region` if given), maybe a blob inserted, maybe truncated."""
    low, high = region or (0, len(data))
    edit = st.tuples(st.integers(low, max(low, high - 1)), st.integers(0, 255))
    return st.builds(_apply, st.just(data), st.lists(edit, min_size=1, max_size=8),
                     st.none() | st.integers(0, len(data)),
                     st.none() | st.tuples(st.integers(low, high), st.binary(min_size=1, max_size=16)))


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=8)


def _mutate_dict(data: dict, path: list, action: str, value):
    data = json.loads(json.dumps(data))
    node = data
    for index in path[:-1]:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        child = node[keys[index % len(keys)]]
        if not isinstance(child, (dict, list)) or not child:
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return data
    key = keys[path[-1] % len(keys)]
    if action == "delete":
        del node[key]
    else:
        node[key] = value
    return data


def mutated_dict(data: dict, rounds: int = 3):
    """`data` (JSON-like) with up to `rounds` entries, at any depth, deleted or replaced by arbitrary JSON values."""
    one = st.tuples(st.lists(st.integers(0, 64), min_size=1, max_size=3), st.sampled_from(["delete", "replace"]),
                    json_values)

    def apply(changes):
        out = data
        for path, action, value in changes:
            out = _mutate_dict(out, path, action, value)
        return out

    return st.lists(one, min_size=1, max_size=rounds).map(apply)
