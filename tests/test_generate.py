"""evals.generate on tiny random Gemma 3 models: determinism, batching, stops, resume, loud failures."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from common.errors import InputError
from common.jsonl import read_jsonl
from evals import generate as gen
from evals import load
from evals.generate import DecodeSettings, generate_completions
from tests.reference_decode import transformers_generate

QUESTIONS = ["2+3?", "Add 7 and 11.", "Hi", "What is 6 times 7, then minus 2?", "x"]


def _prompts(tok) -> list[str]:
    return [gen.build_prompt(tok, q, "plain") for q in QUESTIONS]


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    """Copy a tiny model dir and change its weights with ``edit(state_dict)``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    f = next(dst.glob("*.safetensors"))
    state = load_file(f)
    edit(state)
    save_file(state, f, metadata={"format": "pt"})
    (dst / "weights.sha256").unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def torch_tiny(tiny_gemma3):
    from trainers_torch.model import load_model

    return load_model(tiny_gemma3)


@pytest.fixture(scope="module")
def stopping_gemma3(tiny_gemma3, tmp_path_factory) -> Path:
    """The tiny model with <end_of_turn> / <eos> embeddings aligned to tokens it likes to emit.

    Tied embeddings: a stop token's logit becomes a multiple of a frequent token's, so some
    prompts stop at end of turn, some at eos, and some run to max_new_tokens.
    """

    def edit(state):
        emb = state["model.embed_tokens.weight"]
        emb[5] = 3.0 * emb[100]  # <end_of_turn> where the model would say token 100
        emb[1] = 3.0 * emb[34]  # <eos> where it would say token 34

    return _edit_weights(tiny_gemma3, tmp_path_factory.mktemp("stop") / "m", edit)


@pytest.fixture(scope="module")
def silent_gemma3(tiny_gemma3, tmp_path_factory) -> Path:
    """A model whose final norm zeroes the hidden state: every logit ties, it emits only <pad>."""

    def edit(state):
        state["model.norm.weight"].fill_(-1.0)  # Gemma's RMSNorm scales by (1 + weight)

    return _edit_weights(tiny_gemma3, tmp_path_factory.mktemp("silent") / "m", edit)


def test_greedy_is_deterministic_and_batching_does_not_change_it(torch_tiny):
    model, tok = torch_tiny
    prompts = _prompts(tok)
    settings = DecodeSettings(max_new_tokens=12)
    batched = generate_completions(model, tok, prompts, settings, batch_size=4, progress=False)
    again = generate_completions(model, tok, prompts, settings, batch_size=4, progress=False)
    single = generate_completions(model, tok, prompts, settings, batch_size=1, progress=False)
    assert batched == again == single
    assert [r["prompt_tokens"] for r in batched] == [len(tok(p).input_ids) for p in prompts]
    for r in batched:
        assert set(r) == {"completion", "prompt_tokens", "completion_tokens", "stop_reason"}
        assert r["stop_reason"] == "max_new_tokens" and r["completion_tokens"] == 12


