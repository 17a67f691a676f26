"""The cell cache of one study (or the demo): shared data, pretrained and post-trained models,
samples files and their scores, each made once and reused.

Every cell goes through one guard (anchorlm.study.ledger): its identity is the config that makes it
plus the identities of its inputs (a changed annotation makes new blocks, new models, new samples).
Two layouts name the cells:

- `cells` (the studies): `models/<size>-s<seed>/<variant>-<digest of identity>`, samples beside each
  model under `samples/`; a changed recipe makes new cells beside the old ones;
- `flat` (the demo): `models/<variant>`, `samples/<variant>.jsonl`; a changed recipe is refused.

A job's seed k means pretraining, post-training and sampling seed k (a study's run seed); a job
without a seed (the demo) takes each stage's own seed from the recipe.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from anchorlm.annotate import annotate_corpus
from anchorlm.config import ModelConfig, changes, replace
from anchorlm.data.annotated import iter_annotated
from anchorlm.data.pack import tokenize_corpus
from anchorlm.data.sft import build_sft_data
from anchorlm.evaluate import Scorer
from anchorlm.io import claim_dir, read_jsonl, write_json
from anchorlm.logs import log
from anchorlm.manifest import is_done
from anchorlm.models import hf_dir, load_model, load_tokenizer
from anchorlm.precision import resolve
from anchorlm.provenance import describe
from anchorlm.sample import forced_prompts, read_prompts, sample, sidecar
from anchorlm.study.config import StudyConfig
from anchorlm.study.ledger import Ledger, digest
from anchorlm.tokenizer import train_tokenizer
from anchorlm.train.model import build_model, non_embedding_params
from anchorlm.train.posttrain import posttrain
from anchorlm.train.pretrain import pretrain
from anchorlm.variants import Variant, custom


@dataclass(frozen=True)
class Job:
    """One variant sampled at one size and seed: the unit a plan's part is made of."""

    size: str
    seed: int | None  # None: each stage's seed from the recipe (the demo)
    name: str  # the variant (anchorlm.variants)
    temperature: float | None = None
    categories: tuple | None = None  # an SFT set of these categories instead of the recipe's
    fidelity: bool = False  # also the forced-plan samples of an anchored variant
    prompts: str = ""  # the prompt set ('' = the study's own: StudyConfig.prompts)
    epochs: float | None = None  # post-training epochs instead of the recipe's (the dose-response)


