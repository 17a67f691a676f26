import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from anchorlm.config import ModelConfig, PretrainConfig
from anchorlm.data.pack import pack
from anchorlm.train import loop
from anchorlm.train.pretrain import pretrain

TINY = ModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64
)


def _cfg(**kw):
    base = dict(model=TINY, seq_len=32, batch_size=4, token_budget=32 * 4 * 12, lr=3e-3, save_steps=5)
    return PretrainConfig(**{**base, "logging_steps": 1, **kw})


@pytest.fixture(scope="module")
def blocks(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("blocks")
    docs = [
        {"chunks": [{"tags": ["topic:science"], "text": f"Atom number {i} is small. " * 3}]}
        for i in range(60)
    ]
    tiny_tokenizer.save_pretrained(d / "tok")
    pack(docs, tiny_tokenizer, True, 32, d / "data")
    return d


def _weights(path):
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(str(path)).state_dict().items()}


class _Kill(TrainerCallback):
    """Raise after the first checkpoint is written, as a kill would stop the run."""

    def on_save(self, args, state, control, **kw):
        raise KeyboardInterrupt("killed after a checkpoint")


@pytest.mark.learned
def test_pretraining_loss_falls_and_same_seed_same_weights(blocks, tmp_path, precision):
    m = pretrain(_cfg(precision=precision), blocks / "data", blocks / "tok", tmp_path / "a")
    assert m["counts"]["final_loss"] < m["counts"]["first_loss"] - 0.5
    pretrain(_cfg(precision=precision), blocks / "data", blocks / "tok", tmp_path / "b")
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_pretraining_resumes_to_the_uninterrupted_result(blocks, tmp_path):
    pretrain(_cfg(), blocks / "data", blocks / "tok", tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(), blocks / "data", blocks / "tok", tmp_path / "resumed", callbacks=[_Kill()])
    assert (tmp_path / "resumed/checkpoints/checkpoint-5").exists()
    assert not (tmp_path / "resumed/manifest.json").exists()
    pretrain(_cfg(), blocks / "data", blocks / "tok", tmp_path / "resumed")
    wf, wr = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    for k in wf:
        torch.testing.assert_close(wr[k], wf[k], rtol=1e-5, atol=1e-6)


def test_continue_from_a_checkpoint(blocks, tmp_path):
    first = pretrain(_cfg(), blocks / "data", blocks / "tok", tmp_path / "first")["counts"]
    m = pretrain(
        _cfg(init_from=str(tmp_path / "first")), blocks / "data", blocks / "tok", tmp_path / "second"
    )
    # the continued run starts where the first ended, not at a fresh model's ln(vocab)
    assert m["counts"]["first_loss"] < first["first_loss"] - 0.5
    assert abs(m["counts"]["first_loss"] - first["final_loss"]) < 0.3


def test_plain_and_annotated_streams_differ_only_by_annotations(tiny_tokenizer, tmp_path):
    from datasets import load_from_disk

    from anchorlm.format import ANN_OPEN, encode_document, strip_annotations

    chunks = [(["topic:food"], "Soup and bread."), (["topic:food", "style:verse"], "Salt\nand\npepper.")]
    ann = tiny_tokenizer.decode(encode_document(tiny_tokenizer, chunks, True))
    plain = tiny_tokenizer.decode(encode_document(tiny_tokenizer, chunks, False))
    assert strip_annotations(ann) == plain == "Soup and bread.\n\nSalt\nand\npepper.<|endoftext|>"
    docs = [{"chunks": [{"tags": t, "text": x} for t, x in chunks]}] * 20
    pack(docs, tiny_tokenizer, False, 16, tmp_path / "plain")
    pack(docs, tiny_tokenizer, True, 16, tmp_path / "ann")
    o = tiny_tokenizer.convert_tokens_to_ids(ANN_OPEN)
    assert o not in sum(load_from_disk(str(tmp_path / "plain"))["input_ids"], [])
    assert sum(load_from_disk(str(tmp_path / "ann"))["input_ids"], []).count(o) >= 30


