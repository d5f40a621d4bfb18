"""Byte-level BPE decoding (GPT-2 / Whisper vocabularies) from the token strings stored in the model file.

Decoding needs no merges: each token string is a sequence of characters from GPT-2's byte-to-unicode
alphabet, one character per byte, so text = utf-8 decode of the concatenated bytes. Special tokens
(end of text, task, language, timestamp tokens: every id from `first_special_id` up) are not text and are
dropped, as transformers' `decode(..., skip_special_tokens=True)` does (it removes timestamps by pattern).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


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