def test_sampling_follows_the_seed(torch_tiny):
    model, tok = torch_tiny
    prompts = _prompts(tok)[:3]
    hot = DecodeSettings(max_new_tokens=10, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    a = generate_completions(model, tok, prompts, hot, batch_size=3, progress=False)
    tok.padding_side = "right"  # a trainer's setting survives generation
    b = generate_completions(model, tok, prompts, hot, batch_size=3, progress=False)
    assert a == b and tok.padding_side == "right"
    tok.padding_side = "left"


def test_stop_reasons_and_end_of_turn_is_stripped(stopping_gemma3):
    from trainers_torch.model import load_model

    model, tok = load_model(stopping_gemma3)
    prompts = [gen.build_prompt(tok, q, "plain") for q in ["Hi", "2+3?", "x", "Add 7 and 11.", "zzz", "Q?"]]
    out = generate_completions(
        model, tok, prompts, DecodeSettings(max_new_tokens=20), batch_size=3, progress=False
    )
    reasons = {r["stop_reason"] for r in out}
    assert "end_of_turn" in reasons, out
    for r in out:
        assert "<end_of_turn>" not in r["completion"] and "<eos>" not in r["completion"]
        if r["stop_reason"] == "max_new_tokens":
            assert r["completion_tokens"] == 20
        else:
            assert r["completion_tokens"] < 20 or r["completion_tokens"] == 20
    single = generate_completions(
        model, tok, prompts, DecodeSettings(max_new_tokens=20), batch_size=1, progress=False
    )
    assert single == out
    no_eot = generate_completions(
        model,
        tok,
        prompts,
        DecodeSettings(max_new_tokens=20, stop_at_end_of_turn=False),
        batch_size=3,
        progress=False,
    )
    assert "end_of_turn" not in {r["stop_reason"] for r in no_eot}


def test_jax_sampler_matches_torch_greedy(stopping_gemma3):
    from trainers_jax.model import load_model as load_jax
    from trainers_torch.model import load_model as load_torch

    tm, tok = load_torch(stopping_gemma3)
    prompts = [gen.build_prompt(tok, q, "plain") for q in ["Hi", "2+3?", "x", "Add 7 and 11.", "zzz"]]
    settings = DecodeSettings(max_new_tokens=16)
    want = generate_completions(tm, tok, prompts, settings, batch_size=2, progress=False)
    jm, _ = load_jax(stopping_gemma3)
    got = generate_completions(jm, tok, prompts, settings, batch_size=2, progress=False)
    assert got == want
    assert len({r["stop_reason"] for r in got}) >= 2


# ----------------------------------------------------------------------------- the CLI


def _dataset(path: Path, n: int = 6) -> Path:
    qs = ["2+3?", "Add 7 and 11.", "Hi there", "6*7-2?", "x", "Halve 10.", "9-4?", "1+1?"]
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "question": qs[i % len(qs)], "answer": str(i)}) + "\n")
    return path


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.path={model}", f"data.path={data}", "data.n=0", "data.prompt=plain",
        "decode.max_new_tokens=6", "batch_size=2", f"out={out}", "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_writes_provenance_and_resumes_after_a_crash(tiny_gemma3, tmp_path, capsys):
    data, out = _dataset(tmp_path / "d.jsonl"), tmp_path / "p" / "predictions.jsonl"
    summary = gen.main(_args(tiny_gemma3, data, out))
    recs = read_jsonl(out)
    assert sorted(r["id"] for r in recs) == [f"q{i}" for i in range(6)] and summary["n_generated_now"] == 6
    r0 = recs[0]
    assert (
        r0["model"]["weights_sha256"]
        and r0["model"]["path"] == str(tiny_gemma3)
        and r0["model"]["kind"] == "hf"
    )
    assert r0["decoding"]["max_new_tokens"] == 6 and r0["decoding"]["temperature"] == 0.0
    assert r0["prompt"].startswith("<start_of_turn>user\n") and r0["stop_reason"] in gen.StopReason.__args__
    assert summary["items_per_second"] > 0

    # A crash: three complete records survive, the fourth was torn mid-write.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:40])
    summary = gen.main(_args(tiny_gemma3, data, out))
    assert summary["n_resumed"] == 3 and summary["n_generated_now"] == 3
    again = read_jsonl(out)
    assert len(again) == 6 and len({r["id"] for r in again}) == 6
    assert again[:3] == [json.loads(line) for line in lines[:3]]  # finished work untouched
    by_id = {r["id"]: r["completion"] for r in recs}
    assert all(by_id[r["id"]] == r["completion"] for r in again)  # greedy: same text after resume
    assert "resuming" in capsys.readouterr().err


def test_resume_refuses_other_decoding_or_other_weights(tiny_gemma3, stopping_gemma3, tmp_path, capsys):
    data, out = _dataset(tmp_path / "d.jsonl", 2), tmp_path / "p.jsonl"
    gen.main(_args(tiny_gemma3, data, out))
    with pytest.raises(SystemExit) as err:
        gen.main(_args(tiny_gemma3, data, out, "decode.max_new_tokens=7"))
    assert err.value.code == 2 and "other decoding settings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        gen.main(_args(stopping_gemma3, data, out))
    assert err.value.code == 2 and "other weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        gen.main(_args(tiny_gemma3, data, out, "model.dtype=bfloat16"))
    assert err.value.code == 2 and "model.dtype='float32'" in capsys.readouterr().err


def test_bad_model_dir_exits_2_with_one_line(tmp_path, capsys):
    data = _dataset(tmp_path / "d.jsonl", 2)
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nope", tmp_path / "empty"):
        with pytest.raises(SystemExit) as err:
            gen.main(_args(path, data, tmp_path / "p.jsonl"))
        msg = capsys.readouterr().err.strip()
        assert err.value.code == 2 and msg.startswith("error: model.path") and "\n" not in msg
    assert not (tmp_path / "p.jsonl").exists()


