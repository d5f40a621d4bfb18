"""Byte-level BPE encoding: the GPT-2 pre-tokenizer, merge order, and equality with the Hugging Face Whisper
tokenizers of the real checkpoints on many strings."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wavq.runtime.bpe import BPEError, ByteLevelBPEEncoder, pre_tokenize
from wavq.runtime.tokenizer import ByteLevelBPEDecoder, bytes_to_unicode

os.environ.setdefault("HF_HUB_OFFLINE", "1")

B = bytes_to_unicode()


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hello world", ["Hello", " world"]),
        (" leading space", [" leading", " space"]),
        ("don't they'll", ["don", "'t", " they", "'ll"]),
        ("DON'T", ["DON", "'", "T"]),  # the contractions are lower-case only
        ("a  b", ["a", " ", " b"]),  # a run of spaces leaves its last one to the next word
        ("a \n\nb", ["a", " \n", "\n", "b"]),
        ("end   ", ["end", "   "]),  # trailing spaces stay one piece
        ("x\ny", ["x", "\n", "y"]),
        ("3.14 is 42!", ["3", ".", "14", " is", " 42", "!"]),
        (' ..."quoted"', [' ..."', "quoted", '"']),
        ("naïve café 北京 ½", ["naïve", " café", " 北京", " ½"]),
    ],
)
def test_pre_tokenize_follows_gpt2_pattern(text, pieces):
    assert pre_tokenize(text) == pieces
    assert "".join(pieces) == text


def _toy_encoder(merges):
    alphabet = [B[b] for b in range(256)]
    merged = [m.replace(" ", "") for m in merges]
    tokens = alphabet + merged + ["<|endoftext|>"]
    return ByteLevelBPEEncoder(tokens, merges, len(tokens) - 1), tokens


def test_merges_apply_lowest_rank_first():
    # 'b c' outranks 'a b', so "abc" -> a + bc, not ab + c
    enc, tokens = _toy_encoder(["b c", "a b", "a bc"])
    assert [tokens[i] for i in enc.encode("abc")] == ["abc"]
    enc, tokens = _toy_encoder(["b c", "a b"])
    assert [tokens[i] for i in enc.encode("abc")] == ["a", "bc"]
    assert [tokens[i] for i in enc.encode("abab")] == ["ab", "ab"]  # every occurrence of the best pair merges
    assert [tokens[i] for i in enc.encode(" é")] == [B[0x20], B[0xC3], B[0xA9]]  # bytes of é, no merges


def test_encode_round_trips_through_the_decoder():
    enc, tokens = _toy_encoder([f"{B[0x20]} t", "h e", f"{B[0x20]}t he"])
    dec = ByteLevelBPEDecoder(tokens, len(tokens) - 1)
    text = "the theme, über 🙂\n"
    assert dec.decode(enc.encode(text)) == text


def test_missing_merges_and_bad_rules_are_clear_errors():
    meta = {"type": "byte-level-bpe", "tokens": ["a"], "first_special_id": 1}
    with pytest.raises(BPEError, match="no BPE merges"):
        ByteLevelBPEEncoder.from_meta(meta)
    with pytest.raises(BPEError, match="not 'left right'"):
        ByteLevelBPEEncoder(["a"], ["ab"], 1)
    with pytest.raises(BPEError, match="not in the vocabulary"):
        ByteLevelBPEEncoder([B[ord("a")]], [], 1).encode("b")


# -- against the real tokenizers ----------------------------------------------------------------------------------

MODELS = ("openai/whisper-tiny.en", "openai/whisper-base")

SENTENCES = [
    "",
    " And so my fellow Americans, ask not what your country can do for you.",
    "He said: \"It's 3:45 p.m., isn't it?\" — she'd've known!",
    "MR. QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES",
    "  two leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\n\n  indented",
    "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어, عربى, हिन्दी",
    "emoji 🙂👍🏽 and symbols ©®™ ½ ² Ⅷ ١٢٣ ０１２",
    "<|endoftext|> and <|notimestamps|> typed as text",
    "Numbers 1234567890 12,345.67 -3e-5 #hashtag @user http://x.org/a?b=c&d=e",
    "'s 't 're 've 'm 'll 'd 'S 'T ''quoted''",
    " \u00a0non-breaking\u2003em space\u3000ideographic",
    "combining e\u0301 and a\u0308 marks",
]


def _reference(model_id):
    transformers = pytest.importorskip("transformers")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_id)
    except OSError:
        pytest.skip(f"{model_id} is not in the Hugging Face cache")
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [str(t) for t in tok.convert_ids_to_tokens(list(range(len(tok))))]
    enc = ByteLevelBPEEncoder(tokens, merges, tok.convert_tokens_to_ids("<|endoftext|>"))
    return tok, enc


@pytest.fixture(scope="module", params=MODELS)
def tokenizers(request):
    return _reference(request.param)


@pytest.mark.real
def test_sentences_encode_like_transformers(tokenizers):
    tok, enc = tokenizers
    for text in SENTENCES:
        ref = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert enc.encode(text) == ref, text


TEXT = st.lists(
    st.one_of(
        st.sampled_from(list(" \t\n'\".,;:!?-()[]{}0123456789")),
        st.characters(codec="utf-8", exclude_categories=("Cs", "Co", "Cn")),
        st.sampled_from(["'s", "'ll", " the", " The", "  ", "\u00a0", "ing", " 12"]),
    ),
    max_size=40,
).map("".join)


@pytest.mark.real
@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_random_text_encodes_like_transformers(text):
    tok, enc = _cached_reference("openai/whisper-base")
    assert enc.encode(text) == tok.encode(text, add_special_tokens=False, split_special_tokens=True)


_CACHE: dict = {}


def _cached_reference(model_id):
    if model_id not in _CACHE:
        _CACHE[model_id] = _reference(model_id)
    return _CACHE[model_id]
