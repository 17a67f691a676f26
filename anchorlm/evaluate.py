"""Stage 7: diversity and quality of each variant's samples, and the paper's summary figures.

The metrics are those of anchorlm.metrics.registry: diversity per prompt (averaged over sampling
seeds) from the samples' texts, MiniLM embeddings and the attribute classifier's labels; quality
per variant (style adherence, the share of finished responses and the style among them, fluency
NLL under the reference LM, ...); anchor fidelity (anchorlm.metrics.fidelity) for anchored
variants. With variants base, sft and aat present, `summary` holds collapse, collapse reduction
and gap closed of each summary metric, each with a bootstrap CI over prompts.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from anchorlm.config import CorpusConfig, EvaluateConfig, SFTDataConfig, to_dict
from anchorlm.data.style import strip_style
from anchorlm.io import atomic, read_jsonl, write_json
from anchorlm.metrics import registry
from anchorlm.metrics.classifier import AttributeClassifier
from anchorlm.metrics.fidelity import anchoring, forced_plan
from anchorlm.metrics.quality import fluency_nll, mean_finite
from anchorlm.metrics.registry import DIVERSITY, SUMMARY_METRICS, Quality
from anchorlm.metrics.summary import shares_against_base, summarize
from anchorlm.models import cache_dir, load_embedder, load_model, minilm_dir
from anchorlm.precision import dtype, hidden_size, resolve
from anchorlm.provenance import provenance, versions
from anchorlm.variants import SUMMARY_TRIO


# the share of samples the attribute classifier puts in the SFT data's topics: SFT's pull across
# prompts, which the within-prompt figures do not see where one prompt's samples share a topic
IN_SFT_TOPICS = "in_sft_topics"


def _for_diversity(text: str, cfg: EvaluateConfig, sft: SFTDataConfig) -> str:
    """The part of a response whose meaning is compared: no style wrapper, at most max_words words."""
    if cfg.strip_style:
        text = strip_style(sft, text)
    if cfg.max_words:
        text = " ".join(text.split(" ")[: cfg.max_words])
    return text


def read_samples(samples: dict[str, str | Path], same_prompts: bool = True) -> dict[str, list[dict]]:
    """Each variant's sample rows, checked: every row has a prompt_id (all of one type in a file) and
    a string response, anchored fields are in every row or in none, and (with `same_prompts`, for
    diversity) every prompt has at least 2 samples per seed and every variant covers the same
    prompts with as many samples each, so that variants are compared on equal terms."""
    loaded = {}
    for name, path in samples.items():
        rows = read_jsonl(path)
        if not rows:
            raise ValueError(f"{path}: no samples")
        anchored = "annotation_ok" in rows[0]
        id_type = None
        for i, r in enumerate(rows, 1):
            if not isinstance(r.get("response"), str) or "prompt_id" not in r:
                raise ValueError(f"{path}:{i}: a sample needs 'prompt_id' and a string 'response'")
            pid = r["prompt_id"]
            if not isinstance(pid, (str, int)) or isinstance(pid, bool):
                raise ValueError(f"{path}:{i}: 'prompt_id' must be a string or an integer, not {pid!r}")
            id_type = id_type or type(pid)
            if type(pid) is not id_type:
                raise ValueError(
                    f"{path}:{i}: 'prompt_id' {pid!r} is a {type(pid).__name__} where earlier rows have "
                    f"{id_type.__name__}s; give every prompt_id of a file one type"
                )
            if ("annotation_ok" in r) != anchored:
                raise ValueError(
                    f"{path}:{i}: anchored fields (annotation, annotation_ok) in some rows only; "
                    "one file holds one variant's samples"
                )
            if anchored and not (r.get("annotation") is None or isinstance(r.get("annotation"), list)):
                raise ValueError(f"{path}:{i}: 'annotation' must be a list of tags or null")
        loaded[name] = rows
    if same_prompts:
        _check_counts(loaded, samples)
    ids = {v: {str(r["prompt_id"]) for r in rows} for v, rows in loaded.items()}
    if same_prompts and len(ids) > 1:
        first = next(iter(ids))
        for v in ids:
            if ids[v] != ids[first]:
                missing, extra = sorted(ids[first] - ids[v])[:5], sorted(ids[v] - ids[first])[:5]
                raise ValueError(
                    f"{samples[v]}: variant {v!r} covers other prompts than {first!r} (missing {missing}, "
                    f"extra {extra}); variants are compared prompt by prompt"
                )
    return loaded


def _check_counts(loaded: dict[str, list[dict]], samples: dict) -> None:
    """Diversity needs 2 or more samples of a prompt (per sampling seed), and variants compared
    with the same number: a prompt's distance and Vendi score depend on how many samples it has."""
    first = None
    for name, rows in loaded.items():
        per = Counter((str(r["prompt_id"]), r.get("seed", 0)) for r in rows)
        (pid, seed), low = min(per.items(), key=lambda kv: kv[1])
        if low < 2:
            raise ValueError(
                f"{samples[name]}: prompt {pid!r} (seed {seed}) has {low} sample; diversity needs at least "
                "2 samples per prompt (sample with n_samples >= 2)"
            )
        counts = sorted(set(per.values()))
        if first is None:
            first = (name, counts)
        elif counts != first[1]:
            raise ValueError(
                f"{samples[name]}: {_count_text(counts)} samples per prompt, but {first[0]!r} has "
                f"{_count_text(first[1])}; variants are compared with the same number of samples per prompt"
            )


