"""evals.generate on the Orbax checkpoints of a ``trainers_jax.sft`` run: which step a path
resolves to, greedy completions equal to the run's ``merged/`` export on both backends,
provenance, and damaged checkpoints refused with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.errors import InputError
from evals import generate as gen
from evals import load
from tests.reference_decode import QUESTIONS, completion_ids
from tests.tiny_runs import jax_sft_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jax_run(tiny_gemma3, tmp_path_factory) -> Path:
    """Two LoRA steps of trainers_jax.sft, an Orbax checkpoint after each, and merged/ at the end."""
    return jax_sft_run(tiny_gemma3, tmp_path_factory.mktemp("jax-run"), checkpoint_every=1)


@pytest.fixture(scope="module")
def checkpoints_only(jax_run, tmp_path_factory) -> Path:
    """The run without its merged/ export, as a JAX run looks before it finishes."""
    run = tmp_path_factory.mktemp("ckpt-run") / "r"
    shutil.copytree(jax_run, run, ignore=shutil.ignore_patterns("merged"))
    return run


def test_resolve_model_picks_the_step(jax_run, checkpoints_only):
    ckpts = checkpoints_only / "checkpoints"
    (ckpts / "3.orbax-checkpoint-tmp-1").mkdir()  # a save killed before its rename: not a step
    for path, step, how in [
        (checkpoints_only, "2", "run dir"),
        (ckpts, "2", "checkpoints dir"),
        (ckpts / "1", "1", "step dir"),
    ]:
        ref = load.resolve_model(str(path))
        assert ref.kind == "orbax" and ref.checkpoint_dir == str(ckpts / step), ref
        assert ref.run_dir == str(checkpoints_only) and ref.source.startswith(how), ref
        assert (
            ref.weights_dir
            == json.loads((checkpoints_only / "run_manifest.json").read_text())["model"]["path"]
        )
    assert load.resolve_model(str(jax_run)).kind == "hf"  # a finished run: its merged/ export
    assert load.resolve_model(str(jax_run / "checkpoints")).kind == "orbax"


def test_orbax_completions_equal_the_merged_export(jax_run, tiny_gemma3):
    merged = completion_ids(jax_run / "merged", "torch", 24)
    assert completion_ids(jax_run / "checkpoints", "jax", 24) == merged  # Tunix + qwix LoRA, unmerged
    assert completion_ids(jax_run / "checkpoints", "torch", 24) == merged  # merged in memory
    assert completion_ids(tiny_gemma3, "torch", 24) != merged  # the checkpoint's LoRA weights were applied
    assert completion_ids(jax_run / "checkpoints" / "1", "torch", 24) != merged  # and step 1 is another model
    assert len({tuple(c) for c in merged}) > 1  # the prompts lead somewhere different


def test_provenance_fingerprints_the_checkpoint(jax_run, checkpoints_only, tmp_path):
    ckpts = checkpoints_only / "checkpoints"
    prov = {
        name: load.model_provenance(load.resolve_model(str(p)), "torch", "float32")
        for name, p in [("run", checkpoints_only), ("step2", ckpts / "2"), ("step1", ckpts / "1")]
    }
    assert prov["run"]["fingerprint"] == prov["step2"]["fingerprint"]
    assert prov["run"]["checkpoint_sha256"] != prov["step1"]["checkpoint_sha256"]
    assert prov["step1"]["fingerprint"] != prov["run"]["fingerprint"]
    merged = load.model_provenance(load.resolve_model(str(jax_run / "merged")), "torch", "float32")
    assert merged["fingerprint"] != prov["run"]["fingerprint"]
    assert not list(checkpoints_only.rglob("weights.sha256"))  # nothing written into the run dir

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    out = tmp_path / "pred.jsonl"

    def cfg(path: Path) -> gen.GenerateConfig:
        return gen.GenerateConfig(
            model=gen.ModelSpec(path=str(path)),
            data=gen.DataSpec(path=str(items), n=0),
            decode=gen.DecodeSettings(max_new_tokens=8),
            out=str(out),
        )

    summary = gen.run(cfg(ckpts), progress=False)
    assert summary["n_generated_now"] == 4 and summary["model"]["kind"] == "orbax"
    assert gen.run(cfg(checkpoints_only), progress=False)["n_resumed"] == 4  # same weights: resumes
    with pytest.raises(InputError, match="other weights"):
        gen.run(cfg(ckpts / "1"), progress=False)


@pytest.mark.parametrize("damage", ["truncated", "no_metadata", "no_config"])
def test_damaged_checkpoint_exits_2_naming_it(checkpoints_only, tmp_path, capsys, damage):
    run = tmp_path / "r"
    shutil.copytree(checkpoints_only, run)
    step = run / "checkpoints" / "2"
    if damage == "truncated":
        for f in (step / "params").glob("**/d/*"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "no_metadata":
        (step / "params" / "_METADATA").unlink()
    else:
        (run / "config.yaml").unlink()
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": 1, "question": "3 and 4?"}) + "\n")
    out = tmp_path / "pred.jsonl"
    with pytest.raises(SystemExit) as err:
        gen.main(
            [f"model.path={run}", "model.backend=jax", f"data.path={items}", f"out={out}", "--no-progress"]
        )
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert str(step) in msg and "Orbax" in msg, msg
    assert not out.exists()
