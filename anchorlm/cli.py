"""`anchorlm`: a thin command line over the library; one subcommand per stage.

    anchorlm demo [--config demo|smoke|FILE] [--out runs/demo]
    anchorlm annotate --config C --out DIR
    anchorlm tokenizer --annotated DIR --out DIR
    anchorlm tokenize --annotated DIR --tokenizer DIR --variant plain|annotated --out DIR
    anchorlm pretrain --data DIR (--tokenizer DIR | --init-from MODEL) --out DIR
    anchorlm sft-data --annotated DIR --out DIR
    anchorlm posttrain --model DIR --data train.jsonl --method sft|anchored --out DIR
    anchorlm export-trl --model DIR --data train.jsonl --method anchored --form prompt-completion --out F
    anchorlm sample --model DIR --prompts prompts.jsonl [--anchored] --out samples.jsonl
    anchorlm evaluate --samples base=A.jsonl sft=B.jsonl aat=C.jsonl --out results.json
    anchorlm report --results results.json --out DIR
    anchorlm reproduce --config reproduce [--out runs/reproduce] [--docs docs]
    anchorlm serve --model DIR|smollm2 [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--backend vllm]
    anchorlm noveltybench --base-url URL --model NAME --out generations.jsonl

Every subcommand takes `--config FILE` (a YAML recipe) and `--set section.field=value` overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anchorlm import __version__
from anchorlm.annotate import annotate_corpus
from anchorlm.config import check_out_dir, load_config
from anchorlm.data.annotated import iter_annotated
from anchorlm.data.pack import tokenize_corpus
from anchorlm.data.sft import build_sft_data
from anchorlm.data.trl import export_trl
from anchorlm.evaluate import evaluate
from anchorlm.io import read_jsonl
from anchorlm.models import load_tokenizer
from anchorlm.report import anchoring_table, table, write_report
from anchorlm.sample import forced_prompts, forced_topic_list, read_prompts, sample
from anchorlm.study.config import load_study_config
from anchorlm.study.run import run_demo, run_study
from anchorlm.tokenizer import train_tokenizer
from anchorlm.train.posttrain import posttrain
from anchorlm.train.pretrain import pretrain

MODEL_SPEC = "a model dir, a .gguf file, 'smollm2' (packaged) or a hub id"
REUSE_CELLS = (
    "reuse finished cells (models, samples, scores) made by other code (another commit, uncommitted "
    "changes or other torch/transformers/peft versions) or in another precision (precision: auto on "
    "a machine with or without bf16 units); the results name every such cell"
)


def _parser() -> argparse.ArgumentParser:

    p = argparse.ArgumentParser(
        prog="anchorlm", description="Annotation-anchored training of language models."
    )
    p.add_argument("--version", action="version", version=f"anchorlm {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name, help_):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--config", help="YAML recipe: a file, or a shipped one by name (demo, smoke, ...)")
        s.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set pretrain.token_budget=200000",
        )
        return s

    s = cmd("demo", "run the whole pipeline on the bundled corpus and print the table")
    s.add_argument("--out", help="output directory (default: the config's out_dir)")
    s.add_argument(
        "--reuse-dir",
        action="store_true",
        help="write into an existing non-empty directory that anchorlm did not make (its files may be "
        "overwritten or taken as stage outputs)",
    )
    s.add_argument("--reuse-cells", action="store_true", help=REUSE_CELLS)
    s = cmd("annotate", "annotate a corpus, chunk by chunk (resumable)")
    s.add_argument("--corpus", help="corpus file, datasets dir, or dir/glob of shards (default: corpus.path)")
    s.add_argument("--num-proc", type=int, help="sharded corpus: shards at once (default: annotate.num_proc)")
    s.add_argument("--out", required=True)
    s = cmd("tokenizer", "train the BPE tokenizer on an annotated corpus")
    s.add_argument("--annotated", required=True, help="output dir of `anchorlm annotate`")
    s.add_argument("--out", required=True)
    s = cmd("tokenize", "pack an annotated corpus into training blocks")
    s.add_argument("--annotated", required=True)
    s.add_argument("--tokenizer", required=True, help=f"our tokenizer's dir, or a model: {MODEL_SPEC}")
    s.add_argument("--variant", choices=["plain", "annotated"], required=True)
    s.add_argument("--num-proc", type=int, default=1, help="sharded corpus: shards tokenised at once")
    s.add_argument("--out", required=True)
    s = cmd("pretrain", "pretrain (or continue) a causal LM on packed blocks (resumable)")
    s.add_argument("--data", required=True, help="output dir of `anchorlm tokenize`")
    s.add_argument("--tokenizer", help="tokenizer dir (default: the --init-from model's)")
    s.add_argument("--init-from", help=f"continue this model instead of a fresh one: {MODEL_SPEC}")
    s.add_argument("--out", required=True)
    s = cmd("sft-data", "build the demo's narrow SFT data and held-out prompts")
    s.add_argument("--annotated", required=True)
    s.add_argument("--out", required=True)
    s = cmd("posttrain", "post-train with `sft` or `anchored` masking (resumable)")
    s.add_argument("--model", required=True, help=MODEL_SPEC)
    s.add_argument("--data", required=True, help="JSONL of {instruction, response, tags}")
    s.add_argument("--method", choices=["sft", "anchored"])
    s.add_argument("--out", required=True)
    s = cmd("export-trl", "write SFT data for TRL's SFTTrainer, masked as `posttrain.method` masks it")
    s.add_argument("--model", required=True, help=f"whose tokenizer renders the prompts: {MODEL_SPEC}")
    s.add_argument("--data", required=True, help="JSONL of {instruction, response, tags}")
    s.add_argument("--method", choices=["sft", "anchored"])
    s.add_argument("--form", choices=["prompt-completion", "labels"], default="prompt-completion")
    s.add_argument("--out", required=True, help="JSONL file to write")
    s = cmd("sample", "draw N samples per prompt, plain or anchored")
    s.add_argument("--model", required=True, help=MODEL_SPEC)
    s.add_argument(
        "--prompts", required=True, help="JSONL of {id, prompt}, or a shipped set by name (noveltybench)"
    )
    s.add_argument("--anchored", action="store_true", help="the model writes its annotation first")
    s.add_argument(
        "--force-topics",
        help="anchor fidelity: comma-separated topics; each prompt is sampled once per topic with its "
        "annotation starting topic:<t> (sample.forced_samples each; implies --anchored)",
    )
    s.add_argument("--out", required=True)
    s = cmd("evaluate", "diversity and quality of sample files, and the summary figures")
    s.add_argument("--samples", nargs="+", required=True, metavar="VARIANT=FILE")
    s.add_argument("--prompts", help="the prompt file sampled: every variant must cover exactly its prompts")
    s.add_argument(
        "--forced",
        nargs="+",
        default=[],
        metavar="VARIANT=FILE",
        help="forced-plan samples of anchored variants (sample --force-topics): anchor fidelity",
    )
    s.add_argument("--out", required=True)
    s = cmd("report", "write results.json, report.md and plots from evaluate's JSON")
    s.add_argument("--results", required=True)
    s.add_argument("--out", required=True)
    s = cmd("serve", "serve a model behind an OpenAI-compatible API (anchored models: annotations apart)")
    s.add_argument("--model", required=True, help=MODEL_SPEC)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request")
    s.add_argument("--name", help="the model id clients ask for (default: the model's directory name)")
    s.add_argument("--max-batch", type=int, default=64, help="rows decoded at once, over all requests")
    s.add_argument("--max-queue", type=int, default=256, help="choices waiting at most; past it: 429")
    s.add_argument("--backend", choices=["anchorlm", "vllm"], default="anchorlm",
                   help="anchorlm's decode loop, or vLLM's engine where vLLM is installed")  # fmt: skip
    s.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a vLLM engine argument, with --backend vllm (dtype=float32, enforce_eager=true)")  # fmt: skip
    s = cmd("noveltybench", "sample NoveltyBench's prompts from an OpenAI-compatible endpoint")
    s.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--model", required=True, help="the model id the endpoint serves")
    s.add_argument("--api-key", default="EMPTY")
    s.add_argument("--prompts", default="noveltybench", help="prompt set or JSONL of {id, prompt}")
    s.add_argument("--n", type=int, default=10, help="generations per prompt (NoveltyBench: 10)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    s.add_argument("--out", required=True, help="generations.jsonl: {id, prompt, model, generations}")
    s = cmd("reproduce", "run the paper's study (scaling, ablations, entropy, frontier); resumable")
    s.add_argument("--out", help="cell cache directory (default: the config's out_dir)")
    s.add_argument("--docs", help="where results.md/json and plots go (default: the config's docs_dir)")
    s.add_argument("--reuse-cells", action="store_true", help=REUSE_CELLS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if args.cmd in ("demo", "reproduce") and not args.config:
        args.config = args.cmd if args.cmd == "reproduce" else "demo"
    try:
        if args.cmd == "reproduce":
            cfg = load_study_config(args.config, args.set)
        else:
            cfg = load_config(args.config, args.set)
    except (ValueError, OSError) as e:
        print(f"anchorlm: {e}", file=sys.stderr)
        return 2
    try:
        for flag in ("out", "docs"):
            if getattr(args, flag, None) is not None:
                check_out_dir(getattr(args, flag), f"--{flag}")
        return _run(args, cfg) or 0
    except (ValueError, RuntimeError, OSError) as e:  # bad input, a busy or unwritable output, a full disk
        print(f"anchorlm {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nanchorlm {args.cmd}: interrupted; finished work is kept: run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def _run(args, cfg) -> int | None:
    c = args.cmd
    if c == "demo":
        if args.out:
            cfg.out_dir = args.out
        run_demo(cfg, reuse_dir=args.reuse_dir, reuse_other_code=args.reuse_cells)
    elif c == "reproduce":
        if args.out:
            cfg.out_dir = args.out
        if args.docs:
            cfg.docs_dir = args.docs
        run_study(cfg, reuse_other_code=args.reuse_cells)
    elif c == "serve":
        from anchorlm.serve.app import serve  # fastapi and uvicorn: the `serve` extra

        serve(args.model, args.host, args.port, args.api_key, args.name, cfg.sample.precision,
              args.max_batch, args.max_queue, args.backend, args.vllm_arg)  # fmt: skip
    elif c == "noveltybench":
        from anchorlm.serve.client import noveltybench  # the openai package: the `serve` extra

        n = noveltybench(args.base_url, args.model, args.api_key, read_prompts(args.prompts), args.n,
                         args.temperature, args.max_tokens, args.concurrency, args.out)  # fmt: skip
        print(f"wrote {n} prompts' generations to {args.out}")
    elif c == "annotate":
        if args.corpus:
            cfg.corpus.path = args.corpus
        if args.num_proc:
            cfg.annotate.num_proc = args.num_proc
        print(annotate_corpus(cfg.corpus, cfg.annotate, args.out)["counts"])
    elif c == "tokenizer":
        train_tokenizer(iter_annotated(args.annotated), cfg.tokenizer, args.out)
    elif c == "tokenize":
        p = cfg.pretrain
        m = tokenize_corpus(args.annotated, args.tokenizer, args.variant == "annotated", p.seq_len, args.out,
                            p.seed, p.annotation_dropout, args.num_proc)  # fmt: skip
        print(m["counts"])
    elif c == "pretrain":
        if args.init_from:
            cfg.pretrain.init_from = args.init_from
        print(pretrain(cfg.pretrain, args.data, args.tokenizer, args.out)["counts"])
    elif c == "sft-data":
        print(build_sft_data(cfg.corpus, cfg.annotate, args.annotated, cfg.sft_data, args.out)["counts"])
    elif c == "posttrain":
        if args.method:
            cfg.posttrain.method = args.method
        print(
            posttrain(cfg.posttrain, args.model, read_jsonl(args.data), args.out, where=args.data)["counts"]
        )
    elif c == "export-trl":
        if args.method:
            cfg.posttrain.method = args.method
        n = export_trl(load_tokenizer(args.model), read_jsonl(args.data), cfg.posttrain, args.form, args.out)
        print(f"wrote {n} {args.form} rows ({cfg.posttrain.method}) to {args.out}")
    elif c == "sample":
        prompts = read_prompts(args.prompts)
        if args.force_topics is not None:
            prompts = forced_prompts(prompts, forced_topic_list(args.force_topics))
            cfg.sample.n_samples = cfg.sample.forced_samples
        rows = sample(
            cfg.sample, args.model, prompts, args.out, args.anchored or args.force_topics is not None
        )
        print(f"wrote {len(rows)} samples to {args.out}")
    elif c == "evaluate":
        samples = _pairs(args.samples, "--samples")
        forced = _pairs(args.forced, "--forced")
        prompts = read_prompts(args.prompts) if args.prompts else None
        res = evaluate(cfg.evaluate, cfg.sft_data, cfg.corpus, samples, args.out, prompts, forced)
        print(table(res))
        if anchoring_table(res):
            print("\n" + anchoring_table(res))
    elif c == "report":
        print(write_report(Path(args.results), args.out))
    return None


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    """VARIANT=FILE arguments as a mapping; a variant named twice is an error, not a silent choice."""
    out: dict[str, str] = {}
    for s in items:
        if "=" not in s:
            raise ValueError(f"{flag} takes VARIANT=FILE, got {s!r}")
        k, v = s.split("=", 1)
        if k in out:
            raise ValueError(f"{flag}: variant {k!r} given twice ({out[k]} and {v})")
        out[k] = v
    return out


if __name__ == "__main__":
    sys.exit(main())