def _count_text(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


class Scorer:
    """The models evaluation needs, loaded once: the embedder, the attribute classifier (fitted on
    the corpus) and the reference LM. `score` turns one variant's sample rows into its figures."""

    def __init__(self, cfg: EvaluateConfig, sft: SFTDataConfig, corpus: CorpusConfig):
        self.cfg, self.sft = cfg, sft
        self.embedder = load_embedder(cfg.embedder)
        self.clf = AttributeClassifier(self.embed_cached, cfg.seed)
        self.clf_info = self.clf.fit(corpus, cfg.classifier_docs_per_category)
        self.ref_model, self.ref_tok = load_model(cfg.reference_lm, tokens="none")
        self.ref_model.to(dtype(cfg.precision, self.ref_model))

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True)

    def embed_cached(self, texts: list[str]) -> np.ndarray:
        """`embed`, kept in the cache under a hash of the embedder, the library versions and the
        texts in order (so the same batches, the same bits): the classifier's corpus documents are
        the same in every evaluation of a corpus, and embedding them is most of evaluation's time on
        a CPU. A cache that cannot be read or written is skipped."""
        import hashlib

        name = self.cfg.embedder
        ident = [name, str(minilm_dir()) if name == "minilm" else name, versions(), texts]
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
        path = cache_dir() / "embeddings" / f"{key}.npy"
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass
        emb = self.embed(texts)
        try:
            with atomic(path, "wb") as fh:
                np.save(fh, emb)
        except OSError:
            pass
        return emb

    def score(self, rows: list[dict]) -> tuple[dict, dict]:
        """(figures, per-prompt arrays of each diversity metric, of content NLL and of each quality
        rate (registry.RATES), averaged over sampling seeds)."""
        cfg, sft = self.cfg, self.sft
        shown = [r["response"] for r in rows]
        texts = [_for_diversity(t, cfg, sft) for t in shown]
        emb = self.embed(texts)
        labels = self.clf.predict(emb)
        conf = self.clf.confidence(emb)
        groups = defaultdict(list)
        for i, r in enumerate(rows):
            groups[(r["prompt_id"], r.get("seed", 0))].append(i)
        k = cfg.content_nll_per_prompt
        scored = sorted(i for idx in groups.values() for i in (idx[:k] if k else idx))
        content_nll = [float("nan")] * len(rows)  # NaN: not scored, left out of every mean
        got = fluency_nll([strip_style(sft, shown[i]) for i in scored], self.ref_model, self.ref_tok)
        for i, x in zip(scored, got):
            content_nll[i] = x
        k = cfg.fluency_max_per_variant or len(rows)
        pick = np.linspace(0, len(rows) - 1, min(k, len(rows))).round().astype(int)
        nll = fluency_nll([shown[i] for i in pick], self.ref_model, self.ref_tok)
        q = Quality(rows, texts, sft, nll, len(pick), content_nll)
        rates = {m: np.asarray(registry.METRICS[m].per_response(q), dtype=float) for m in registry.RATES}
        topics = set(sft.categories)
        if topics:  # each sample in one of the SFT data's topics, by the classifier
            rates[IN_SFT_TOPICS] = np.array([lab in topics for lab in labels], dtype=float)
        by_prompt = defaultdict(list)
        for (pid, _), idx in sorted(groups.items(), key=lambda kv: str(kv[0])):
            figs = registry.diversity([texts[i] for i in idx], emb[idx], [labels[i] for i in idx], conf[idx])
            figs["content_nll"] = mean_finite([content_nll[i] for i in idx])
            figs.update({m: float(a[idx].mean()) for m, a in rates.items()})
            by_prompt[pid].append(figs)
        pids = sorted(by_prompt, key=str)
        per_prompt = {
            m: np.array([np.mean([g[m] for g in by_prompt[p]]) for p in pids])
            for m in [*(m.name for m in DIVERSITY), "content_nll", *rates]
        }
        n_group = int(np.median([len(v) for v in groups.values()]))
        figures = {
            "diversity": {m.name: float(per_prompt[m.name].mean()) for m in DIVERSITY},
            "quality": registry.quality(q),
            "ceiling": {
                "attribute_entropy": self.clf.entropy_ceiling(n_group),
                "samples_per_prompt": n_group,
            },
            "n_samples": len(rows),
            "n_prompts": len(pids),
            "label_counts": dict(Counter(labels).most_common()),
            "examples": examples(rows),
        }
        if "annotation_ok" in rows[0]:
            figures["anchoring"] = anchoring(rows, labels, self.clf.categories)
        return figures, per_prompt

    def forced(self, rows: list[dict]) -> dict:
        """Forced-plan accuracy of samples whose annotations started with a fixed `topic:` tag."""
        labels = self.clf.predict(
            self.embed([_for_diversity(r["response"], self.cfg, self.sft) for r in rows])
        )
        return forced_plan(rows, labels, self.sft.categories, self.clf_info["per_category_accuracy"])