def test_tensorboard_and_wandb_offline_logging(blocks, tmp_path, monkeypatch):
    """report_to reaches the Trainer's loggers: TensorBoard events and an offline W&B run, both
    under <out>/logs, holding the same training losses as log_history.json."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    pretrain(_cfg(report_to="tensorboard,wandb"), blocks / "data", blocks / "tok", out)
    logged = [h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    ev = EventAccumulator(str(out / "logs" / "tensorboard"))
    ev.Reload()
    tb = [e.value for e in ev.Scalars("train/loss")]
    assert tb == pytest.approx(logged, rel=1e-5) and len(tb) == 12
    runs = list((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # the offline run, ready for `wandb sync`
    assert "WANDB_MODE" not in __import__("os").environ  # our settings do not leak past the run


def test_bad_report_to_is_named():
    with pytest.raises(ValueError, match="pretrain.report_to"):
        _cfg(report_to="mlflow")


class _ActivationDtypes(TrainerCallback):
    """Records the dtype of the first block's MLP output in each training forward pass."""

    def __init__(self):
        self.seen = set()

    def on_train_begin(self, args, state, control, model=None, **kw):
        model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: self.seen.add(o.dtype))


def test_bf16_mixed_precision_follows_the_fp32_loss_curve(blocks, tmp_path):
    """`precision: fp32` computes in float32 (no autocast: the run is the float32 computation it was
    before the setting existed); `bf16` runs the matrix products in bfloat16 and keeps float32
    weights. Tolerance: bf16 keeps 8 significant bits, so one rounding moves a number by at most
    2^-9 (relative); the loss averages thousands of such products, so each logged loss must stay
    within 2^-9 of fp32's, relative (measured: 1e-4 over 40 steps of a hidden-64 model)."""
    runs = {}
    for prec in ("fp32", "bf16"):
        hook = _ActivationDtypes()
        m = pretrain(_cfg(precision=prec), blocks / "data", blocks / "tok", tmp_path / prec, callbacks=[hook])
        assert m["counts"]["precision"] == prec and m["config"]["precision"] == prec
        assert hook.seen == {torch.float32 if prec == "fp32" else torch.bfloat16}
        hist = json.loads((tmp_path / prec / "log_history.json").read_text())
        runs[prec] = [h["loss"] for h in hist if "loss" in h]
        assert _weights(tmp_path / prec)["lm_head.weight"].dtype == torch.float32  # master weights
    assert len(runs["fp32"]) == 12
    for a, b in zip(runs["fp32"], runs["bf16"]):
        assert abs(a - b) <= 2**-9 * a
    assert runs["fp32"][-1] < runs["fp32"][0] - 0.5  # a curve that moves, not a flat line


def test_lora_trains_adapters_and_anchor_rows_and_saves_a_plain_model(blocks, tmp_path):
    """Continued pretraining with LoRA: the saved model is a plain one (adapters merged, the same
    weights as the model it started from, no adapter files); only the linear layers (through their
    adapters) and the anchor tokens' embedding rows moved; a killed LoRA run resumes to the
    uninterrupted result, bit for bit."""
    from anchorlm.config import LoRAConfig
    from anchorlm.models import load_tokenizer
    from anchorlm.train.lora import anchor_token_ids

    pretrain(_cfg(), blocks / "data", blocks / "tok", tmp_path / "base")
    cfg = _cfg(init_from=str(tmp_path / "base"), lora=LoRAConfig(rank=4), lr=1e-2)
    m = pretrain(cfg, blocks / "data", blocks / "tok", tmp_path / "lora")
    assert not (tmp_path / "lora/adapter_config.json").exists()
    wb, wl = _weights(tmp_path / "base"), _weights(tmp_path / "lora")
    assert wb.keys() == wl.keys()
    total = sum(v.numel() for v in wb.values())
    assert m["counts"]["trainable_params"] < 0.25 * total
    moved = {k for k in wb if not torch.equal(wb[k], wl[k])}
    assert moved and all(k.endswith("proj.weight") or "embed" in k or "lm_head" in k for k in moved)
    rows = (wl["model.embed_tokens.weight"] - wb["model.embed_tokens.weight"]).abs().sum(1).nonzero()
    assert sorted(rows.flatten().tolist()) == anchor_token_ids(load_tokenizer(blocks / "tok"))
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, blocks / "data", blocks / "tok", tmp_path / "resumed", callbacks=[_Kill()])
    pretrain(cfg, blocks / "data", blocks / "tok", tmp_path / "resumed")
    wr = _weights(tmp_path / "resumed")
    assert all(torch.equal(wr[k], wl[k]) for k in wl)


