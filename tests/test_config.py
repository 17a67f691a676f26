from pathlib import Path

import pytest
from conftest import ROOT

from anchorlm.config import load_config

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads_and_starts_with_its_command(path: Path):
    if path.name.startswith("reproduce"):  # a study recipe: the pipeline recipe sits under `base`
        from anchorlm.config import load_reproduce_config

        study = load_reproduce_config(path)
        assert len(study.sizes) >= 3 and len(study.seeds) >= 3
        cfg = study.base
    else:
        cfg = load_config(path)
    assert cfg.pretrain.token_budget > 0
    first = path.read_text().splitlines()[0]
    assert first.startswith("# anchorlm ") and path.name in first


def test_overrides_and_unknown_keys():
    cfg = load_config(ROOT / "anchorlm/configs/smoke.yaml", ["pretrain.lr=0.5", "sample.seeds=[1, 2]"])
    assert cfg.pretrain.lr == 0.5 and cfg.sample.seeds == [1, 2]
    with pytest.raises(ValueError, match="pretrain.learning_rate"):
        load_config(None, ["pretrain.learning_rate=1"])
    with pytest.raises(ValueError, match="posttrain.method must be 'sft' or 'anchored'"):
        load_config(None, ["posttrain.method=dpo"])
    with pytest.raises(ValueError, match="divisible by num_heads"):
        load_config(None, ["pretrain.model.hidden_size=30"])
