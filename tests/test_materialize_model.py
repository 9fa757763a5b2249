"""scripts/materialize_model.py: the parts that run without the real GGUF (which `make model`
materialises before the real-model tests)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from common.errors import InputError
from scripts import materialize_model as mm


def _write_gguf(path: Path, tokens: list[str]) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(tokens)
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_one_gguf_parse_shares_a_reader_per_file_and_restores_the_class(tmp_path: Path) -> None:
    a = _write_gguf(tmp_path / "a.gguf", ["<pad>", "x", "y"])
    b = _write_gguf(tmp_path / "b.gguf", ["<pad>", "z"])
    original = gguf.GGUFReader
    with mm.one_gguf_parse():
        first = gguf.GGUFReader(str(a))
        assert gguf.GGUFReader(a) is first  # a Path or a str of the same file: parsed once
        assert gguf.GGUFReader(str(b)) is not first
        # what a loader reads from the shared reader is the file's content
        tokens = [bytes(t).decode() for t in mm.gguf_field(first, "tokenizer.ggml.tokens")]
        assert tokens == ["<pad>", "x", "y"]
        (tensor,) = first.tensors
        assert np.array_equal(np.asarray(tensor.data).reshape(3, 4), np.arange(12).reshape(3, 4))
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(str(a)) is not first  # outside the block every call parses anew


def test_one_gguf_parse_restores_the_class_when_the_load_fails(tmp_path: Path) -> None:
    original = gguf.GGUFReader
    with pytest.raises(ValueError), mm.one_gguf_parse():
        gguf.GGUFReader(_write_gguf(tmp_path / "a.gguf", ["a"]))
        raise ValueError("the load failed")
    assert gguf.GGUFReader is original


def test_a_gguf_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "a.gguf", ["a"])
    with pytest.raises(InputError, match="a.gguf"):
        mm.check_sha256(path, "0" * 64)