def test_incomplete_checkpoint_is_refused_not_randomly_initialised(tiny_gemma3, tmp_path):
    broken = _edit_weights(
        tiny_gemma3, tmp_path / "broken", lambda s: s.pop("model.layers.1.mlp.up_proj.weight")
    )
    with pytest.raises(InputError, match="refusing random weights"):
        load.load_for_eval(load.resolve_model(str(broken)))


def test_all_empty_completions_exit_2(silent_gemma3, tmp_path, capsys):
    data, out = _dataset(tmp_path / "d.jsonl", 3), tmp_path / "p.jsonl"
    with pytest.raises(SystemExit) as err:
        gen.main(_args(silent_gemma3, data, out))
    assert err.value.code == 2
    assert "all 3 completions are empty" in capsys.readouterr().err


def test_item_sample_is_seeded_nested_and_in_file_order():
    items = [{"id": i, "question": "q"} for i in range(100)]
    s10, s20 = gen.sample_items(items, 10, seed=1), gen.sample_items(items, 20, seed=1)
    ids10, ids20 = [it["id"] for it in s10], [it["id"] for it in s20]
    assert ids10 == sorted(ids10) and set(ids10) < set(ids20)
    assert ids10 == [it["id"] for it in gen.sample_items(items, 10, seed=1)]
    assert ids10 != [it["id"] for it in gen.sample_items(items, 10, seed=2)]
    assert len(gen.sample_items(items, 0, seed=1)) == 100 == len(gen.sample_items(items, 500, seed=1))


def test_bad_dataset_lines_name_file_line_and_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "a", "question": "q"}\n{"id": "b"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: question"):
        gen.load_items(p)
    p.write_text('{"id": "a", "question": "q"}\n{"id": "a", "question": "q"}\n')
    with pytest.raises(InputError, match=r"d.jsonl:2: id: duplicate"):
        gen.load_items(p)
    p.write_text('{"id": "a", "question": "q", "checks": {"keywordz": []}}\n')
    with pytest.raises(InputError, match=r"d.jsonl:1: checks.keywordz"):
        gen.load_items(p)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    from common.config import load_config

    with pytest.raises(InputError, match="decode.tempreature"):
        load_config(gen.GenerateConfig, "configs/eval/gsm8k_cpu.yaml", ["decode.tempreature=1"])
    with pytest.raises(InputError, match="top_p"):
        load_config(gen.GenerateConfig, "configs/eval/gsm8k_cpu.yaml", ["decode.top_p=0"])
    cfg = load_config(gen.GenerateConfig, "configs/eval/gsm8k_cpu.yaml")
    assert cfg.data.n >= 500 and cfg.decode.greedy
    configs = sorted(Path("configs/eval").glob("*.yaml"))
    assert len(configs) >= 6
    from evals.traces import TracesEvalConfig

    for path in configs:  # every shipped eval config is valid, read by its own script's config class
        load_config(TracesEvalConfig if path.name.startswith("yaml_traces") else gen.GenerateConfig, path)
    assert load_config(gen.GenerateConfig, "configs/eval/gsm8k_gpu.yaml").data.n == 0  # all 1,319 on GPU
    with pytest.raises(InputError, match="make data"):
        gen.load_items("data/built/nothing/test.jsonl")


# ----------------------------------------------------------------------------- model resolution


@pytest.fixture(scope="module")
def trained_run(tiny_gemma3, tmp_path_factory) -> Path:
    from tests.tiny_runs import build_trained_run

    return build_trained_run(tiny_gemma3, tmp_path_factory.mktemp("runs") / "sft-tiny")


def test_run_dir_adapter_and_merged_export_give_the_same_outputs(trained_run, tiny_gemma3, torch_tiny):
    via_merged = load.resolve_model(str(trained_run))
    via_adapter = load.resolve_model(str(trained_run), prefer="adapter")
    assert via_merged.kind == "hf" and via_merged.weights_dir.endswith("merged")
    assert via_adapter.kind == "adapter" and via_adapter.weights_dir == str(tiny_gemma3)
    assert "config.yaml" in via_adapter.source  # the hub id in adapter_config is skipped
    direct = load.resolve_model(str(trained_run / "final"))
    assert direct.kind == "adapter" and direct.weights_dir == str(tiny_gemma3)

    settings = DecodeSettings(max_new_tokens=8)
    outs = []
    for ref in (via_merged, via_adapter):
        model, tok = load.load_for_eval(ref)
        outs.append(generate_completions(model, tok, _prompts(tok), settings, batch_size=5, progress=False))
    assert outs[0] == outs[1]
    base_model, tok = torch_tiny
    base = generate_completions(base_model, tok, _prompts(tok), settings, batch_size=5, progress=False)
    assert base != outs[0]  # the adapter really was applied
    prov = load.model_provenance(via_adapter, "torch", "float32")
    assert (
        prov["adapter_sha256"]
        and prov["fingerprint"] != load.model_provenance(via_merged, "torch", "float32")["fingerprint"]
    )


def test_unusable_dirs_give_clear_errors(tmp_path, tiny_gemma3):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_manifest.json").write_text("{}")
    with pytest.raises(InputError, match="without final/"):
        load.resolve_model(str(run))
    orbax = tmp_path / "ckpt"
    (orbax / "100").mkdir(parents=True)
    (orbax / "100" / "_CHECKPOINT_METADATA").write_text("{}")
    with pytest.raises(
        InputError, match=r"ckpt/100: incomplete Orbax checkpoint \(params/_METADATA missing\)"
    ):
        load.resolve_model(str(orbax))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "hub/only"}))
    with pytest.raises(InputError, match="no local base model found.*hub/only"):
        load.resolve_model(str(adapter))
    assert load.resolve_model(str(adapter), base=str(tiny_gemma3)).weights_dir == str(tiny_gemma3)


