"""Shared pytest fixtures for dbdist's tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vocab_path():
    """The CLIP BPE vocabulary, kept outside the repo in ../shared/data/."""
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    path = shared / "data" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.fail(f"CLIP BPE vocabulary not found at {path}; tests need "
                    "bpe_simple_vocab_16e6.txt.gz in <repo>/../shared/data/.")
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(vocab_path):
    from dbdist.text.tokenizer import ClipTokenizer

    return ClipTokenizer(vocab_path)
