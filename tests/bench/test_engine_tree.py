"""bench/ab.py compares two source trees: each engine must run its own tree's code."""

from __future__ import annotations

from pathlib import Path

from bench import common


def test_an_engine_started_for_another_tree_imports_that_trees_ms07(tmp_path: Path) -> None:
    tree = tmp_path / "other-checkout"
    tree.mkdir()
    (tree / "ms07").symlink_to(common.ROOT / "ms07", target_is_directory=True)
    # From this checkout's directory, PYTHONPATH alone would lose to the working directory.
    assert common.ms07_origin(tree) == tree.resolve() / "ms07"
    assert common.ms07_origin() == common.ROOT / "ms07"
