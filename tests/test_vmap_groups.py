"""`--vmap` splits a sweep into the groups that can train together: variants that stack train as
one group each, and only a variant that stacks with no other is left to train one by one."""

from pathlib import Path

from pipelines.experiments import vmap_sweep
from pipelines.experiments.sweep import Variant, resolve_variant


def configs(tmp_path: Path, variants: dict[str, dict]) -> dict:
    return {name: resolve_variant("tinystories/cpu-small", {}, Variant(name, overrides), tmp_path / name)
            for name, overrides in variants.items()}


def test_a_grid_of_two_shapes_trains_as_two_groups_and_a_lone_variant_one_by_one(tmp_path, monkeypatch, capsys):
    grid = configs(tmp_path, {
        "small-a": {"model.d_model": 64, "schedule.lr": 1e-3},
        "large-a": {"model.d_model": 128, "schedule.lr": 1e-3},
        "small-b": {"model.d_model": 64, "schedule.lr": 3e-3, "seed": 1},
        "large-b": {"model.d_model": 128, "schedule.lr": 3e-3},
        "accumulating": {"grad_accum": 2},
    })
    assert vmap_sweep.stackable_groups(grid) == [["small-a", "small-b"], ["large-a", "large-b"], ["accumulating"]]

    groups = []
    monkeypatch.setattr(vmap_sweep, "train_variants", lambda group, resume: groups.append(([c.model.d_model for c in group], resume))
                        or [(Path(c.run_dir), "completed") for c in group])
    trained = vmap_sweep.train_stacked(grid)
    assert groups == [([64, 64], False), ([128, 128], False)]
    assert sorted(trained) == ["large-a", "large-b", "small-a", "small-b"]  # "accumulating" is the sweep's to run alone
    notice = [line for line in capsys.readouterr().err.splitlines() if line.startswith("--vmap:")]
    assert notice == ["--vmap: accumulating stacks with no other variant (a different setting of the shared loop, or a "
                      "checkpoint at another step); training it one by one"]
