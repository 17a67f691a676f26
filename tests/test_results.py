"""Typed study results (anchorlm.study.results): the kept SmolLM2 results file reads back field for field,
and a broken one is refused with the field named."""

import copy
import json

import pytest
from conftest import ROOT

from anchorlm.study.results import StudyResults

KEPT = ROOT / "docs" / "results-smollm2-v1.json"  # the kept results of protocol v1


def test_kept_results_round_trip():
    data = json.loads(KEPT.read_text())
    typed = StudyResults.from_json(data, KEPT.name)
    assert json.dumps(typed.to_json(), sort_keys=True) == json.dumps(data, sort_keys=True)
    assert typed.largest is typed.sizes["smollm2"]
    assert typed.summary["attribute_entropy"].gap_closed == data["summary"]["attribute_entropy"]["gap_closed"]


@pytest.mark.parametrize(
    "path, value, message",
    [
        (
            ("ablations", "variants", "sft", "quality"),
            None,
            r"ablations\.variants\.sft\.quality: field required",
        ),
        (("sizes", "smollm2", "params"), "many", r"sizes\.smollm2\.params: input should be a valid integer"),
        (("bar", "checks"), ["a"], r"bar\.checks: input should be a valid dictionary"),
    ],
)
def test_broken_results_name_the_field(path, value, message):
    data = copy.deepcopy(json.loads(KEPT.read_text()))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        StudyResults.from_json(data, "results.json")
