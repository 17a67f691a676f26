"""The one guard (anchorlm.study.ledger): a cell of another identity is refused naming what differs,
a cell of the same identity is reused only when the same code made it, unless asked."""

import pytest

from anchorlm.study import ledger as L


def _make(path):
    def make():
        path.write_text("made")

    return make


def test_a_cell_is_made_once_and_reused(tmp_path):
    led = L.Ledger(tmp_path)
    cell = tmp_path / "models" / "a"
    cell.parent.mkdir()
    assert led.cell(cell, {"lr": 1}, cell.exists, _make(cell)) is True
    assert L.Ledger(tmp_path).cell(cell, {"lr": 1}, cell.exists, _make(cell)) is False  # read back from disk
    assert L.Ledger(tmp_path).entries["models/a"]["code"] == L.Ledger(tmp_path).code


def test_another_identity_is_refused_naming_what_differs(tmp_path):
    cell = tmp_path / "a"
    L.Ledger(tmp_path).cell(cell, {"pretrain": {"lr": 1}}, cell.exists, _make(cell))
    with pytest.raises(ValueError, match=r"another config \(pretrain.lr: 1 -> 2\)"):
        L.Ledger(tmp_path).cell(cell, {"pretrain": {"lr": 2}}, cell.exists, _make(cell))


def test_other_code_is_refused_unless_asked_and_then_named(tmp_path, monkeypatch):
    cell = tmp_path / "a"
    L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell))
    monkeypatch.setattr(L, "code_identity", lambda: {"anchorlm": "9.9", "git_commit": "f" * 40})
    with pytest.raises(ValueError, match="made by other code"):
        L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell))
    led = L.Ledger(tmp_path, reuse_other_code=True)
    assert led.cell(cell, {"x": 1}, cell.exists, _make(cell)) is False
    assert list(led.other_code) == ["a"]


def test_a_cell_the_ledger_does_not_record_is_refused(tmp_path):
    cell = tmp_path / "a"
    cell.write_text("someone else's")
    with pytest.raises(ValueError, match="does not record it"):
        L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell))
    assert cell.read_text() == "someone else's"


def test_an_unfinished_cell_of_the_same_identity_is_made_again(tmp_path):
    cell = tmp_path / "a"
    led = L.Ledger(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        led.cell(cell, {"x": 1}, cell.exists, lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell)) is True


def test_a_commit_that_leaves_the_package_alone_keeps_the_cells(tmp_path, monkeypatch):
    """Cells are made by the package's files (their git tree), not by the commit: a study resumed
    after a commit of docs reuses them; a change to the package's files does not."""
    made = {"anchorlm": "0.1.0", "git_commit": "a" * 40, "package_tree": "1" * 40, "git_dirty": False}
    monkeypatch.setattr(L, "code_version", lambda: made)
    cell = tmp_path / "a"
    L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell))
    assert L.Ledger(tmp_path).entries["a"]["commit"] == "a" * 40
    monkeypatch.setattr(L, "code_version", lambda: {**made, "git_commit": "b" * 40})
    assert L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell)) is False
    monkeypatch.setattr(L, "code_version", lambda: {**made, "package_tree": "2" * 40})
    with pytest.raises(ValueError, match="made by other code"):
        L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell))


def test_a_cell_made_in_another_precision_counts_as_other_code(tmp_path):
    """`precision: auto` is bf16 on a CPU with bf16 units and fp32 elsewhere: a study begun on one
    and resumed on the other would mix precisions without a word."""
    cell = tmp_path / "a"
    L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell), precision="bf16")
    assert L.Ledger(tmp_path).entries["a"]["precision"] == "bf16"
    assert L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell), precision="bf16") is False
    with pytest.raises(
        ValueError, match=r"made in bf16 and this machine runs it in fp32.*reuse cells of other code"
    ):
        L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell), precision="fp32")
    led = L.Ledger(tmp_path, reuse_other_code=True)
    assert led.cell(cell, {"x": 1}, cell.exists, _make(cell), precision="fp32") is False
    assert led.other_code == {"a": {"precision": "bf16", "here": "fp32"}}
    assert cell.read_text() == "made"


