"""Stage 2: train a byte-level BPE tokenizer on the annotated corpus, with the annotation tokens.

Saved in Hugging Face format (`PreTrainedTokenizerFast.save_pretrained`), so
`AutoTokenizer.from_pretrained(dir)` loads it.
"""

from __future__ import annotations

from pathlib import Path

from anchorlm.config import TokenizerConfig, to_dict
from anchorlm.format import EOS, PAD, SPECIAL_TOKENS, sanitize
from anchorlm.manifest import write_manifest


def _texts(docs, counter: list):
    for d in docs:
        counter[0] += 1
        for c in d["chunks"]:
            yield sanitize(c["text"])
            if c["tags"]:
                yield " ".join(c["tags"])


def train_tokenizer(docs, cfg: TokenizerConfig, out_dir: str | Path):
    """Train on annotated documents, a list or a stream (chunk texts and their tags); returns the
    HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    n_docs = [0]
    tok.train_from_iterator(_texts(docs, n_docs), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS, PAD)],
    )
    out = Path(out_dir)
    hf.save_pretrained(out)
    write_manifest(out, "tokenizer", to_dict(cfg), {"vocab_size": len(hf), "documents": n_docs[0]})
    return hf