def test_return_ids_gives_the_sampled_tokens_up_to_the_stop(stopping_gemma3):
    from trainers_torch.model import load_model

    model, tok = load_model(stopping_gemma3)
    prompts = [gen.build_prompt(tok, q, "plain") for q in ["Hi", "2+3?", "x", "Add 7 and 11.", "zzz", "Q?"]]
    hot = DecodeSettings(max_new_tokens=20, temperature=1.0, seed=5)
    plain = generate_completions(model, tok, prompts, hot, batch_size=3, progress=False)
    with_ids = generate_completions(model, tok, prompts, hot, batch_size=3, progress=False, return_ids=True)
    stops = gen.stop_token_ids(tok, hot)
    for a, b in zip(plain, with_ids, strict=True):
        ids = b.pop("completion_ids")
        assert a == b  # the same samples; ids are only added
        assert len(ids) == b["completion_tokens"]
        if b["stop_reason"] == "max_new_tokens":
            assert not set(ids) & set(stops)
        else:
            assert stops[ids[-1]] == b["stop_reason"] and not set(ids[:-1]) & set(stops)
        assert tok.decode(ids, skip_special_tokens=True) == b["completion"]


def test_greedy_decode_equals_transformers_generate_while_rows_leave(torch_tiny, monkeypatch):
    """Rows that stop leave the batch (their cache rows dropped); the others' tokens must not
    change: the same ids as transformers' generate on the whole batch, past the sliding window."""
    model, tok = torch_tiny
    questions = ["Hi", "2+3?", "x", "Add 7 and 11.", "zzz", "Q?", "What is 6 times 7, then minus 2?", "abc"]
    prompts = [gen.build_prompt(tok, q, "plain") for q in questions]
    settings = DecodeSettings(max_new_tokens=40)
    free = generate_completions(model, tok, prompts, settings, batch_size=8, progress=False, return_ids=True)
    first: dict[int, set[int]] = {}  # token -> the positions where it first appears, over the rows
    for r in free:
        seen: set[int] = set()
        for pos, t in enumerate(r["completion_ids"]):
            if t not in seen:
                seen.add(t)
                first.setdefault(t, set()).add(pos)
    stop = max(first, key=lambda t: len(first[t]))  # the stop that ends rows at the most different steps
    monkeypatch.setattr(gen, "stop_token_ids", lambda tokenizer, s: {stop: "eos"})
    ours = generate_completions(model, tok, prompts, settings, batch_size=8, progress=False, return_ids=True)
    lengths = sorted(r["completion_tokens"] for r in ours)
    assert len(set(lengths)) >= 3 and lengths[-1] > 16, lengths  # rows left at different steps; window 16
    reference = transformers_generate(model, tok, prompts, settings, return_ids=True)
    assert ours == reference
    # continuous batching: 3 places for 8 prompts, freed places refilled mid-run (the newcomers'
    # caches written into the freed rows at other lengths, past the sliding window); every row
    # still gets generate's tokens
    from evals import kv_cache

    placed: list[tuple[int, int, int]] = []  # (newcomers, batch columns, newcomers' columns)
    real_place = kv_cache.place

    def place(cache, slots, other):
        placed.append((len(slots), cache.get_seq_length(), other.get_seq_length()))
        real_place(cache, slots, other)

    monkeypatch.setattr(kv_cache, "place", place)
    refilled = generate_completions(
        model, tok, prompts, settings, batch_size=3, progress=False, return_ids=True
    )
    assert len(placed) >= 3, "no row took a freed place"
    assert any(b > o for _, b, o in placed), placed  # a newcomer shorter than the running rows
    assert refilled == reference