def test_a_cell_recorded_before_precisions_were_is_reused(tmp_path):
    cell = tmp_path / "a"
    L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell))  # no precision recorded
    assert L.Ledger(tmp_path).cell(cell, {"x": 1}, cell.exists, _make(cell), precision="fp32") is False


def test_a_precision_given_as_a_function_is_asked_only_where_needed(tmp_path):
    """Saying a published model's precision reads (and may first convert) the model: a study whose
    cells are all restored should not pay for it."""
    asked = []

    def fp32():
        asked.append(1)
        return "fp32"

    old, new = tmp_path / "old", tmp_path / "new"
    L.Ledger(tmp_path).cell(old, {"x": 1}, old.exists, _make(old))  # no precision recorded
    assert L.Ledger(tmp_path).cell(old, {"x": 1}, old.exists, _make(old), precision=fp32) is False
    assert asked == []
    L.Ledger(tmp_path).cell(new, {"x": 2}, new.exists, _make(new), precision=fp32)
    assert asked == [1] and L.Ledger(tmp_path).entries["new"]["precision"] == "fp32"
    with pytest.raises(ValueError, match="made in fp32 and this machine runs it in bf16"):
        L.Ledger(tmp_path).cell(new, {"x": 2}, new.exists, _make(new), precision=lambda: "bf16")


@pytest.mark.parametrize(
    "error, ended", [(KeyboardInterrupt, "interrupted"), (MemoryError, "failed: MemoryError")]
)
def test_a_study_that_stops_early_still_records_the_cells_it_ran(tmp_path, monkeypatch, error, ended):
    """compute.json lists every invocation that ran cells (the report's Compute section): one
    interrupted or failed after making cells is listed too, saying how it ended; the error goes on."""
    import json

    from anchorlm.study import run
    from anchorlm.study.config import load_study_config

    class Cells:  # what _run_study asks of the cell cache: prepare() makes two cells
        out, cells_run, timings, lm = tmp_path, 0, {}, None

        def prepare(self):
            self.cells_run, self.timings = 2, {"posttrain": 90.0}

    class Part:
        key = "sizes"

        def jobs(self, cells, cfg):
            raise error

    monkeypatch.setattr(run, "parts", lambda cfg: [Part()])
    with pytest.raises(error):
        run._run_study(load_study_config("reproduce"), Cells(), "")
    (inv,) = json.loads((tmp_path / run.COMPUTE).read_text())
    assert (inv["ended"], inv["cells_run"], inv["minutes_by_stage"]) == (ended, 2, {"posttrain": 1.5})


def test_cells_behind_a_reused_cell_are_named_when_other_code_made_them(tmp_path, monkeypatch):
    """A score reused without opening what it was made from: the samples behind it, made by other
    code, are named too (`behind`), if the results read them; cells made by this code, unfinished
    ones, and ones the results do not read are not."""
    led = L.Ledger(tmp_path)
    for rel in ("samples", "other", "score"):
        led.cell(tmp_path / rel, {"x": rel}, (tmp_path / rel).exists, _make(tmp_path / rel))
    monkeypatch.setattr(L, "code_identity", lambda: {"anchorlm": "9.9", "package_tree": "f" * 16})
    led = L.Ledger(tmp_path, reuse_other_code=True)
    led.entries["unfinished"] = {"identity": {}, "started": "now"}
    led.cell(tmp_path / "new", {"x": 1}, (tmp_path / "new").exists, _make(tmp_path / "new"))
    assert (
        led.cell(tmp_path / "score", {"x": "score"}, (tmp_path / "score").exists, _make(tmp_path / "x"))
        is False
    )
    assert list(led.other_code) == ["score"]
    led.behind(lambda rel: rel != "other")
    assert sorted(led.other_code) == ["samples", "score"]
    assert led.other_code["samples"]["code"] == L.Ledger(tmp_path).entries["samples"]["code"]
