"""Token ids -> text for both model families, from the vocabularies stored in the model file.

`ByteLevelBPEDecoder`: byte-level BPE (GPT-2 / Whisper vocabularies). `CTCDecoder`: Wav2Vec2-CTC character
vocabularies, greedy CTC collapse with word offsets.


Decoding needs no merges: each token string is a sequence of characters from GPT-2's byte-to-unicode
alphabet, one character per byte, so text = utf-8 decode of the concatenated bytes. Special tokens
(end of text, task, language, timestamp tokens: every id from `first_special_id` up) are not text and are
dropped, as transformers' `decode(..., skip_special_tokens=True)` does (it removes timestamps by pattern).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)  # unprintable bytes move above Latin-1
            n += 1
    return dict(zip(keep, map(chr, chars)))


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}


class ByteLevelBPEDecoder:
    def __init__(self, tokens: Sequence[str], first_special_id: int, special: Mapping[str, int] | None = None):
        self.tokens = list(tokens)
        self.first_special_id = int(first_special_id)
        self.special = dict(special or {})
        self._bytes: dict[int, bytes] = {}

    @classmethod
    def from_meta(cls, meta: Mapping) -> ByteLevelBPEDecoder:
        kind = meta.get("type")
        if kind != "byte-level-bpe":
            raise ValueError(f"tokenizer type {kind!r} is not supported (only byte-level-bpe)")
        return cls(meta["tokens"], meta["first_special_id"], meta.get("special"))

    def __len__(self) -> int:
        return len(self.tokens)

    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes.get(token_id)
        if b is None:
            text = self.tokens[token_id] if 0 <= token_id < len(self.tokens) else ""
            # characters outside the byte alphabet (none in released vocabularies) pass through as utf-8
            b = b"".join(bytes([_BYTE_OF_CHAR[c]]) if c in _BYTE_OF_CHAR else c.encode("utf-8") for c in text)
            self._bytes[token_id] = b
        return b

    def is_text(self, token_id: int) -> bool:
        return 0 <= token_id < min(self.first_special_id, len(self.tokens))

    def decode(self, token_ids: Iterable[int]) -> str:
        """Text of the non-special tokens; invalid utf-8 (a character split across tokens) becomes U+FFFD."""
        data = b"".join(self.token_bytes(int(t)) for t in token_ids if self.is_text(int(t)))
        return data.decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int:
        """Id of a token by its stored string (special tokens such as '<|en|>')."""
        if not hasattr(self, "_index"):
            self._index = {t: i for i, t in enumerate(self.tokens)}
        try:
            return self._index[text]
        except KeyError:
            raise KeyError(f"no token {text!r} in the vocabulary") from None


class CTCDecoder:
    """Greedy CTC decoding as Wav2Vec2CTCTokenizer.decode(ids) with its defaults: collapse repeated tokens, drop
    the pad (blank) token, word delimiter -> `replace_word_delimiter_char`, join, strip."""

    def __init__(self, tok: Mapping[str, Any]):
        self.vocab = [str(t) for t in tok["vocab"]]
        self.pad_token = tok["pad_token"]
        self.word_delimiter = tok.get("word_delimiter_token")
        self.replace_char = tok.get("replace_word_delimiter_char", " ")
        self.do_lower_case = bool(tok.get("do_lower_case", False))
        self.clean_up = bool(tok.get("clean_up_tokenization_spaces", False))
        self.unk_token = tok.get("unk_token", "<unk>")
        # Ids are grouped by the token string they decode to (several ids may map to the same string, e.g. <unk>).
        strings, self._canon = np.unique(
            np.array(self.vocab + [self.unk_token], dtype=object).astype(str), return_inverse=True
        )
        self._strings = strings

    def is_blank(self, ids: np.ndarray) -> np.ndarray:
        """Which ids are the CTC blank (pad token), as a boolean array."""
        ids = np.asarray(ids, dtype=np.int64)
        valid = (ids >= 0) & (ids < len(self.vocab))
        return self._strings[self._canon[np.where(valid, ids, len(self.vocab))]] == self.pad_token

    def decode(self, ids: np.ndarray) -> tuple[str, list[tuple[str, int, int]]]:
        """(text, [(word, start, end)]) for argmax ids (T,): a word spans positions [start, end) of `ids`, from its
        first non-blank token to the end of its last one (Wav2Vec2CTCTokenizer's word offsets)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return "", []
        # ids outside the vocabulary decode to the unknown token, as convert_ids_to_tokens does
        canon = self._canon[np.where((ids >= 0) & (ids < len(self.vocab)), ids, len(self.vocab))]
        starts = np.flatnonzero(np.concatenate(([True], canon[1:] != canon[:-1])))  # first frame of each run
        ends = np.append(starts[1:], canon.shape[0])
        tokens = self._strings[canon[starts]]
        keep = tokens != self.pad_token
        tokens, starts, ends = tokens[keep], starts[keep], ends[keep]
        chars = [self.replace_char if tok == self.word_delimiter else str(tok) for tok in tokens]
        text = "".join(chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up:
            text = _clean_up_tokenization(text)
        return text, _word_offsets(chars, starts, ends, self.replace_char, self.do_lower_case)


def _word_offsets(
    chars: list[str], starts: np.ndarray, ends: np.ndarray, space: str, lower: bool
) -> list[tuple[str, int, int]]:
    """Wav2Vec2CTCTokenizer._get_word_offsets: runs of non-delimiter characters with their frame span."""
    words = []
    word, w_start, w_end, in_word = "", 0, 0, False
    for ch, s, e in zip(chars, starts, ends):
        if ch == space:
            if in_word:
                words.append((word, w_start, w_end))
            in_word = False
        elif in_word:
            word, w_end = word + ch, int(e)
        else:
            word, w_start, w_end, in_word = ch, int(s), int(e), True
    if in_word:
        words.append((word, w_start, w_end))
    return [(w.lower() if lower else w, s, e) for w, s, e in words]


def _clean_up_tokenization(text: str) -> str:
    """PreTrainedTokenizerBase.clean_up_tokenization (used when the tokenizer sets clean_up_tokenization_spaces)."""
    for a, b in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(a, b)
    return text
