from pathlib import Path

import pytest
from conftest import ROOT

from anchorlm.config import load_config

RECIPES = sorted((ROOT / "anchorlm/configs").glob("*.yaml"))


def test_the_recipe_list_is_every_shipped_recipe():
    """The parametrised test below runs over what the package ships (an empty or wrong glob would
    make it pass by collecting nothing)."""
    from anchorlm.config import PACKAGE

    assert {p.name for p in RECIPES} == {p.name for p in (PACKAGE / "configs").glob("*.yaml")}
    assert {"demo.yaml", "smoke.yaml", "reproduce.yaml", "reproduce-smollm2.yaml"} <= {
        p.name for p in RECIPES
    }


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads_and_starts_with_its_command(path: Path):
    if path.name.startswith("reproduce"):  # a study recipe: the pipeline recipe sits under `base`
        from anchorlm.study.config import load_study_config

        study = load_study_config(path)
        # sizes built from configs, or one published model continued (init_from)
        assert len(study.sizes) >= 3 or (not study.sizes and study.base.pretrain.init_from)
        cfg = study.base
    else:
        cfg = load_config(path)
    assert cfg.pretrain.token_budget > 0
    first = path.read_text().splitlines()[0]
    # the command that runs it, naming the recipe as users do (`--config name`; `demo` is the default)
    assert first.startswith("# anchorlm ") and (
        f"--config {path.stem} " in first + " " or path.stem == "demo"
    )


def test_overrides_and_unknown_keys():
    cfg = load_config(ROOT / "anchorlm/configs/smoke.yaml", ["pretrain.lr=0.5", "sample.seeds=[1, 2]"])
    assert cfg.pretrain.lr == 0.5 and cfg.sample.seeds == [1, 2]
    with pytest.raises(ValueError, match="pretrain.learning_rate"):
        load_config(None, ["pretrain.learning_rate=1"])
    with pytest.raises(ValueError, match="posttrain.method must be 'sft' or 'anchored'"):
        load_config(None, ["posttrain.method=dpo"])
    with pytest.raises(ValueError, match="divisible by num_heads"):
        load_config(None, ["pretrain.model.hidden_size=30"])


def test_a_recipe_extends_another_and_lays_its_keys_over_it(tmp_path):
    """`extends`: the named recipe's mapping with this one's keys laid over it (mappings merge,
    lists and values replace); a file beside the recipe is found by its name; a loop is refused."""
    from anchorlm.config.base import read_recipe
    from anchorlm.study.config import load_study_config

    cross = load_study_config("reproduce-smollm2-cross")
    study = load_study_config("reproduce-smollm2")
    assert cross.base == study.base and cross.seeds == study.seeds  # the same cells
    assert cross.out_dir != study.out_dir and "aat_unmasked_no_annotation" in cross.ablations
    (tmp_path / "a.yaml").write_text("base: {sample: {top_p: 0.9, seeds: [1, 2]}}\nseeds: [0]\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nbase: {sample: {seeds: [3]}}\n")
    assert read_recipe(tmp_path / "b.yaml") == {"base": {"sample": {"top_p": 0.9, "seeds": [3]}}, "seeds": [0]}
    (tmp_path / "d.yaml").write_text("extends: a\nseeds: [5]\n")  # the name without .yaml, beside it
    assert read_recipe(tmp_path / "d.yaml")["seeds"] == [5] and "base" in read_recipe(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: no-such-recipe\n")
    with pytest.raises(FileNotFoundError, match="e.yaml: extends 'no-such-recipe'"):
        read_recipe(tmp_path / "e.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ValueError, match="comes back to itself"):
        read_recipe(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("extends: [a, b]\n")
    with pytest.raises(ValueError, match="extends must name one recipe"):
        read_recipe(tmp_path / "c.yaml")
