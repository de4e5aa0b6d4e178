"""core/tree.py: the traversal that checkpoints and optimizer states were written with. Leaves come
in dict insertion order (partition states name leaves by that position), None is a leaf, and key
paths read `[1][0].mu['layers'][0]` (checkpoints store optimizer leaves under them)."""

from typing import NamedTuple

import optree
import torch

from core.tree import tree_flatten, tree_from_leaves_by_path, tree_leaves, tree_leaves_by_path, tree_map, tree_unflatten


class Moments(NamedTuple):
    count: int
    mu: dict


def state() -> tuple:
    """Shaped like chain(clip, adam)'s state, with keys out of sorted order, an int key and None."""
    mu = {"layers": [{"w": torch.ones(2), "b": torch.zeros(1)}], "head": None, 7: torch.full((1,), 7.0)}
    return ((), (Moments(3, mu),))


PATHS = ["[1][0].count", "[1][0].mu['layers'][0]['w']", "[1][0].mu['layers'][0]['b']", "[1][0].mu['head']", "[1][0].mu[7]"]


def test_leaves_come_in_insertion_order_with_none_as_a_leaf():
    leaves = tree_leaves(state())
    assert [leaf if leaf is None or isinstance(leaf, int) else leaf.tolist() for leaf in leaves] == [3, [1.0, 1.0], [0.0], None, [7.0]]
    assert tree_map(lambda leaf: leaf is None, state())[1][0].mu["head"] is True


def test_key_paths_keep_the_checkpoint_format():
    assert list(tree_leaves_by_path(state())) == PATHS


def test_flatten_and_leaves_by_path_round_trip_types_and_order():
    tree = state()
    leaves, structure = tree_flatten(tree)
    rebuilt = tree_unflatten(leaves, structure)
    assert type(rebuilt[1][0]) is Moments and list(rebuilt[1][0].mu) == ["layers", "head", 7]
    doubled = {path: leaf if not isinstance(leaf, torch.Tensor) else 2 * leaf for path, leaf in tree_leaves_by_path(tree).items()}
    restored = tree_from_leaves_by_path(tree, doubled)
    assert type(restored[1][0]) is Moments and list(tree_leaves_by_path(restored)) == PATHS
    assert torch.equal(restored[1][0].mu["layers"][0]["w"], torch.full((2,), 2.0)) and restored[1][0].mu["head"] is None


def test_other_users_of_optree_keep_its_defaults():
    tree_leaves({"b": 1, "a": 2})  # core.tree is imported and used
    assert optree.tree_leaves({"b": 1, "a": 2, "c": None}) == [2, 1]  # sorted keys, None not a leaf