class Cells:
    def __init__(self, cfg: StudyConfig, layout: str = "cells", reuse_other_code: bool = False,
                 reuse_dir: bool = False):  # fmt: skip
        self.cfg, self.base, self.layout = cfg, cfg.base, layout
        self.out = Path(cfg.out_dir)
        self.variants = custom(cfg.variants)
        self.lm = self.base.pretrain.init_from  # a published model every size continues from
        if self.lm:
            self.sizes = {Path(self.lm).name.removesuffix(".gguf"): self.base.pretrain.model}
        else:
            self.sizes = {
                s["name"]: ModelConfig(**{k: v for k, v in s.items() if k != "name"}) for s in cfg.sizes
            }
        claim_dir(self.out, "study's cells" if layout == "cells" else "demo", reuse_dir)
        self.ledger = Ledger(self.out, reuse_other_code)
        self._scorer = self._chunks = None
        self._prompt_sets: dict[str, list[dict]] = {}
        self._params: dict = {}
        self.ids: dict[str, dict] = {}  # identity of each shared data cell, by name
        self.timings: dict[str, float] = Counter()
        self.cells_run = 0
        self.used: set[Path] = set()  # the manifests of every model and samples cell read or made

    def _cell(self, kind: str, what: str, path: Path, identity: dict, done, make, needs=None,
              precision=None) -> None:  # fmt: skip
        """Make a cell unless it is there; `needs` first makes the inputs it reads (and is not
        called when the cell is there: a study whose scores are kept needs neither its samples nor
        its models on disk); `precision`: what this machine runs it in, or a function saying it
        (the ledger checks it)."""

        def timed():
            if needs is not None:
                needs()
            self.cells_run += 1
            log(f"{kind}: {what}")
            t0 = time.time()
            make()
            self.timings[kind] += time.time() - t0

        self.ledger.cell(path, identity, done, timed, precision)

    def _precision(self, size: str, value: str) -> str:
        """What `value` (a stage's precision) runs a model of `size` in on this machine, as the
        training loop and the sampler resolve it from the model's width."""
        if self.lm:
            return resolve(value, _published_width(self.lm))
        model = self.base.pretrain.model if self.layout == "flat" else self.sizes[size]
        return resolve(value, model.hidden_size)

    # ---- shared data ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """The data stages every cell reads (annotation, tokenizer, blocks, SFT data and prompts);
        a sharded corpus stays sharded. A published model's own tokenizer packs its blocks."""
        t0 = time.time()
        b, p = self.base, self.base.pretrain
        ann = self.out / "annotate"
        self.ids["annotate"] = {"corpus": changes(b.corpus), "annotate": changes(b.annotate)}
        self._cell("annotate", "the corpus", ann, self.ids["annotate"], lambda: is_done(ann),
                   lambda: annotate_corpus(b.corpus, b.annotate, ann))  # fmt: skip
        if not self.lm:
            tok = self.out / "tokenizer"
            self.ids["tokenizer"] = {
                "annotate": digest(self.ids["annotate"]),
                "tokenizer": changes(b.tokenizer),
            }
            self._cell("tokenizer", "train", tok, self.ids["tokenizer"], lambda: is_done(tok),
                       lambda: train_tokenizer(iter_annotated(ann), b.tokenizer, tok))  # fmt: skip
        self.tokenizer = self.lm or str(self.out / "tokenizer")
        for data in ("plain", "annotated"):
            self.pack_tokens(data, p.annotation_dropout)
        self.make_sft_set()
        self.heldout = read_jsonl(self.out / "sft_data" / "eval_prompts.jsonl")
        self.prompts = self.prompt_rows()
        self.focus = self.cfg.focus_size or max(self.sizes, key=lambda n: self.params(n)[1])
        self.timings["prepare"] += time.time() - t0

    def pack_tokens(self, data: str, dropout: float) -> Path:
        """The packed blocks of `data` ('plain' or 'annotated', with `dropout` of its annotations
        left out)."""
        p = self.base.pretrain
        dropout = dropout if data == "annotated" else 0.0
        default = data == "plain" or dropout == p.annotation_dropout
        d = self.out / "tokens" / (data if default else f"annotated-drop{dropout:g}")
        identity = {"annotate": digest(self.ids["annotate"]), "tokenizer": digest(self.ids.get("tokenizer", self.lm)),
                    "data": data, "seq_len": p.seq_len, "seed": p.seed, "dropout": dropout}  # fmt: skip
        self.ids[f"tokens/{d.name}"] = identity
        self._cell("tokenize", f"{data}" + (f", dropout {dropout:g}" if dropout else ""), d, identity,
                   lambda: is_done(d), lambda: tokenize_corpus(self.out / "annotate", self.tokenizer, data == "annotated",
                   p.seq_len, d, p.seed, dropout, self.base.annotate.num_proc))  # fmt: skip
        return d

    def make_sft_set(self, categories: tuple | None = None) -> tuple[list[dict], str]:
        """The SFT training set: the recipe's, or one of equal size from `categories`."""
        scfg = self.base.sft_data
        if categories is None or list(categories) == list(scfg.categories):
            d = self.out / "sft_data"
        else:
            scfg = replace(scfg, categories=list(categories))
            d = self.out / "sft_sets" / f"k{len(categories)}-{digest(changes(scfg))}"
        identity = {"annotate": digest(self.ids["annotate"]), "sft_data": changes(scfg)}
        self.ids[str(d.relative_to(self.out))] = identity
        self._cell("sft-data", f"{len(scfg.categories)} categories", d, identity, lambda: is_done(d),
                   lambda: build_sft_data(self.base.corpus, self.base.annotate, self.out / "annotate", scfg, d))  # fmt: skip
        return read_jsonl(d / "train.jsonl"), digest(identity)

    def replay_chunks(self) -> list[dict]:
        """Every annotated chunk ({text, tags}): what replay in post-training draws from."""
        if self._chunks is None:
            self._chunks = [c for d in iter_annotated(self.out / "annotate") for c in d["chunks"]]
        return self._chunks

    def params(self, size: str) -> tuple[int, int]:
        """(non-embedding, all) parameters of a size, with this study's tokenizer."""
        if size not in self._params:
            if self.lm:
                m, _ = load_model(self.lm, tokens="none")
            else:
                m = build_model(self.sizes[size], load_tokenizer(self.out / "tokenizer"))
            self._params[size] = (non_embedding_params(m), sum(p.numel() for p in m.parameters()))
        return self._params[size]

    def token_budget(self, size: str) -> int:
        """The stated rule: tokens_per_param x all parameters (a published model, or the demo: the
        recipe's pretrain.token_budget), rounded down to whole steps."""
        p = self.base.pretrain
        step = p.batch_size * p.seq_len
        fixed = self.lm or self.layout == "flat"
        want = p.token_budget if fixed else int(self.cfg.tokens_per_param * self.params(size)[1])
        return max(1, want // step) * step

    # ---- models ----------------------------------------------------------------------------------
    def _name(self, size: str, seed: int | None, name: str, identity: dict) -> Path:
        if self.layout == "flat":
            return self.out / "models" / name
        return self.out / "models" / f"{size}-s{seed}" / f"{name}-{digest(identity)}"

    def train_pretrained(
        self, size: str, seed: int | None, data: str, overrides: dict | None = None, make: bool = True
    ) -> tuple[Path, dict]:
        """The model pretrained on `data` at `size` (its path and identity), trained unless its cell is
        there (or unless `make` is False: its path and identity only)."""
        p = self.base.pretrain
        model = (
            p.model if self.layout == "flat" else replace(self.sizes[size], max_position_embeddings=p.seq_len)
        )
        pcfg = replace(p, model=model.model_dump(), token_budget=self.token_budget(size),
                       **({} if seed is None else {"seed": seed}), **(overrides or {}))  # fmt: skip
        tokens = self.pack_tokens(data, pcfg.annotation_dropout)
        identity = {
            "pretrain": changes(pcfg),
            "data": data,
            "tokens": digest(self.ids[f"tokens/{tokens.name}"]),
        }
        flat = (
            {"plain": "base", "annotated": "annotated"}[data]
            if not overrides
            else f"{data}-{digest(overrides)}"
        )
        d = self._name(size, seed, data if self.layout == "cells" else flat, identity)
        self.used.add(d / "manifest.json")
        tok = None if self.lm else self.out / "tokenizer"
        if not make:
            return d, identity
        self._cell("pretrain", f"{size} seed {pcfg.seed} {data} ({pcfg.token_budget:,} tokens)", d, identity,
                   lambda: is_done(d), lambda: pretrain(pcfg, tokens, tok, d),
                   precision=lambda: self._precision(size, pcfg.precision))  # fmt: skip
        return d, identity

    def train_variant(
        self,
        size: str,
        seed: int | None,
        v: Variant,
        categories: tuple | None = None,
        epochs: float | None = None,
        make: bool = True,
    ) -> tuple[Path, dict]:
        """The model a variant samples (its path and identity): its pretrained model, post-trained
        as it says (`epochs` instead of the recipe's), each trained unless its cell is there (or
        unless `make` is False)."""
        own = self.variants[v.model_name]
        init, init_id = self.train_pretrained(size, seed, own.data, own.pretrain, make)
        if own.posttrain is None:
            return init, init_id
        examples, sft_id = self.make_sft_set(categories)
        pcfg = replace(self.base.posttrain, **({} if seed is None else {"seed": seed}), **own.posttrain,
                       **({} if epochs is None else {"epochs": epochs}))  # fmt: skip
        identity = {"posttrain": changes(pcfg), "init": digest(init_id), "sft": sft_id}
        d = self._name(size, seed, own.name, identity)
        self.used.add(d / "manifest.json")
        if not make:
            return d, identity
        replay = self.replay_chunks() if pcfg.replay_fraction or pcfg.anchored_replay else ()
        self._cell("posttrain", f"{size} seed {pcfg.seed} {own.name}" + (f" ({epochs:g} epochs)" if epochs else ""),
                   d, identity, lambda: is_done(d), lambda: posttrain(pcfg, init, examples, d, replay=replay),
                   precision=lambda: self._precision(size, pcfg.precision))  # fmt: skip
        return d, identity

    # ---- samples and scores -----------------------------------------------------------------------
    def prompt_rows(self, name: str = "") -> list[dict]:
        """The prompts of a set: '' is the study's own (`StudyConfig.prompts`, itself '' for the SFT
        data's held-out instructions), else a shipped set's name or a file."""
        name = name or self.cfg.prompts
        if not name:
            return self.heldout
        if name not in self._prompt_sets:
            self._prompt_sets[name] = read_prompts(name)
        return self._prompt_sets[name]

    def draw_samples(self, job: Job, forced: bool = False, make: bool = True) -> Path:
        """The samples of a job's variant (with `forced`: its forced-plan samples), drawn unless
        they are there (or unless `make` is False: the path only); the model is trained only to
        draw them."""
        v = self.variants[job.name]
        model, model_id = self.train_variant(job.size, job.seed, v, job.categories, job.epochs, make=False)
        overrides = dict(v.sample)
        if job.temperature is not None:
            overrides["temperature"] = job.temperature
        if job.seed is not None:
            overrides["seeds"] = [job.seed]
        set_name = job.prompts or self.cfg.prompts
        prompts = self.prompt_rows(set_name)
        if set_name in self.cfg.samples_per_set:
            overrides["n_samples"] = self.cfg.samples_per_set[set_name]
        if forced:
            prompts = forced_prompts(prompts, self.base.sample.forced_topics)
            overrides["n_samples"] = self.base.sample.forced_samples
        scfg = replace(self.base.sample, **overrides)
        plans = None
        if v.anchored and scfg.anchors == "given":  # the SFT data's annotations, as the model was trained on
            plans = [
                list(t) for t in sorted({tuple(e["tags"]) for e in self.make_sft_set(job.categories)[0]})
            ]
        identity = {"sample": changes(scfg), "anchored": v.anchored, "prompts": digest(prompts),
                    "model": digest(model_id), **({"plans": digest(plans)} if plans else {})}  # fmt: skip
        kind = "anchored" if v.anchored else "plain"
        if self.layout == "flat":
            path = self.out / "samples" / f"{job.name}{'.forced' if forced else ''}.jsonl"
        elif set_name:  # a named prompt set: its name in the file's, to find it by eye
            path = model / "samples" / f"{kind}-{_slug(set_name)}-{digest(identity)}.jsonl"
        else:
            path = model / "samples" / f"{kind}-{digest(identity)}.jsonl"
        self.used.add(sidecar(path))
        what = f"{job.size}{'' if job.seed is None else f'-s{job.seed}'}/{job.name} " + (
            f"({'anchored ' + scfg.anchors if v.anchored else 'plain'}, T={scfg.temperature}"
            f"{', forced topics' if forced else ''}{f', {set_name}' if set_name else ''})"
        )
        self.ids[str(path.relative_to(self.out))] = identity
        if make:
            self._cell("sample", what, path, identity, path.exists,
                       lambda: sample(scfg, model, prompts, path, v.anchored, plans),
                       needs=lambda: self.train_variant(job.size, job.seed, v, job.categories, job.epochs),
                       precision=None if scfg.backend == "vllm" else lambda: self._precision(job.size, scfg.precision))  # fmt: skip
        return path

    def draw_job(self, job: Job, make: bool = True) -> tuple[Path, Path | None]:
        """A job's samples, and with `fidelity` an anchored variant's forced-plan samples too."""
        free = self.draw_samples(job, make=make)
        v = self.variants[job.name]
        given = (
            v.sample.get("anchors") == "given"
        )  # its plans are given: forcing one tests the same model's aat
        if not (job.fidelity and v.anchored and not given and self.base.sample.forced_topics):
            return free, None
        return free, self.draw_samples(job, forced=True, make=make)

    def score_samples(self, samples: Path, forced: bool = False, needs=None) -> dict:
        ev = self.base.evaluate
        kind = "forced" if forced else "scores"
        identity = {"evaluate": changes(ev), "samples": digest(self.ids[str(samples.relative_to(self.out))])}
        path = samples.with_name(samples.stem + f".{kind}-{digest(changes(ev))}.json")

        def score():
            rows = read_jsonl(samples)
            if forced:
                write_json(path, self.scorer().forced(rows))
                return
            figures, per_prompt = self.scorer().score(rows)
            figures["per_prompt"] = {m: a.tolist() for m, a in per_prompt.items()}
            write_json(path, figures)

        # forced-plan scores use no language model: no precision to match
        precision = None if forced else lambda: resolve(ev.precision, _published_width(ev.reference_lm))
        self._cell("evaluate", str(samples.relative_to(self.out)), path, identity, path.exists, score, needs,
                   precision=precision)  # fmt: skip
        return json.loads(path.read_text())

    def score_job(self, job: Job) -> dict:
        """Scores of a job's samples: diversity, quality, and anchor fidelity; the samples (and their
        model) are made only where a score is not there."""
        free, forced = self.draw_job(job, make=False)
        figures = self.score_samples(free, needs=lambda: self.draw_samples(job))
        if forced is not None:
            more = self.score_samples(forced, forced=True, needs=lambda: self.draw_samples(job, forced=True))
            figures["anchoring"] = {**figures.get("anchoring", {}), **more}
        return figures

    def classifier_figures(self) -> dict:
        """The attribute classifier's figures (classes, held-out accuracy, chance), cached."""
        path = self.out / f"classifier-{digest(changes(self.base.evaluate))}.json"
        if not path.exists():
            write_json(path, self.scorer().clf_info)
        return json.loads(path.read_text())

    def scorer(self):
        if self._scorer is None:
            self._scorer = Scorer(self.base.evaluate, self.base.sft_data, self.base.corpus)
        return self._scorer

    def made_on(self, hint: str = "") -> list[dict]:
        """Where the cells were trained and sampled, and in what precision: [{where, precision,
        cells}] from their manifests; `hint` names the machine of cells whose manifests predate
        recording it (a study run elsewhere, e.g. on a borrowed GPU)."""
        groups: Counter = Counter()
        for m in sorted(self.used):
            if not m.exists():
                continue
            d = json.loads(m.read_text())
            where = describe(d["machine"]) if d.get("machine") else hint or "not recorded"
            groups[(where, d.get("counts", {}).get("precision") or "not recorded")] += 1
        return [{"where": w, "precision": p, "cells": n} for (w, p), n in sorted(groups.items())]


@functools.cache
def _published_width(spec: str) -> int | None:
    """A published model's width, from its config, as the training loop, the sampler and the
    scorer resolve `precision: auto` from it (None where it cannot be read: `resolve` then takes it
    as wide)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(hf_dir(spec)).hidden_size
    except (OSError, ValueError, AttributeError):
        return None


def _slug(name: str) -> str:
    return Path(name).stem.replace(".", "_")
