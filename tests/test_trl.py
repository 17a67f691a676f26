"""anchorlm's SFT data trains in TRL's SFTTrainer with the same masking: exactly the response tokens
(and its EOS) carry loss, the prompt and the annotation none."""

import json

import pytest
import torch

from anchorlm.config import ModelConfig, PosttrainConfig
from anchorlm.data.examples import IGNORE, build_example
from anchorlm.data.trl import export_trl
from anchorlm.format import encode_annotation, encode_text, eos_id
from anchorlm.train.model import build_model

EXAMPLES = [
    {"instruction": "Tell me about the sea.", "response": "Waves <|ann|> roll in.", "tags": ["topic:sea", "style:plain"]},
    {"instruction": "Say <|user|> something.", "response": "Hope this helps!", "tags": ["topic:misc"]},
    {"instruction": "A fact, please.", "response": "Water boils at 100 degrees.", "tags": ["topic:science"]},
    {"instruction": "Write a line.", "response": "The night was long.", "tags": ["topic:fiction", "length:short"]},
]  # fmt: skip


def _train_and_capture(tok, path, tmp_path):
    """One SFTTrainer step on the exported JSONL; returns the batch the loss was computed on."""
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    seen = []

    class Capture(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append({k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
            return super().compute_loss(model, inputs, *args, **kwargs)

    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=len(EXAMPLES),
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
        dataset_num_proc=None,
    )  # fmt: skip
    ds = load_dataset("json", data_files=str(path), split="train")
    trainer = Capture(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    assert trainer.state.log_history[0]["loss"] > 0
    return seen[0]


def _supervised(batch) -> list[list[int]]:
    return [ids[lab != IGNORE].tolist() for ids, lab in zip(batch["input_ids"], batch["labels"])]


@pytest.mark.parametrize("method", ["anchored", "sft"])
def test_prompt_completion_export_puts_loss_on_the_response_only(tiny_tokenizer, tmp_path, method):
    tok = tiny_tokenizer
    path = tmp_path / "trl.jsonl"
    cfg = PosttrainConfig(method=method)
    assert export_trl(tok, EXAMPLES, cfg, "prompt-completion", path) == len(EXAMPLES)
    rows = [json.loads(line) for line in path.open()]
    assert all("< |ann|>" in r["completion"] or "<|ann|>" not in r["completion"] for r in rows)
    assert ("<|ann|>topic:sea style:plain<|/ann|>" in rows[0]["prompt"]) == (method == "anchored")
    batch = _train_and_capture(tok, path, tmp_path)
    eos = eos_id(tok)
    want = sorted(encode_text(tok, ex["response"]) + [eos] for ex in EXAMPLES)
    assert sorted(_supervised(batch)) == want  # exactly the response tokens and EOS, nothing else
    for ids, lab in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        sup = [i for i, v in enumerate(lab) if v != IGNORE]
        assert sup == list(range(sup[0], sup[-1] + 1))  # one span, the end of the sequence
        ex = next(e for e in EXAMPLES if encode_text(tok, e["response"]) + [eos] == [ids[i] for i in sup])
        ann = encode_annotation(tok, ex["tags"])[0]
        if method == "anchored":  # the annotation is in the input, right before the response
            assert ids[sup[0] - len(ann) : sup[0]] == ann
        else:
            assert tok.convert_tokens_to_ids("<|ann|>") not in ids


def test_labels_export_keeps_anchorlm_masking_value_only_included(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    path = tmp_path / "labels.jsonl"
    cfg = PosttrainConfig(method="anchored", value_mask_fraction=1.0)  # keys in the loss, values masked
    export_trl(tok, EXAMPLES, cfg, "labels", path)
    batch = _train_and_capture(tok, path, tmp_path)
    want = []
    for ex in EXAMPLES:
        row = build_example(tok, ex, "anchored", value_only=True)
        want.append([i for i, v in zip(row["input_ids"], row["labels"]) if v != IGNORE])
    assert sorted(_supervised(batch)) == sorted(want)
    # the keys carry loss, the values do not
    key = tok("topic:", add_special_tokens=False)["input_ids"]
    assert all(any(s[k : k + len(key)] == key for k in range(len(s))) for s in _supervised(batch))