def style_figures(sft, rows: list[dict]) -> dict:
    """The style metrics of the registry for `rows`: style adherence; where the sampler recorded
    whether each response ended on its own (`finished`), that share and the adherence among the
    finished ones (a response cut at max_new_tokens cannot end with the closer)."""
    q = Quality(rows, [r["response"] for r in rows], sft, [], 0)
    keys = ("style_adherence", "finished", "style_adherence_finished")
    return {k: v for k, v in registry.quality(q).items() if k in keys}


def examples(rows: list[dict], k: int = 3) -> list[dict]:
    """A few samples to show beside the numbers: the first sample of the first `k` prompts."""
    seen, out = set(), []
    for r in rows:
        if r["prompt_id"] in seen:
            continue
        seen.add(r["prompt_id"])
        out.append({key: r[key] for key in ("prompt_id", "prompt", "annotation_raw", "response") if key in r})
        if len(out) == k:
            break
    return out


def evaluate(
    cfg: EvaluateConfig,
    sft: SFTDataConfig,
    corpus: CorpusConfig,
    samples: dict[str, str | Path],
    out_path: str | Path,
    prompts: list[dict] | None = None,
    forced: dict[str, str | Path] | None = None,
) -> dict:
    """Score each variant's samples file (JSONL from `anchorlm sample`); write results JSON. With
    `prompts` (the prompt file's rows), every variant must cover exactly those prompts. `forced`
    names each anchored variant's forced-plan samples (prompts with `annotation_prefix`
    ["topic:<t>"]); their accuracy joins the variant's `anchoring` figures."""
    loaded = read_samples(samples)  # bad input fails here, before any model is loaded
    forced_rows = read_samples(forced or {}, same_prompts=False)
    unknown = sorted(set(forced_rows) - set(loaded))
    if unknown:
        raise ValueError(f"forced-plan samples for {unknown} but no samples of those variants")
    if prompts is not None:
        want = {str(p["id"]) for p in prompts}
        for name, rows in loaded.items():
            got = {str(r["prompt_id"]) for r in rows}
            if got != want:
                missing, extra = sorted(want - got)[:5], sorted(got - want)[:5]
                raise ValueError(
                    f"{samples[name]}: samples do not match the prompt file "
                    f"(missing prompt ids {missing}, unknown ids {extra})"
                )
    scorer = Scorer(cfg, sft, corpus)
    variants, per_prompt = {}, {}
    for name, rows in loaded.items():
        variants[name], per_prompt[name] = scorer.score(rows)
    for name, rows in forced_rows.items():
        variants[name].setdefault("anchoring", {}).update(scorer.forced(rows))

    results = {
        "variants": variants,
        "classifier": scorer.clf_info,
        "prompts": len({str(r["prompt_id"]) for rows in loaded.values() for r in rows}),
        "config": to_dict(cfg),
        "versions": versions(),
        "provenance": provenance(precision=resolve(cfg.precision, hidden_size(scorer.ref_model))),
    }
    if sft.categories and "base" in per_prompt:  # against base: a comparison of post-trained models with their start
        results[IN_SFT_TOPICS] = {
            "topics": list(sft.categories),
            **shares_against_base({v: d[IN_SFT_TOPICS] for v, d in per_prompt.items()}, cfg.bootstrap, cfg.seed),
        }
    if set(SUMMARY_TRIO) <= set(per_prompt):
        results["summary"] = {
            m: summarize({v: per_prompt[v][m] for v in SUMMARY_TRIO}, cfg.bootstrap, cfg.seed)
            for m in SUMMARY_METRICS
        }
    results["per_prompt"] = {v: {m: a.tolist() for m, a in d.items()} for v, d in per_prompt.items()}
    write_json(out_path, results, indent=2)
    return results