@pytest.mark.parametrize("autocast", [False, True])
def test_anchor_rows_train_as_in_peft_without_the_whole_output_layers_gradient(tiny_tokenizer, autocast):
    """The tied output layer's anchor rows (train/lora.py): the same logits as peft's own
    trainable-token layer, bit for bit, the same gradients (the rows' up to summation order), and
    a backward pass that no longer computes the gradient of the whole output matrix."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from anchorlm.train import lora
    from anchorlm.train.model import build_model

    tok = tiny_tokenizer
    rows = lora.anchor_token_ids(tok)
    assert rows
    torch.manual_seed(0)
    model = build_model(TINY, tok)  # the project's tiny Llama, output layer tied to the embeddings
    ids = torch.randint(0, len(tok), (4, 24))
    ids[:, ::5] = torch.tensor(rows)[torch.arange(ids[:, ::5].numel()) % len(rows)].view(4, -1)

    def run(build):
        torch.manual_seed(1)
        m = build(copy.deepcopy(model), tok, rank=4, alpha=8)
        with torch.no_grad():  # adapters and rows away from their start, so every gradient is non-trivial
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn_like(p))
        with FlopCounterMode(display=False) as flops, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = m(input_ids=ids, labels=ids)
            out.loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
        return out.logits.detach(), grads, flops.get_total_flops()

    (l_peft, g_peft, f_peft), (l_ours, g_ours, f_ours) = run(lora.peft_lora), run(lora.apply_lora)
    assert torch.equal(l_peft, l_ours)
    assert g_peft.keys() == g_ours.keys() and any("trainable_tokens_delta" in n for n in g_ours)
    for n in g_peft:
        if "trainable_tokens_delta" in n:
            assert g_ours[n].abs().sum() > 0
            tol = 1e-2 if autocast else 1e-5  # bf16 products: another CPU may round a sum otherwise
            torch.testing.assert_close(g_ours[n], g_peft[n], rtol=tol, atol=tol / 10)
        else:
            assert torch.equal(g_ours[n], g_peft[n]), n
    whole_output_gradient = 2 * ids.numel() * len(tok) * 32
    assert f_peft - f_ours >= 0.9 * whole_output_gradient, (f_peft, f_ours)
    # the layer is a class, not a bound method: it follows the module into DataParallel's
    # replicas and through pickle
    import pickle

    m = lora.apply_lora(copy.deepcopy(model), tok, rank=4, alpha=8)
    layers = [x for x in m.modules() if type(x).__name__ == "CheapRowsTrainableTokensLayer"]
    assert layers and all("forward" not in vars(x) for x in layers)
    with torch.no_grad():
        torch.testing.assert_close(
            pickle.loads(pickle.dumps(m))(input_ids=ids).logits, m(input_ids=ids).logits
        )


_REUSE = """
import json, resource, sys, torch
from anchorlm.allocator import keep_freed_memory
told = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # a training step's large tensors (64 MB: above glibc's largest mmap threshold), then freed
    xs = [torch.ones(n) for n in (2**24, 2**22, 2**24, 2**20)]
    return sum(float(x[0]) for x in xs)
per_step = []
for _ in range(8):
    f = faults(); step(); per_step.append(faults() - f)
print(json.dumps({"told": told, "faults": min(per_step[-3:])}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator (mallopt)")
def test_training_reuses_freed_memory_instead_of_faulting_it_in_again(blocks, tmp_path, monkeypatch):
    """Steps that allocate and free the same large tensors: with glibc's defaults every step maps
    them afresh (a page fault a page: over 32,000 at 4 KB), after `keep_freed_memory` the heap settles in
    a few steps and serves them again (none). The training loop calls it; ANCHORLM_MALLOC=default
    and the user's own MALLOC_* settings leave glibc as it is."""

    def run(mode, **env):
        e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
        r = subprocess.run(
            [sys.executable, "-c", _REUSE, mode], capture_output=True, text=True, env=e, check=True
        )
        return json.loads(r.stdout.strip().splitlines()[-1])

    default, kept = run("default"), run("keep")
    assert kept["told"]
    assert default["faults"] >= 32  # even with 2 MB transparent huge pages
    assert kept["faults"] * 10 < default["faults"], (default, kept)
    assert not run("keep", ANCHORLM_MALLOC="default")["told"]
    assert not run("keep", MALLOC_ARENA_MAX="2")["told"]  # the user's own glibc settings stand
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)
    pretrain(_cfg(token_budget=32 * 4 * 2), blocks / "data", blocks / "tok", tmp_path / "m")
    assert calls  # the training loop asks for it
