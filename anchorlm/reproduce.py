"""`anchorlm reproduce`: the paper's findings (../shared/PAPER.md) as one resumable study.

The study is a set of cells: a pretrained model, a post-trained model, a samples file, the scores of a
samples file. Each cell lives in a directory named after what it is and a hash of everything that
made it, and is skipped when it is there: a rerun continues where a killed one stopped, and a
changed recipe makes new cells beside the old ones. Run seed k of a size means pretraining,
post-training and sampling seed k.

Parts (each a section of docs/results.md):
  scaling       base / sft / aat at every size and seed; collapse, gap closed, collapse reduction
  ablations     at the focus size: anchored post-training of the plain model, the AAT model sampled
                without its annotation, anchored post-training with the annotation in the loss
  stratified    the AAT model with anchor-stratified sampling (anchorlm.sample.choose_anchors)
  entropy       SFT sets of equal size from 1, 2, 4, ... categories; output against data entropy
  frontier      sft, aat, GEM and SFT+replay sampled at several temperatures
  diagnostics   further anchored variants named in the recipe (e.g. value-masking fractions)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from anchorlm.config import ModelConfig, ReproduceConfig, to_dict
from anchorlm.manifest import is_done, versions
from anchorlm.metrics.diversity import entropy
from anchorlm.metrics.summary import summarize

METRICS = ("embedding_distance", "attribute_entropy")  # the paper's two diversity metrics
ALL_METRICS = ("embedding_distance", "attribute_entropy", "vendi")


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)


class Study:
    """Runs and caches the cells of one `ReproduceConfig`."""

    def __init__(self, cfg: ReproduceConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.base = cfg.base
        self.sizes = {
            s["name"]: ModelConfig(**{k: v for k, v in s.items() if k != "name"}) for s in cfg.sizes
        }
        self._scorer = None
        self._texts = None
        self.timings: dict[str, float] = Counter()
        self.cells_run = 0

    # ---- shared data -------------------------------------------------------------------------
    def prepare(self) -> None:
        from anchorlm.data.sft import read_jsonl
        from anchorlm.pipeline import prepare
        from anchorlm.tokenizer import load_tokenizer

        t0 = time.time()
        self.docs = prepare(self.base, self.out)
        self.tok = load_tokenizer(self.out / "tokenizer")
        self.prompts = read_jsonl(self.out / "sft_data" / "eval_prompts.jsonl")
        self.focus = self.cfg.focus_size or max(self.sizes, key=lambda n: self.params(n)[1])
        self.timings["prepare"] += time.time() - t0

    def params(self, size: str) -> tuple[int, int]:
        """(non-embedding, all) parameters of a size, with this study's tokenizer."""
        if not hasattr(self, "_params"):
            self._params = {}
        if size not in self._params:
            from anchorlm.tokenizer import load_tokenizer
            from anchorlm.train.model import build_model, non_embedding_params

            tok = getattr(self, "tok", None) or load_tokenizer(self.out / "tokenizer")
            m = build_model(self.sizes[size], tok)
            self._params[size] = (non_embedding_params(m), sum(p.numel() for p in m.parameters()))
        return self._params[size]

    def token_budget(self, size: str) -> int:
        """The stated rule: tokens_per_param x all parameters, rounded down to whole steps."""
        p = self.base.pretrain
        step = p.batch_size * p.seq_len
        return max(1, int(self.cfg.tokens_per_param * self.params(size)[1]) // step) * step

    # ---- cells -------------------------------------------------------------------------------
    def _run(self, kind: str, what: str, fn) -> None:
        self.cells_run += 1
        _log(f"{kind}: {what}")
        t0 = time.time()
        fn()
        self.timings[kind] += time.time() - t0

    def pretrained(self, size: str, seed: int, variant: str) -> Path:
        from anchorlm.train.pretrain import pretrain

        model = dataclasses.replace(self.sizes[size], max_position_embeddings=self.base.pretrain.seq_len)
        pcfg = dataclasses.replace(
            self.base.pretrain, model=model, token_budget=self.token_budget(size), seed=seed
        )
        d = self.out / "models" / f"{size}-s{seed}" / f"{variant}-{_hash([to_dict(pcfg), variant])}"
        if not is_done(d):
            self._run(
                "pretrain",
                f"{size} seed {seed} {variant} ({pcfg.token_budget:,} tokens)",
                lambda: pretrain(pcfg, self.out / "tokens" / variant, self.out / "tokenizer", d),
            )
        return d

    def sft_examples(self, categories: list | None = None) -> tuple[list[dict], str]:
        """The SFT training set: the recipe's, or one of equal size from `categories`."""
        from anchorlm.data.sft import build_sft_data, read_jsonl

        if categories is None or list(categories) == list(self.base.sft_data.categories):
            return read_jsonl(self.out / "sft_data" / "train.jsonl"), "default"
        scfg = dataclasses.replace(self.base.sft_data, categories=list(categories))
        d = self.out / "sft_sets" / f"k{len(categories)}-{_hash(to_dict(scfg))}"
        if not is_done(d):
            self._run(
                "sft-data",
                f"{len(categories)} categories",
                lambda: build_sft_data(self.base.corpus, self.base.annotate, self.out / "annotate", scfg, d),
            )
        return read_jsonl(d / "train.jsonl"), d.name

    def replay_texts(self) -> list[str]:
        if self._texts is None:
            self._texts = [c["text"] for d in self.docs for c in d["chunks"]]
        return self._texts

    def posttrained(
        self, size: str, seed: int, name: str, init: str, overrides: dict, categories: list | None = None
    ) -> Path:
        from anchorlm.train.posttrain import posttrain

        init_dir = self.pretrained(size, seed, init)
        examples, data_key = self.sft_examples(categories)
        pcfg = dataclasses.replace(self.base.posttrain, seed=seed, **overrides)
        key = _hash([to_dict(pcfg), init_dir.name, data_key])
        d = self.out / "models" / f"{size}-s{seed}" / f"{name}-{key}"
        if not is_done(d):
            replay = self.replay_texts() if pcfg.replay_fraction else ()
            self._run(
                "posttrain",
                f"{size} seed {seed} {name}",
                lambda: posttrain(pcfg, init_dir, examples, d, replay_texts=replay),
            )
        return d

    def sampled(
        self, model: Path, seed: int, anchored: bool, prompts: list | None = None, **overrides
    ) -> Path:
        from anchorlm.sample import sample

        prompts = prompts or self.prompts
        scfg = dataclasses.replace(self.base.sample, seeds=[seed], **overrides)
        key = _hash([to_dict(scfg), anchored, prompts])
        path = model / "samples" / f"{'anchored' if anchored else 'plain'}-{key}.jsonl"
        if not path.exists():
            self._run(
                "sample",
                f"{model.parent.name}/{model.name.rsplit('-', 1)[0]} "
                f"({'anchored ' + scfg.anchors if anchored else 'plain'}, T={scfg.temperature})",
                lambda: sample(scfg, model, prompts, path, anchored),
            )
        return path

    def scored(self, samples: Path) -> dict:
        from anchorlm.data.sft import read_jsonl

        path = samples.with_name(samples.stem + f".scores-{_hash(to_dict(self.base.evaluate))}.json")
        if not path.exists():

            def score():
                figures, per_prompt = self.scorer().score(read_jsonl(samples))
                figures["per_prompt"] = {m: a.tolist() for m, a in per_prompt.items()}
                _write_json(path, figures)

            self._run("evaluate", str(samples.relative_to(self.out)), score)
        return json.loads(path.read_text())

    def classifier_info(self) -> dict:
        """The attribute classifier's figures (classes, held-out accuracy, chance), cached."""
        path = self.out / f"classifier-{_hash(to_dict(self.base.evaluate))}.json"
        if not path.exists():
            _write_json(path, self.scorer().clf_info)
        return json.loads(path.read_text())

    def scorer(self):
        if self._scorer is None:
            from anchorlm.evaluate import Scorer

            self._scorer = Scorer(self.base.evaluate, self.base.sft_data, self.base.corpus)
        return self._scorer

    def steered(self, model: Path, seed: int, topics: list[str]) -> dict:
        """Scores of anchored samples whose annotation starts with a forced `topic:` tag."""
        prompts = [
            {"id": f"{p['id']}|{t}", "prompt": p["prompt"], "annotation_prefix": [f"topic:{t}"]}
            for p in self.prompts
            for t in topics
        ]
        return self.scored(self.sampled(model, seed, True, prompts, n_samples=self.cfg.steering_samples))

    # ---- variants: (model cell, anchored sampling) -------------------------------------------
    def spec(self, name: str) -> tuple[str | None, str, dict, bool]:
        """(post-trained cell name or None for the pretrained model, pretrained variant it starts
        from, post-training overrides, anchored sampling) of a named variant."""
        anchored = {"method": "anchored"}
        specs = {
            "base": (None, "plain", {}, False),
            "annotated": (None, "annotated", {}, True),
            "sft": ("sft", "plain", {"method": "sft"}, False),
            "aat": ("aat", "annotated", anchored, True),
            "aat_on_plain": ("aat_on_plain", "plain", anchored, True),
            "aat_no_annotation": ("aat", "annotated", anchored, False),
            "aat_unmasked": ("aat_unmasked", "annotated", {**anchored, "mask_annotation": False}, True),
            "aat_stratified": ("aat", "annotated", anchored, True),
            "gem": ("gem", "plain", {"method": "sft", "loss": "gem", "gem_beta": self.cfg.gem_beta}, False),
            "replay": (
                "replay",
                "plain",
                {"method": "sft", "replay_fraction": self.cfg.replay_fraction},
                False,
            ),
        }
        if name in specs:
            return specs[name]
        diag = next(d for d in self.cfg.diagnostics if d["name"] == name)  # an anchored diagnostic
        return name, diag.get("init", "annotated"), {**anchored, **diag.get("posttrain", {})}, True

    def model(self, size: str, seed: int, name: str, categories: list | None = None) -> Path:
        """The model cell of a named variant."""
        post, init, over, _ = self.spec(name)
        if post is None:
            return self.pretrained(size, seed, init)
        return self.posttrained(size, seed, post, init, over, categories)

    def variant(
        self,
        size: str,
        seed: int,
        name: str,
        temperature: float | None = None,
        categories: list | None = None,
    ) -> dict:
        """Scores of one named variant at one size and seed."""
        overrides = {} if temperature is None else {"temperature": temperature}
        if name == "aat_stratified":
            overrides["anchors"] = "stratified"
        model = self.model(size, seed, name, categories)
        return self.scored(self.sampled(model, seed, self.spec(name)[3], **overrides))


# ---- aggregation ---------------------------------------------------------------------------------
def _mean_figures(runs: list[dict]) -> dict:
    """The mean over seeds of each diversity and quality figure (the demo's form)."""
    out: dict = {"diversity": {}, "quality": {}, "n_samples": sum(r["n_samples"] for r in runs)}
    for part in ("diversity", "quality"):
        for k in runs[0][part]:
            vals = [r[part][k] for r in runs if r[part].get(k) is not None]
            out[part][k] = float(np.mean(vals)) if vals else None
    out["n_prompts"] = runs[0]["n_prompts"]
    out["n_seeds"] = len(runs)
    if "anchoring" in runs[0]:
        out["anchoring"] = {}
        for k in runs[0]["anchoring"]:
            vals = [r["anchoring"][k] for r in runs if r["anchoring"][k] is not None]
            out["anchoring"][k] = float(np.mean(vals)) if vals else None
    return out


def _summary(runs: dict[str, list[dict]], n_boot: int, seed: int, aat: str = "aat") -> dict:
    """Collapse, gap closed, collapse reduction of `aat` (any variant) against base and sft, pooled
    over seeds, with CIs resampling seeds and prompts."""
    out = {}
    for m in ALL_METRICS:
        arr = {
            v: np.array([r["per_prompt"][m] for r in runs[src]])
            for v, src in (("base", "base"), ("sft", "sft"), ("aat", aat))
        }
        out[m] = summarize(arr, n_boot, seed)
        out[m]["per_seed_gap_closed"] = [
            summarize({v: a[i] for v, a in arr.items()}, 0)["gap_closed"] for i in range(len(arr["base"]))
        ]
    return out


def run_reproduce(cfg: ReproduceConfig) -> dict:
    """Run (or finish) the study; write docs_dir/results.json, results.md and the plots."""
    from anchorlm.reproduce_report import write_results

    t0 = time.time()
    st = Study(cfg)
    st.out.mkdir(parents=True, exist_ok=True)
    (st.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    st.prepare()
    ev = cfg.base.evaluate
    res: dict = {
        "title": cfg.title,
        "rule": {
            "tokens_per_param": cfg.tokens_per_param,
            "text": f"pretraining tokens = {cfg.tokens_per_param:g} x all parameters (embeddings included)",
        },
        "focus_size": st.focus,
        "sizes": {},
    }

    # 1. scaling
    for size in st.sizes:
        runs = {v: [st.variant(size, s, v) for s in cfg.seeds] for v in ("base", "sft", "aat")}
        non_emb, total = st.params(size)
        res["sizes"][size] = {
            "non_embedding_params": non_emb,
            "params": total,
            "pretrain_tokens": st.token_budget(size),
            "model": dataclasses.asdict(st.sizes[size]),
            "seeds": list(cfg.seeds),
            "variants": {v: _mean_figures(r) for v, r in runs.items()},
            "summary": _summary(runs, ev.bootstrap, ev.seed),
        }

    # 2. ablations and 5. stratified sampling, at the focus size
    names = ["base", "sft", "aat", "aat_on_plain", "aat_no_annotation", "aat_unmasked", "aat_stratified"]
    names += [d["name"] for d in cfg.diagnostics]
    runs = {v: [st.variant(st.focus, s, v) for s in cfg.ablation_seeds] for v in names}
    res["ablations"] = {
        "size": st.focus,
        "seeds": list(cfg.ablation_seeds),
        "variants": {v: _mean_figures(r) for v, r in runs.items()},
        "summary": {
            v: _summary(runs, ev.bootstrap, ev.seed, aat=v) for v in names if v not in ("base", "sft")
        },
        "diagnostics": cfg.diagnostics,
    }

    # 3. SFT-entropy study
    points = []
    for k in cfg.entropy_counts:
        cats = cfg.entropy_categories[:k]
        examples, _ = st.sft_examples(cats)
        point = {"k": k, "categories": cats, "sft_data_entropy": entropy([e["category"] for e in examples])}
        for v in ("sft", "aat"):
            r = [st.variant(st.focus, s, v, categories=cats) for s in cfg.entropy_seeds]
            point[v] = {
                "attribute_entropy": float(np.mean([x["diversity"]["attribute_entropy"] for x in r])),
                "embedding_distance": float(np.mean([x["diversity"]["embedding_distance"] for x in r])),
                "style_adherence": float(np.mean([x["quality"]["style_adherence"] for x in r])),
            }
        points.append(point)
    base = [st.variant(st.focus, s, "base") for s in cfg.entropy_seeds]
    res["entropy_study"] = {
        "size": st.focus,
        "seeds": list(cfg.entropy_seeds),
        "base_attribute_entropy": float(np.mean([x["diversity"]["attribute_entropy"] for x in base])),
        "points": points,
        "slope": {v: _slope(points, v) for v in ("sft", "aat")},
    }

    # 4. frontier
    frontier = {}
    for v in ("sft", "aat", "gem", "replay"):
        frontier[v] = []
        for temp in cfg.temperatures:
            r = [st.variant(st.focus, s, v, temperature=temp) for s in cfg.frontier_seeds]
            fig = _mean_figures(r)
            frontier[v].append({"temperature": temp, **fig["diversity"], **fig["quality"]})
    res["frontier"] = {"size": st.focus, "seeds": list(cfg.frontier_seeds), "points": frontier}

    # diagnostic: does the writer follow a plan it is given, before and after anchored SFT?
    if cfg.steering_topics:
        seen = [t for t in cfg.steering_topics if t in cfg.base.sft_data.categories]
        unseen = [t for t in cfg.steering_topics if t not in cfg.base.sft_data.categories]
        rows = {}
        for name in ("annotated", "aat", "aat_unmasked"):
            rows[name] = {}
            for group, topics in (("sft_topics", seen), ("other_topics", unseen)):
                if not topics:
                    continue
                vals = []
                for s in cfg.ablation_seeds:
                    model = st.model(st.focus, s, name)
                    vals.append(st.steered(model, s, topics)["anchoring"]["topic_followed"])
                vals = [v for v in vals if v is not None]  # None: no well-formed annotation at all
                rows[name][group] = float(np.mean(vals)) if vals else None
        res["steering"] = {
            "size": st.focus,
            "seeds": list(cfg.ablation_seeds),
            "sft_topics": seen,
            "other_topics": unseen,
            "chance": st.classifier_info()["chance"],
            "classifier_heldout_accuracy": st.classifier_info()["heldout_accuracy"],
            "topic_followed": rows,
        }

    res["bar"] = bar(res)
    minutes = (time.time() - t0) / 60
    this = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "minutes": round(minutes, 2),
        "cells_run": st.cells_run,
        "minutes_by_stage": {k: round(v / 60, 2) for k, v in st.timings.items()},
    }
    ledger_path = st.out / "compute.json"  # every invocation that ran cells in this out_dir
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else []
    if st.cells_run:
        ledger.append(this)
        _write_json(ledger_path, ledger)
    res["compute"] = {
        "minutes_this_invocation": this["minutes"],
        "cells_run_this_invocation": st.cells_run,
        "invocations_that_ran_cells": ledger,
        "versions": versions(),
    }
    res["config"] = to_dict(cfg)
    write_results(res, Path(cfg.docs_dir))
    _log(f"done in {minutes:.1f} min ({st.cells_run} cells run); {cfg.docs_dir}/results.md")
    return res


def _slope(points: list[dict], v: str) -> float | None:
    """Least-squares slope of output attribute entropy against SFT data entropy."""
    x = np.array([p["sft_data_entropy"] for p in points])
    y = np.array([p[v]["attribute_entropy"] for p in points])
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def bar(res: dict) -> dict:
    """The paper's headline as checks: at the largest size gap closed >= 0.85 on both metrics at
    matched quality (style adherence within 2 points of SFT, fluency NLL within 5% of SFT), and gap
    closed growing with size."""
    order = sorted(res["sizes"], key=lambda s: res["sizes"][s]["non_embedding_params"])
    top = res["sizes"][order[-1]]
    q = {v: top["variants"][v]["quality"] for v in ("sft", "aat")}
    checks = {}
    for m in METRICS:
        g = top["summary"][m]["gap_closed"]
        checks[f"{m}_gap_closed_at_largest>=0.85"] = bool(g is not None and math.isfinite(g) and g >= 0.85)
        seq = [res["sizes"][s]["summary"][m]["gap_closed"] for s in order]
        checks[f"{m}_gap_closed_grows_with_size"] = bool(all(b > a for a, b in zip(seq, seq[1:])))
    checks["style_adherence_within_2_points"] = bool(
        abs(q["aat"]["style_adherence"] - q["sft"]["style_adherence"]) <= 0.02
    )
    checks["fluency_nll_within_5_percent"] = bool(q["aat"]["fluency_nll"] <= 1.05 * q["sft"]["fluency_nll"])
    return {"largest_size": order[-1], "checks": checks, "met": all(checks.values())}