def test_sampling_draws_from_the_filtered_distribution(torch_tiny):
    """First tokens of many seeded samples follow softmax(logits / T) after top-k and top-p."""
    import torch

    model, tok = torch_tiny
    prompt = _prompts(tok)[0]
    with torch.no_grad():
        logits = model(**tok([prompt], return_tensors="pt")).logits[0, -1] / 0.7
    probs = logits.softmax(-1)
    top = probs.topk(8)
    kept = top.values.cumsum(0) - top.values < 0.9  # top-p 0.9 inside the top 8
    want = dict(
        zip(top.indices[kept].tolist(), (top.values[kept] / top.values[kept].sum()).tolist(), strict=True)
    )
    hot = DecodeSettings(max_new_tokens=1, temperature=0.7, top_k=8, top_p=0.9, seed=1)
    n = 3000
    out = generate_completions(model, tok, [prompt] * n, hot, batch_size=n, progress=False, return_ids=True)
    counts = Counter(r["completion_ids"][0] for r in out)
    assert set(counts) <= set(want), (counts, want)  # nothing outside top-k / top-p
    for token, p in want.items():
        assert abs(counts[token] / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3, (token, counts[token] / n, p)
    greedy_like = DecodeSettings(max_new_tokens=6, temperature=1.0, top_k=1, seed=5)
    assert generate_completions(model, tok, [prompt], greedy_like, progress=False) == generate_completions(
        model, tok, [prompt], DecodeSettings(max_new_tokens=6), progress=False
    )


def test_sample_rows_draws_by_probability_and_never_a_zero():
    """The inverse-CDF sampler: frequencies within 4 sigma of the probabilities, zero-probability
    entries (first, last, between) never drawn, the same seed the same draws, bad rows loud."""
    import torch

    from evals.sampling import sample_rows

    probs = torch.zeros(4, 9)
    probs[0, [1, 4, 7]] = torch.tensor([0.2, 0.5, 0.3])
    probs[1, 8] = 1.0  # only the last entry
    probs[2, 0] = 1.0  # only the first
    probs[3] = torch.full((9,), 2.0)  # unnormalised: the draw scales by the row's total
    n = 4000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_rows(probs, g) for _ in range(n)])  # [n, 4]
    assert set(draws[:, 0].tolist()) <= {1, 4, 7} and set(draws[:, 1].tolist()) == {8}
    assert set(draws[:, 2].tolist()) == {0}
    for row, want in ((0, probs[0]), (3, probs[3] / probs[3].sum())):
        freq = torch.bincount(draws[:, row], minlength=9).double() / n
        sigma = (want * (1 - want) / n).sqrt()
        assert ((freq - want).abs() <= 4 * sigma + 1e-9).all(), (row, freq, want)
    assert torch.equal(sample_rows(probs, torch.Generator().manual_seed(0)), draws[0])
    for bad in (torch.zeros(1, 9), torch.full((1, 9), float("nan"))):
        with pytest.raises(ValueError, match="not finite or sums to 0"):
            sample_rows(bad, g)


def test_decoding_record_names_solver_answer_only_when_on():
    """Records written before solver_answer existed stay resumable: the option is named only when on."""
    from evals.generate import DecodeSettings, decoding_record

    off = decoding_record(DecodeSettings())
    assert "solver_answer" not in off and off["max_new_tokens"] == DecodeSettings().max_new_tokens
    assert decoding_record(DecodeSettings(solver_answer=True))["solver_answer"] is True


