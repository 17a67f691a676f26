"""The registry of study variants and a recipe's own entries (anchorlm.variants)."""

import pytest

from anchorlm.variants import REGISTRY, custom


def test_every_variant_names_what_it_trains_and_how_it_samples():
    for v in REGISTRY.values():
        assert v.data in ("plain", "annotated") and v.label
        assert v.model in ("", *REGISTRY)
        if v.model:  # a variant that samples another's model trains nothing of its own
            assert REGISTRY[v.model].data == v.data
    assert REGISTRY["aat_no_annotation"].model == "aat" and not REGISTRY["aat_no_annotation"].anchored
    assert (
        REGISTRY["sft_replay"].posttrain["anchored_replay"]
        == REGISTRY["aat_replay"].posttrain["anchored_replay"]
    )


def test_recipe_entries_start_like_another_and_add_to_it():
    v = custom(
        [
            {"name": "aat_vmf", "posttrain": {"value_mask_fraction": 0.003}},
            {"name": "aat_g3", "like": "aat", "sample": {"guidance_scale": 3.0}},
            {"name": "sft_gem", "like": "gem", "posttrain": {"gem_beta": 0.5}},
        ]
    )
    assert (
        v["aat_vmf"].posttrain == {"method": "anchored", "value_mask_fraction": 0.003}
        and v["aat_vmf"].model == ""
    )
    assert v["aat_g3"].model_name == "aat"  # it only samples differently: the same model
    assert v["sft_gem"].posttrain == {"method": "sft", "loss": "gem", "gem_beta": 0.5}
    assert custom([{"name": "aat_replay"}])["aat_replay"].label == REGISTRY["aat_replay"].label


@pytest.mark.parametrize(
    "entry,named",
    [
        ({"posttrain": {}}, "with a 'name'"),
        ({"name": "x", "like": "nope"}, "like 'nope' is not a variant"),
        ({"name": "x", "colour": 1}, "unknown keys ['colour']"),
        ({"name": "x", "data": "both"}, "data must be 'plain' or 'annotated'"),
    ],
)
def test_bad_recipe_entries_are_named(entry, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("(", r"\(")):
        custom([entry])


def test_the_mechanism_cross_samples_each_training_without_its_plan():
    """Each training of the mechanism has a no-plan twin that samples the same model plain and one
    given the SFT data's plans, and the mechanism table names them (training x inference)."""
    from anchorlm.variants import MECHANISM

    for t in ("aat", "aat_mask_all", "aat_unmasked", "aat_constant", "aat_on_plain"):
        twin = REGISTRY[f"{t}_no_annotation"]
        assert twin.model == t and not twin.anchored and REGISTRY[t].anchored
        assert twin.data == REGISTRY[t].data and twin.posttrain == REGISTRY[t].posttrain
        assert MECHANISM[twin.name][1] == "no plan" and MECHANISM[t][1] == "own plan"
        given = REGISTRY[f"{t}_sft_plans"]
        assert given.model == t and given.anchored and given.sample == {"anchors": "given"}
        assert given.posttrain == REGISTRY[t].posttrain and MECHANISM[given.name][1].startswith("plans drawn")
