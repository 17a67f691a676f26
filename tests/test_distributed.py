"""`accelerate launch` with 2 CPU processes (DDP, gloo) gives the single-process result: pretraining
and post-training, through the CLI and the shipped accelerate config, as a user launches them.

No tolerance: the reference reduces in the same order. Each of the 2 processes computes the
gradient of its half of the global batch (4 of 8 sequences) and DDP averages the two; the single
process runs the same global batch as the same 2 micro-batches of 4 (`grad_accum: 2`) and adds
their gradients. The loss is scaled by the global token count either way, and DDP's factor 2 and
its average's 1/2 are powers of two (exact in floating point), so with one thread per process (the
same kernels) every weight must come out bit for bit the same. A single process without
micro-batches sums the 8 sequences in another order, and its weights differ (Adam amplifies the
last-bit differences), which shows that the check can fail."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from anchorlm.data.pack import pack

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
pretrain:
  model: {hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, max_position_embeddings: 64}
  seq_len: 32
  batch_size: 8
  token_budget: 2560
  lr: 0.003
  logging_steps: 1
  save_steps: 100
posttrain: {epochs: 1, lr: 0.003, batch_size: 8, max_len: 64, value_mask_fraction: 0.5}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], processes: int, cwd: Path) -> dict:
    if processes == 1:
        cmd = [sys.executable, "-m", "anchorlm.cli", *args]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ROOT / "anchorlm/configs/accelerate/cpu-2proc.yaml"),
            "--main_process_port", str(_port()), "-m", "anchorlm.cli", *args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same kernels in every process
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "manifest.json").read_text())["counts"]


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    docs = [
        {
            "chunks": [
                {"tags": ["topic:science"], "text": f"Atom {i} has {i % 7} electrons and a small core. " * 3}
            ]
        }
        for i in range(80)
    ]
    tiny_tokenizer.save_pretrained(d / "tok")
    pack(docs, tiny_tokenizer, True, 32, d / "data")
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = [
        {
            "instruction": f"Tell me item {i}.",
            "response": " ".join(words[: i % 7 + 2]) + ".",
            "tags": [f"topic:{words[i % 5]}"],
        }
        for i in range(24)
    ]  # responses of different lengths: the loss must average over tokens of both processes
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "recipe.yaml").write_text(RECIPE)
    return d


def test_two_process_pretraining_and_posttraining_match_one_process(setup):
    d = setup
    runs = {}
    for name, n, accum in (("two", 2, 1), ("one", 1, 2), ("whole", 1, 1)):
        common = ["--config", str(d / "recipe.yaml"), "--set", f"pretrain.grad_accum={accum}",
                  "--set", f"posttrain.grad_accum={accum}"]  # fmt: skip
        pre = _run(["pretrain", *common, "--data", str(d / "data"), "--tokenizer", str(d / "tok"),
                    "--out", str(d / f"pre-{name}")], n, d)  # fmt: skip
        assert pre["processes"] == n and pre["steps"] == 10
        assert pre["distributed"] == (
            "NO" if n == 1 else "MULTI_CPU"
        )  # DDP over gloo, as accelerate names it
        post = _run(["posttrain", *common, "--model", str(d / f"pre-{name}"), "--data", str(d / "sft.jsonl"),
                     "--method", "anchored", "--out", str(d / f"post-{name}")], n, d)  # fmt: skip
        assert post["processes"] == n and post["steps"] == 3 and post["distributed"] == pre["distributed"]
        runs[name] = (pre, post)
    for one, two in zip(runs["one"], runs["two"]):
        assert (one["first_loss"], one["final_loss"]) == (two["first_loss"], two["final_loss"])
    assert _max_diff(d / "pre-one", d / "pre-two") == 0
    assert _max_diff(d / "post-one", d / "post-two") == 0
    assert _max_diff(d / "post-whole", d / "post-two") > 0  # another summation order: not the same bits
    assert _max_diff(d / "pre-one", d / "post-one") > 1e-3  # post-training moved the weights


@pytest.mark.parametrize(
    "name,kind,machines",
    [
        ("cpu-2proc", "MULTI_GPU", 1),
        ("multi-gpu-ddp", "MULTI_GPU", 1),
        ("fsdp", "FSDP", 1),
        ("deepspeed-zero3", "DEEPSPEED", 1),
        ("multi-node-fsdp", "FSDP", 2),
    ],
)
def test_shipped_accelerate_configs_load(name, kind, machines):
    """The GPU and multi-node configs cannot run here; accelerate's own loader must accept them."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / f"anchorlm/configs/accelerate/{name}.yaml"))
    assert cfg.distributed_type == kind and cfg.num_machines == machines
    assert cfg.num_processes % machines == 0
    if kind == "FSDP":
        assert (
            cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        )  # save_pretrained gets full weights
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero3_save_16bit_model"]