@pytest.mark.parametrize("kernel", ["onednn", "blocks"])
def test_few_row_linears_give_the_same_values_and_leave_nothing_behind(torch_tiny, monkeypatch, kernel):
    """Decode steps (oneDNN's kernel, or ``(W·xᵀ)ᵀ`` in row blocks where there is none):
    the values of ``F.linear`` (bias too); a prefill, short or long, and an input that builds a graph go
    through ``F.linear`` itself (gradients included); every layer is as it was once the context
    closes."""
    import torch

    from evals.few_rows import CHUNK, MAX_ROWS, few_row_linears
    from trainers_torch import kernels

    calls: list[int] = []
    real = kernels.ONEDNN
    assert real is not None  # the pinned CPU torch has oneDNN

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(kernels, "ONEDNN", counted if kernel == "onednn" else None)
    model, _ = torch_tiny
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    ids = {
        "few": torch.tensor([[2], [5], [7]]),  # a decode step: one token per sequence
        "prompt": torch.tensor([[2, 5, 7]]),  # a short prefill
        "many": torch.randint(3, model.config.vocab_size, (2 * MAX_ROWS + 1, 1)),
    }
    with torch.no_grad():
        plain = {k: model(input_ids=v).logits for k, v in ids.items()}
    with few_row_linears(model) as changed:
        assert changed == len(linears) > 0 and all("forward" in m.__dict__ for m in linears)
        with torch.no_grad():
            mine = {k: model(input_ids=v).logits for k, v in ids.items()}
        biased = torch.nn.Linear(6, 4)
        wide = torch.nn.Linear(6, 2 * CHUNK + 5, bias=False)  # in row blocks, the last one short
        x = torch.randn(3, 1, 6)
        for layer in (biased, wide):
            with few_row_linears(layer), torch.no_grad():
                torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        with few_row_linears(biased):  # grad on: the plain op, whose backward is right
            biased(x).square().sum().backward()
        grad = biased.weight.grad.clone()
        biased.weight.grad = None
        torch.nn.functional.linear(x, biased.weight, biased.bias).square().sum().backward()
        assert torch.equal(grad, biased.weight.grad)
    assert not any("forward" in m.__dict__ for m in [*linears, biased, wide])
    torch.testing.assert_close(mine["few"], plain["few"], rtol=1e-5, atol=1e-5)
    assert torch.equal(mine["many"], plain["many"])  # more than MAX_ROWS rows: F.linear itself
    assert torch.equal(mine["prompt"], plain["prompt"])  # several tokens a row: F.linear itself
    assert (len(calls) > 0) == (kernel == "onednn")


def test_packed_weights_give_onednns_values_and_follow_in_place_changes(torch_tiny, monkeypatch):
    """With ``Packs``, decode steps multiply oneDNN's packed weights: the plain weights' oneDNN
    values, each weight packed once per run and again after an in-place change; an inference
    tensor (no version to check) is not packed."""
    import torch

    from evals import few_rows
    from evals.few_rows import Packs, few_row_linears

    packed_now: list[torch.Size] = []

    def counted(weight: torch.Tensor) -> torch.Tensor | None:
        packed_now.append(weight.shape)
        return real(weight)

    real = few_rows.onednn_pack
    monkeypatch.setattr(few_rows, "onednn_pack", counted)
    model, _ = torch_tiny
    weights = {id(m.weight) for m in model.modules() if type(m) is torch.nn.Linear}
    step = torch.tensor([[2], [5], [7]])  # a decode step: one token per sequence
    packs = Packs()

    def logits(p: Packs | None) -> torch.Tensor:
        with torch.no_grad(), few_row_linears(model, p):
            return model(input_ids=step).logits

    plain, packed = logits(None), logits(packs)
    assert torch.equal(packed, plain) and len(packed_now) == len(packs) == len(weights) > 0
    assert torch.equal(logits(packs), plain) and len(packed_now) == len(weights)  # packed once
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.mul_(2)
    assert torch.equal(logits(packs), logits(None)) and not torch.equal(logits(None), plain)
    assert len(packed_now) == len(weights) + 1 and packed_now[-1] == head.shape  # the head again
    with torch.inference_mode():
        frozen = torch.randn(4, 6)
    assert packs.get(frozen) is frozen and len(packed_now) == len(weights) + 1


