from transformers import AutoTokenizer

from anchorlm import format as F
from anchorlm.models import load_tokenizer


def test_special_tokens_are_single_ids_and_survive_save_and_load(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = [tok.convert_tokens_to_ids(t) for t in F.SPECIAL_TOKENS]
    assert len(set(ids)) == len(F.SPECIAL_TOKENS) and tok.unk_token_id not in ids
    assert tok.eos_token == F.EOS and tok.pad_token == F.PAD
    assert load_tokenizer(tmp_path).get_vocab() == tiny_tokenizer.get_vocab()


def test_byte_level_round_trip_of_any_text(tiny_tokenizer):
    for text in ["Plain words.", "tabs\tand\nnewlines", "unicode: café ∑ 日本", "  leading spaces"]:
        assert tiny_tokenizer.decode(F.encode_text(tiny_tokenizer, text)) == text
