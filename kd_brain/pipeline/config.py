"""Reading HyperPyYAML files without building them: their top-level keys and plain values.

The stage driver and the reports need a few settings of a config (``seed``,
``blank_weight``, the keys an override may set) without importing the
classes its ``!new:`` tags name. HyperPyYAML is YAML 1.2 (``1e-4`` is a
float), so the files are read by ruamel.yaml, the parser HyperPyYAML itself
uses, in round-trip mode: tagged nodes stay unresolved.
"""

import functools
import os

from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar


@functools.lru_cache(maxsize=64)
def _load(path, mtime):
    with open(path, encoding="utf-8") as f:
        return YAML(typ="rt", pure=True).load(f) or {}


def plain(node):
    """ruamel's round-trip node as plain Python (dict, list, int, float, bool, str, None).

    Example
    -------
    >>> from ruamel.yaml import YAML
    >>> plain(YAML(typ="rt", pure=True).load("a: [1, 2.5, !ref <x>]"))
    {'a': [1, 2.5, '<x>']}
    """
    if isinstance(node, TaggedScalar):
        return node.value
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    for kind in (bool, int, float, str):  # ruamel's ScalarFloat, ScalarInt ... subclass these
        if isinstance(node, kind):
            return kind(node)
    return node


def top_level(path):
    """``{key: value}`` of a config's top level; a tagged scalar (``!ref <x>``) is its text.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "h.yaml")
    >>> _ = open(path, "w").write("lr: 1e-4\\nseed: 3\\nx: !ref <seed>\\nm: !new:torch.nn.Linear\\n  in_features: 2\\n")
    >>> cfg = top_level(path)
    >>> cfg["lr"], cfg["seed"], cfg["x"], sorted(cfg)
    (0.0001, 3, '<seed>', ['lr', 'm', 'seed', 'x'])
    """
    data = _load(os.path.abspath(path), os.path.getmtime(path))
    return {str(k): plain(v) for k, v in data.items()}


def value(path, key, default=None):
    """One top-level value of a config (``default`` when the file or the key is missing)."""
    if not os.path.isfile(path):
        return default
    return top_level(path).get(key, default)


def flow(value):
    """A YAML value in flow style on one line, for a ``--key=value`` override.

    Example
    -------
    >>> flow({"a": [1, 2]}), flow(0.5)
    ('{a: [1, 2]}', '0.5')
    """
    import yaml

    if not isinstance(value, (dict, list)):
        return str(value)  # (safe_dump would end a scalar document with "...")
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
