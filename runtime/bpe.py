"""Byte-level BPE encoding (GPT-2 / Whisper vocabularies) from the token strings and merges stored in the model file.

Text -> pre-tokens (GPT-2's split pattern) -> utf-8 bytes of each pre-token as characters of GPT-2's byte alphabet
-> merges applied lowest rank first -> token ids. Equal to the Hugging Face tokenizer's `encode(text,
add_special_tokens=False)` for plain text; special-token spellings inside the text (`<|endoftext|>`) are encoded as
ordinary text, as openai-whisper's `tokenizer.encode` does for prompts.

The split pattern is GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`.
The standard library's `re` has no \\p{L} / \\p{N} classes, so the pattern is a small scanner over Unicode general
categories (letters L*, numbers N*) and the Unicode White_Space property, alternative by alternative.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

from .tokenizer import bytes_to_unicode

CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # case-sensitive, as GPT-2's pattern
# Unicode's White_Space property (what \s means in the regex engines the reference tokenizers use)
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_BYTE_CHAR = bytes_to_unicode()


class BPEError(ValueError):
    """The stored vocabulary cannot encode text (no merges stored, or a merge result missing from it)."""


def _kind(c: str) -> str:
    """'s' white space, 'L' letter, 'N' number, 'o' anything else."""
    if c in WHITE_SPACE:
        return "s"
    cat = unicodedata.category(c)[0]
    return cat if cat in "LN" else "o"


def _run(text: str, i: int, kind: str) -> int:
    """End of the run of characters of `kind` starting at i."""
    n = len(text)
    while i < n and _kind(text[i]) == kind:
        i += 1
    return i


def pre_tokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens: the pieces BPE merges within (never across)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            hit = next((m for m in CONTRACTIONS if text.startswith(m, i)), None)
            if hit:
                out.append(hit)
                i += len(hit)
                continue
        # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional leading space, then a run of one kind
        j = i + 1 if c == " " and i + 1 < n and _kind(text[i + 1]) != "s" else i
        kind = _kind(text[j])
        if kind != "s":
            end = _run(text, j, kind)
            out.append(text[i:end])
            i = end
            continue
        # '\s+(?!\S)' keeps the last space of a run for the word that follows; '\s+' takes a lone one
        end = _run(text, i, "s")
        if end < n and end - i > 1:
            end -= 1
        out.append(text[i:end])
        i = end
    return out


class ByteLevelBPEEncoder:
    """Text -> token ids with GPT-2's byte-level BPE. `tokens` are the stored token strings by id (the
    byte alphabet), `merges` the merge rules "left right" in rank order (merges.txt without its header)."""

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], first_special_id: int):
        limit = min(int(first_special_id), len(tokens))
        self._ids = {t: i for i, t in enumerate(tokens[:limit])}  # special tokens never come out of BPE
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, rule in enumerate(merges):
            left, sep, right = rule.partition(" ")
            if not sep or not left or not right:
                raise BPEError(f"merge rule {rank} {rule!r} is not 'left right'")
            self._ranks.setdefault((left, right), rank)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_meta(cls, meta: Mapping) -> ByteLevelBPEEncoder:
        if meta.get("type") != "byte-level-bpe":
            raise BPEError(f"tokenizer type {meta.get('type')!r} is not supported (only byte-level-bpe)")
        if not meta.get("merges"):
            raise BPEError("the model file stores no BPE merges, so text cannot be encoded (re-convert the model)")
        return cls(meta["tokens"], meta["merges"], meta["first_special_id"])

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in pre_tokenize(text):
            cached = self._cache.get(piece)
            if cached is None:
                cached = self._cache[piece] = self._bpe(piece)
            ids.extend(cached)
        return ids

    def _bpe(self, piece: str) -> list[int]:
        word = [_BYTE_CHAR[b] for b in piece.encode("utf-8")]
        ranks = self._ranks
        while len(word) > 1:
            pairs = [(ranks.get(p), k) for k, p in enumerate(zip(word, word[1:]))]
            best = min((r for r, _ in pairs if r is not None), default=None)
            if best is None:
                break
            merged: list[str] = []
            k = 0
            while k < len(word):  # merge every occurrence of the best pair, left to right
                if k + 1 < len(word) and ranks.get((word[k], word[k + 1])) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        try:
            return [self._ids[w] for w in word]
        except KeyError as e:
            raise BPEError(f"BPE produced {e.args[0]!r}, which is not in the vocabulary") from None
