"""Fixtures several test files share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# LibriSpeech subsets (dev-clean, train-clean-100, ...) live beside the checkout, not in it
LIBRISPEECH = Path(__file__).resolve().parent.parent.parent / "shared" / "librispeech"


@pytest.fixture(scope="session")
def librispeech() -> Callable[[str], str]:
    """The folder of a LibriSpeech subset in ../shared/librispeech; skips the test when it is not there."""

    def subset(name: str) -> str:
        path = LIBRISPEECH / name
        if not path.is_dir():
            pytest.skip(f"LibriSpeech {name} is not in ../shared/librispeech")
        return str(path)

    return subset
