import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The whole pipeline on the shipped smoke recipe, through the CLI as a user runs it, killed once.

    The first run is killed with SIGKILL as soon as plain pretraining has written a checkpoint; the
    second run must finish the job from there. `killed_at.txt` records the checkpoint.
    """
    out = tmp_path_factory.mktemp("smoke")
    cmd = [
        sys.executable,
        "-m",
        "anchorlm.cli",
        "demo",
        "--config",
        str(ROOT / "anchorlm/the shipped smoke recipe"),
        "--out",
        str(out),
    ]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = out / "models" / "base" / "checkpoints"
    deadline = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        done = sorted(ckpts.glob("checkpoint-*/trainer_state.json")) if ckpts.exists() else []
        if done:
            first.send_signal(signal.SIGKILL)
            (out / "killed_at.txt").write_text(done[0].parent.name)
            break
        time.sleep(0.2)
    first.wait()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A BPE tokenizer trained on the test corpus, with the annotation special tokens."""
    from anchorlm.annotate import annotate_corpus, read_annotated
    from anchorlm.config import AnnotateConfig, CorpusConfig, TokenizerConfig
    from anchorlm.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    corpus = CorpusConfig(path=str(ROOT / "anchorlm/corpus/corpus.jsonl.gz"), max_chars_per_category=3000)
    annotate_corpus(corpus, AnnotateConfig(keywords_per_chunk=1), d / "ann")
    return train_tokenizer(read_annotated(d / "ann"), TokenizerConfig(vocab_size=600), d / "tok")
