"""The one JSON reader of every loader: strict, so that no file can mean two things.

Python's json keeps the last of two values of a repeated key and drops the first without a word; a
record with two `samples_ms` would then be gated on whichever came last. Here a repeated key is an
InputError naming the source, the object's path in the document (`cases[3]`, `environment`) and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class _Repeated(dict):
    """An object that held a key twice (the key in `repeated`); found again by its identity."""

    repeated: str


def _path_to(node: Any, target: Any, path: str) -> str | None:
    if node is target:
        return path
    if isinstance(node, dict):
        children = ((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
    elif isinstance(node, list):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    for child_path, child in children:
        if isinstance(child, (dict, list)):
            found = _path_to(child, target, child_path)
            if found is not None:
                return found
    return None


def loads(text: str | bytes, source: str) -> Any:
    """Parse JSON text; json.JSONDecodeError where it is not JSON, InputError where a key repeats."""
    from cosmos3.errors import InputError

    repeated: list[_Repeated] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        seen: set[str] = set()
        marked = _Repeated(obj)
        marked.repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        repeated.append(marked)
        return marked

    data = json.loads(text, object_pairs_hook=hook)
    if repeated:
        for first in _in_document_order(data, repeated):
            where = _path_to(data, first, "")
            field = f"{source}.{where}" if where else source
            obj = f"object {where}" if where else "the top-level object"
            raise InputError(field, f"must not repeat a key: {first.repeated!r} appears more than once in {obj} "
                                    "(JSON would keep only the last value)", first.repeated)
    return data


def _in_document_order(data: Any, marked: list[_Repeated]) -> list[_Repeated]:
    """The marked objects, outermost and earliest first (the hook sees inner objects first)."""
    ids = {id(m) for m in marked}
    out: list[_Repeated] = []

    def walk(node: Any) -> None:
        if id(node) in ids:
            out.append(node)
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return out


def read(path: Path | str, source: str) -> Any:
    """Read and parse a JSON file strictly (UTF-8 whatever the locale); OSError and JSON errors propagate."""
    return loads(Path(path).read_bytes(), source)
