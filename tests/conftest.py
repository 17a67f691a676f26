import os
import shutil
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
WORKERS = 2  # pytest-xdist workers when the command line names none (-n N to choose, -n 0 for none)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # each worker, and the CLI processes it starts, gets its share of the cores (1 each on 2 cores),
    # so the workers never fight over them: oversubscribed threads spin and slow each other far
    # more than 2x
    share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(share)
    import torch

    torch.set_num_threads(share)

# Modules whose tests share a costly session fixture: one xdist worker runs them all, so the fixture
# is built once (pytest_collection_modifyitems checks that the list is complete).
SHARED = {"smoke_run": {"test_smoke.py", "test_sample.py", "test_serve.py"}}
# The slowest scopes first, so that no worker is left alone with a long one at the end.
SLOWEST = ["smoke_run", "test_reproduce.py", "test_evidence.py", "test_hf_models.py",
           "test_distributed.py", "test_prepack.py", "test_remote.py", "test_training.py"]  # fmt: skip


def pytest_addoption(parser):
    parser.addoption(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="precision forced on the tests that train and assert learned behaviour (marked `learned`); "
        "bf16 on a CPU without bf16 units is emulated (slow, the same roundings)",
    )


def scope_of(nodeid: str) -> str:
    """The unit an xdist worker takes whole: the module, or the group sharing a session fixture."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return next((f for f, mods in SHARED.items() if module in mods), module)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads -n
def pytest_cmdline_main(config):
    """Run the suite in `WORKERS` pytest-xdist workers, one scope (`scope_of`) each at a time,
    unless the command line says otherwise (-n, --dist), asks for --pdb, only collects, or pytest-xdist
    is absent (then in this one process)."""
    opt = config.option
    if hasattr(config, "workerinput") or not hasattr(opt, "numprocesses"):
        return
    if opt.numprocesses is None and not opt.usepdb and not opt.collectonly:
        opt.numprocesses = WORKERS
    if opt.numprocesses and opt.dist == "no":
        opt.dist = "loadscope"


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        for fixture, modules in SHARED.items():
            if fixture in getattr(item, "fixturenames", ()) and module not in modules:
                raise pytest.UsageError(f"{module} uses {fixture}: add it to SHARED in tests/conftest.py")


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # without pytest-xdist the suite runs in one process
    pass
else:

    class ByScope(LoadScopeScheduling):
        """xdist's `loadscope`, with `scope_of`'s scopes, handed out slowest first."""

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            rank = {s: i for i, s in enumerate(SLOWEST)}.get
            for scope in sorted(self.workqueue, key=lambda s: rank(s, len(SLOWEST))):
                self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)

    @pytest.hookimpl(optionalhook=True)  # pytest-xdist may be installed and disabled (-p no:xdist)
    def pytest_xdist_make_scheduler(config, log):
        return ByScope(config, log) if config.getvalue("dist") == "loadscope" else None


@pytest.fixture(scope="session")
def precision(request) -> str:
    """The precision the `learned` tests train and sample in (auto: what this machine picks)."""
    return request.config.getoption("--precision")


def precision_sets(precision: str) -> list[str]:
    """--set arguments that force `precision` on every stage of a recipe ([] for auto)."""
    if precision == "auto":
        return []
    return [
        a
        for s in ("pretrain", "posttrain", "sample", "evaluate")
        for a in ("--set", f"{s}.precision={precision}")
    ]


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def install_wheel(dest: Path) -> dict:
    """Build anchorlm's wheel from this tree and install it (without its dependencies, which .venv
    has) into `dest`; returns the environment that runs the installed copy, as `pip install .`
    would give it: shipped recipes and the corpus must come from the package, not the repository."""
    src, dist, site = dest / "src", dest / "dist", dest / "site"
    # built from a copy: a build writes build/ and anchorlm.egg-info beside its sources, which the
    # repository's CLI processes (run by the other test worker) read their metadata from
    shutil.copytree(ROOT / "anchorlm", src / "anchorlm", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True
    )
    wheel = next(dist.glob("anchorlm-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, precision) -> Path:
    """The whole pipeline on the shipped smoke recipe, through the CLI of anchorlm installed from its
    wheel and run from another directory, as a user who ran `pip install .` runs it; killed once.

    The first run is killed with SIGKILL as soon as plain pretraining has written a whole checkpoint; the
    second run must finish the job from there. `killed_at.txt` records the checkpoint.
    """
    from anchorlm.train.loop import COMPLETE

    base = tmp_path_factory.mktemp("smoke")
    env = install_wheel(base)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    out = base / "run"
    (base / "installed.txt").write_text(
        subprocess.run(
            [sys.executable, "-c", "import anchorlm; print(anchorlm.__file__)"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # fmt: skip
    )
    cmd = [sys.executable, "-m", "anchorlm.cli", "demo", "--config", "smoke", "--out", str(out)]
    cmd += precision_sets(precision)
    first = subprocess.Popen(
        cmd, cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = out / "models" / "base" / "checkpoints"
    deadline = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        # a checkpoint counts once marked whole: killed between its files and the mark, the run
        # rightly drops it and starts again (seen when the machine was slow)
        done = sorted(ckpts.glob(f"checkpoint-*/{COMPLETE}")) if ckpts.exists() else []
        if done:
            first.send_signal(signal.SIGKILL)
            (out / "killed_at.txt").write_text(done[0].parent.name)
            break
        time.sleep(0.2)
    first.wait()
    proc = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)
    (out / "installed.txt").write_text((base / "installed.txt").read_text())
    (base / "pythonpath.txt").write_text(env["PYTHONPATH"])  # to run the same installed code again
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A BPE tokenizer trained on the test corpus, with the annotation special tokens."""
    from anchorlm.annotate import annotate_corpus
    from anchorlm.config import AnnotateConfig, CorpusConfig, TokenizerConfig
    from anchorlm.data.annotated import read_annotated
    from anchorlm.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    corpus = CorpusConfig(path=str(ROOT / "anchorlm/corpus/corpus.jsonl.gz"), max_chars_per_category=3000)
    annotate_corpus(corpus, AnnotateConfig(keywords_per_chunk=1), d / "ann")
    return train_tokenizer(read_annotated(d / "ann"), TokenizerConfig(vocab_size=600), d / "tok")
