"""Build a small Llama-style causal LM from the config, or continue from any model spec."""

from __future__ import annotations

from anchorlm.config import ModelConfig
from anchorlm.models import load_model


def build_model(cfg: ModelConfig, tokenizer, init_from: str = "", add_tokens: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    if init_from:
        model, tok = load_model(
            init_from, tokens="annotations" if add_tokens else "turns"
        )  # a dir, GGUF file, 'smollm2' or hub id
        if tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"pretrain.init_from={init_from!r} has another vocabulary than the tokenizer the data "
                "was tokenized with; tokenize with `--tokenizer` set to that model"
            )
        return model
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def non_embedding_params(model) -> int:
    emb = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - emb
