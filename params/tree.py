"""Naming a parameter pytree: to and from the flat dotted names of a torch state dict.

`{"layers": [{"attn": {"q_proj": {"weight": w}}}]}` <-> `{"layers.0.attn.q_proj.weight": w}`."""

from torch import Tensor

from core.tree import Tree


def flatten(tree: Tree, prefix: str = "") -> dict[str, Tensor]:
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), value) for i, value in enumerate(tree))
    else:
        return {prefix: tree}
    flat: dict[str, Tensor] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def unflatten(flat: dict[str, Tensor]) -> Tree:
    """The inverse of flatten: nested dicts, where a level keyed 0..n-1 becomes a list."""
    tree: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        node = tree
        for key in path:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"parameter name {name!r} clashes with another parameter at {key!r}")
        if leaf in node:
            raise ValueError(f"parameter name {name!r} clashes with another parameter")
        node[leaf] = value
    return _lists_from_numbered_dicts(tree)


def _lists_from_numbered_dicts(node: Tree) -> Tree:
    if not isinstance(node, dict):
        return node
    node = {key: _lists_from_numbered_dicts(value) for key, value in node.items()}
    if node and all(key.isdigit() for key in node):
        indices = sorted(int(key) for key in node)
        if indices == list(range(len(indices))):
            return [node[str(i)] for i in indices]
    return node