def test_shared_prefix_leaves_each_prompt_a_token_of_its_own():
    assert gen.shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]], least=1) == [1, 2]
    assert gen.shared_prefix([[1, 2, 3], [1, 2, 3, 4]], least=1) == [1, 2]  # [1, 2, 3] keeps one
    assert gen.shared_prefix([[1, 2, 3], [1, 2, 3, 4]], least=3) == []  # too short to be worth it
    assert (
        gen.shared_prefix([[7, 1], [8, 1]], least=1) == [] and gen.shared_prefix([[1, 2, 3]], least=1) == []
    )


@pytest.mark.parametrize("window", [256, 16])
def test_shared_prefix_cache_gives_generates_tokens_while_rows_leave_and_join(tmp_path, monkeypatch, window):
    """The prompts' shared tokens run once and their cache is copied into every refill's rows
    (window 256: every refill fits); a window the prompts overflow (16) prefills them whole."""
    from evals import kv_cache
    from tests.tiny import build_gemma3
    from trainers_torch.model import load_model

    model, tok = load_model(build_gemma3(tmp_path / "m", sliding_window=window))
    questions = ["Hi", "2+3?", "x", "Add 7 and 11.", "zzz", "Q?", "What is 6 times 7, then minus 2?"]
    prompts = [gen.build_prompt(tok, q, "plain") for q in questions]
    ids = [tok(p).input_ids for p in prompts]
    monkeypatch.setattr(gen, "SHARED_PREFIX_MIN", 4)
    assert len(gen.shared_prefix(ids, least=4)) >= 4 and max(map(len, ids)) > 16
    settings = DecodeSettings(max_new_tokens=30)
    free = generate_completions(model, tok, prompts, settings, batch_size=8, progress=False, return_ids=True)
    counts = Counter(t for r in free for t in set(r["completion_ids"][:20]))
    stop = max(counts, key=lambda t: (counts[t] < len(prompts), counts[t]))  # ends some rows, not all
    monkeypatch.setattr(gen, "stop_token_ids", lambda tokenizer, s: {stop: "eos"})
    moved: list[int] = []
    real_move = kv_cache.move_prefix
    monkeypatch.setattr(kv_cache, "move_prefix", lambda c, p, g: moved.append(len(g)) or real_move(c, p, g))
    fills: list[int] = []
    real_fill = gen._Batch.fill
    monkeypatch.setattr(gen._Batch, "fill", lambda b, other: fills.append(1) or real_fill(b, other))
    ours = generate_completions(model, tok, prompts, settings, batch_size=3, progress=False, return_ids=True)
    assert len({r["completion_tokens"] for r in ours}) >= 3 and fills  # rows left and others came
    assert bool(moved) == (window == 256)
    assert ours == transformers_generate(model, tok, prompts, settings, return_ids=True)


@pytest.mark.parametrize("newcomer", [3, 7])
def test_place_writes_newcomers_into_freed_rows_and_leaves_the_others(newcomer):
    """kv_cache.place: a newcomer shorter than the running rows is left-padded with zeros into
    its slot; a longer one pads every running row on the left instead; other rows keep their values."""
    import torch
    from transformers import DynamicCache

    from evals import kv_cache

    def cache(rows: int, length: int, base: float) -> DynamicCache:
        c = DynamicCache()
        c.layers = [kv_cache.GrowingLayer(None), kv_cache.GrowingLayer(4)]
        for i, layer in enumerate(c.layers):
            k = base + i + torch.arange(rows * length * 2, dtype=torch.float32).view(rows, 1, length, 2)
            layer.update(k, -k)
        return c

    running, other = cache(3, 5, 0.0), cache(1, newcomer, 1000.0)
    expect = []
    for mine, theirs in zip(running.layers, other.layers, strict=True):
        k = mine.buf_k[..., mine.start : mine.end, :].clone()
        new = theirs.buf_k[..., theirs.start : theirs.end, :].clone()
        length = max(5, newcomer)
        k = torch.cat([k.new_zeros(3, 1, length - 5, 2), k], dim=2)
        new = torch.cat([new.new_zeros(1, 1, length - newcomer, 2), new], dim=2)
        k[1] = new[0]
        expect.append(k)
    kv_cache.place(running, torch.tensor([1]), other)
    assert running.get_seq_length() == max(5, newcomer)
    for layer, k in zip(running.layers, expect, strict=True):
        assert torch.equal(layer.buf_k[..., layer.start : layer.end, :], k)
        assert torch.equal(layer.buf_v[..., layer.start : layer.end, :], -k)
