"""`precision: auto` picks bf16 only where it is measured faster, and every output says what ran."""

import json

import pytest

from anchorlm import precision


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with or without bf16 units, on a CPU or a GPU."""

    def set_(units: bool, gpu: bool = False):
        monkeypatch.setattr(precision, "fast_bf16", lambda: units)
        monkeypatch.setattr(precision, "on_gpu", lambda: gpu)

    return set_


def test_auto_is_bf16_only_at_or_above_the_line_on_a_cpu_with_units(machine):
    machine(units=True)
    assert precision.resolve("auto", 64) == "fp32"
    assert precision.resolve("auto", precision.BF16_MIN_HIDDEN - 1) == "fp32"
    assert precision.resolve("auto", precision.BF16_MIN_HIDDEN) == "bf16"
    assert precision.resolve("auto", 576) == "bf16"  # SmolLM2-135M
    assert precision.resolve("auto", None) == "bf16"


def test_auto_is_fp32_without_units_and_bf16_on_a_gpu(machine):
    machine(units=False)
    assert precision.resolve("auto", 576) == "fp32"
    machine(units=True, gpu=True)
    assert precision.resolve("auto", 64) == "bf16"


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True)])
def test_bf16_units_are_what_torch_says_not_the_cpuinfo_flags(monkeypatch, amx, avx512_bf16):
    """Where torch can tell, its answer is final: /proc/cpuinfo is read only by a torch without the
    probes (a CPU whose flags name avx512_bf16 where torch says no must not get `auto` = bf16)."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail("read the CPU's flags"))
    precision.cpu_bf16_units.cache_clear()
    try:
        assert precision.cpu_bf16_units() is (amx or avx512_bf16)
    finally:
        precision.cpu_bf16_units.cache_clear()


def test_a_forced_precision_is_kept_whatever_the_machine(machine):
    for units in (True, False):
        machine(units=units)
        assert precision.resolve("bf16", 64) == "bf16" and precision.resolve("fp32", 576) == "fp32"


def test_manifests_record_machine_code_and_versions(tmp_path):
    from anchorlm.manifest import write_manifest

    m = write_manifest(tmp_path, "stage", {}, {"precision": "fp32"})
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert on_disk["machine"]["cores"] >= 1 and isinstance(on_disk["machine"]["cpu_bf16_units"], bool)
    assert on_disk["code"]["anchorlm"] and "torch" in on_disk["versions"] and "peft" in on_disk["versions"]
    assert len(on_disk["code"].get("git_commit", "x" * 40)) == 40  # the commit, where it runs from a checkout


def test_reports_name_bf16_flags_that_torch_does_not_trust():
    """The report line says what decided: torch's answer, and CPU flags that disagree with it."""
    from anchorlm.provenance import describe

    m = {"cpu": "AMD EPYC", "cpu_family_model": "25/17", "cores": 2, "gpu": None}
    assert describe({**m, "cpu_bf16_units": True, "cpu_bf16_flags": ["avx512_bf16"]}).endswith(
        "bf16 units: yes (avx512_bf16)"
    )
    assert describe({**m, "cpu_bf16_units": False, "cpu_bf16_flags": []}).endswith("bf16 units: no")
    line = describe({**m, "cpu_bf16_units": False, "cpu_bf16_flags": ["avx512_bf16"]})
    assert line.endswith("no (torch says no, though the CPU flags name avx512_bf16)")
    assert "torch says so" in describe({**m, "cpu_bf16_units": True, "cpu_bf16_flags": []})
