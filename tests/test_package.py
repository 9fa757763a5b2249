"""submission.package and submission.verify on tiny run dirs built in-test (tests/evidence_runs.py):
byte-identical rebuilds, secrets and credential files refused before anything is written,
unfinished or placeholder evidence refused, and verify failing on a changed byte, a missing
member, or a README figure that disagrees with the evidence."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from evals.score import describe_primary_score
from submission import package, verify, writeup
from submission.contents import MANIFEST, README, WRITEUP
from tests.evidence_runs import BEST_PARAMS, build_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("pkg"))


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    """A copy of the finished run to plant things in."""
    return Path(shutil.copytree(run, tmp_path / "runs" / run.name))


def build(run_dir: Path, out: Path, *args: str, capsys=None) -> Path:
    package.main(["--run", str(run_dir), "--out-dir", str(out), *args])
    if capsys is not None:
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last == str(next(out.glob("*.zip")))  # the zip's path is the last line printed
    return next(out.glob("*.zip"))


def refused(run_dir: Path, out: Path, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        package.main(["--run", str(run_dir), "--out-dir", str(out), *args])
    assert exit_info.value.code == 2
    assert not out.exists() or not any(out.iterdir())  # no zip, no temp file left behind
    return capsys.readouterr().err


def rezip(src: Path, dst: Path, change: dict[str, bytes | None]) -> Path:
    """``src`` with members replaced (bytes) or dropped (None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = change.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
    return dst


def test_package_builds_verifies_and_shows_one_primary_score(run, tmp_path, capsys):
    path = build(run, tmp_path / "dist", capsys=capsys)
    assert path.name.startswith(f"showwork_{run.name}_") and path.suffix == ".zip"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read(MANIFEST))
        readme, text = zf.read(README).decode(), zf.read(WRITEUP).decode()
        summary = json.loads(zf.read(f"evidence/runs/{run.name}/eval/eval_summary.json"))
        compare = json.loads(zf.read(f"evidence/runs/{run.name}/eval/compare.json"))
        report = zf.read(f"evidence/runs/{run.name}/eval/report.html").decode()
    for name in ("submission/kaggle_notebook.ipynb", "configs/kaggle/notebook.yaml",
                 "configs/kaggle/sft_gemma3_1b_tpu.yaml", f"evidence/runs/{run.name}/config.yaml",
                 f"evidence/runs/{run.name}/run_manifest.json", f"evidence/runs/{run.name}/metrics.jsonl",
                 f"evidence/runs/{run.name}/plots/loss.png", README, WRITEUP):  # fmt: skip
        assert name in names, name
    assert not any("checkpoints" in n for n in names)
    assert set(manifest["members"]) == set(names) - {MANIFEST}
    for name, entry in manifest["members"].items():
        with zipfile.ZipFile(path) as zf:
            data = zf.read(name)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    # the same primary score in the eval summary, the comparison, the report headline and the README
    for side, cside in (("base", "a"), ("trained", "b")):
        score = summary[side]["primary_score"]
        assert compare["primary_score"][cside] == score
        assert describe_primary_score(score) in report and describe_primary_score(score) in readme
    assert (
        summary["trained"]["primary_score"]["value"] == 5 / 8
        and summary["trained"]["primary_score"]["n"] == 8
    )
    assert writeup.word_count(text) <= writeup.WORD_LIMIT
    assert verify.main([str(path)]) == 0


def test_two_builds_are_byte_identical(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = build(run, tmp_path / "a")
    second = build(run, tmp_path / "b")
    assert first.name == second.name and "_2023-11-14_" in first.name
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {(i.date_time, i.external_attr >> 16, i.compress_type, i.create_system) for i in infos} == {
        ((2023, 11, 14, 22, 13, 20), 0o100644, zipfile.ZIP_DEFLATED, 3)
    }


SECRETS = [
    ("HF_TOKEN = hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3f", "Hugging Face token"),
    ("export KAGGLE_KEY=0123456789abcdef0123456789abcdef", "Kaggle API key"),
    ("KAGGLE_API_TOKEN: KGAT_0123456789abcdefABCDEF", "Kaggle API token"),
    (
        '{"username": "someone", "key": "0123456789abcdef0123456789abcdef"}',
        "Kaggle credentials (kaggle.json)",
    ),
    ("aws_access_key_id = AKIA" + "Z7Q2M4N6P8R0T2V4", "AWS access key id"),
    ("aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKQ", "AWS secret access key"),
    ("token ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "GitHub token"),
    ("github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "GitHub token"),
    ("WANDB_API_KEY=" + "0123456789abcdef0123456789abcdef01234567", "W&B API key"),
    ("RAY_AUTH_TOKEN=" + "rt_0123456789abcdefghij", "Ray auth token"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
    ("slack: xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "Slack Token"),
]


@pytest.mark.parametrize(("secret", "kind"), SECRETS, ids=[k for _, k in SECRETS])
def test_a_planted_secret_is_refused_naming_member_line_and_kind(run_copy, tmp_path, capsys, secret, kind):
    report = run_copy / "eval" / "report.md"
    lines = report.read_text().splitlines()
    lines.insert(2, f"note: {secret}")
    report.write_text("\n".join(lines) + "\n")
    err = refused(run_copy, tmp_path / "dist", capsys)
    where = f"evidence/runs/{run_copy.name}/eval/report.md:3: "
    assert where in err and kind in err.split(where, 1)[1].split(";")[0].split(" / "), err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "name",
    ["kaggle.json", ".env", ".env.local", "server.pem", "id_rsa", "id_ed25519.pub", ".netrc", "auth_token"],
)
def test_credential_file_names_are_refused(run_copy, tmp_path, capsys, name):
    (run_copy / "eval" / name).write_text("harmless\n")
    err = refused(run_copy, tmp_path / "dist", capsys)
    assert f"evidence/runs/{run_copy.name}/eval/{name}: " in err and f"file name {name}" in err


@pytest.mark.parametrize(
    ("path", "kind"),
    [(".aws/credentials", "AWS credentials file"), (".ray/session_token", "Ray session file")],
)
def test_credential_paths_are_refused(run_copy, tmp_path, capsys, path, kind):
    (run_copy / "plots" / path).parent.mkdir(parents=True)
    (run_copy / "plots" / path).write_text("harmless\n")
    err = refused(run_copy, tmp_path / "dist", capsys)
    assert f"evidence/runs/{run_copy.name}/plots/{path}: {kind} (path {path})" in err


def test_home_paths_are_rewritten_and_listed(run_copy, tmp_path):
    (run_copy / "eval" / "report.md").write_text("model at /home/alice/models/x and /Users/bob/data\n")
    path = build(run_copy, tmp_path / "dist")
    with zipfile.ZipFile(path) as zf:
        text = zf.read(f"evidence/runs/{run_copy.name}/eval/report.md").decode()
        manifest = json.loads(zf.read(MANIFEST))
    assert text == "model at ~/models/x and ~/data\n"
    assert f"evidence/runs/{run_copy.name}/eval/report.md" in manifest["rewritten_home_paths"]
    assert verify.main([str(path)]) == 0


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("run_manifest.json", lambda d: d.update(status="running", end_time=None), "status 'running': the run has not finished"),
        ("summary.json", lambda d: d.update(final_loss="TODO"), "$.final_loss is a placeholder ('TODO')"),
        ("eval/eval_summary.json", lambda d: d["trained"]["primary_score"].update(value=None), "$.trained.primary_score is null"),
        ("eval/eval_summary.json", lambda d: d["trained"]["primary_score"].update(value=0.9), "is not correct/n = 5/8"),
        ("eval/compare.json", lambda d: d["primary_score"]["b"].update(correct=4, value=0.5),
         "$.primary_score.b differs from eval_summary.json"),
        ("eval/compare.json", lambda d: d["metrics"]["strict"].update(mcnemar_p="n/a"), "compare.json"),
    ],
)  # fmt: skip
def test_unfinished_null_or_placeholder_evidence_is_refused(run_copy, tmp_path, capsys, file, edit, message):
    _edit_json(run_copy / file, edit)
    err = refused(run_copy, tmp_path / "dist", capsys)
    assert message in err, err


def test_a_run_without_eval_is_refused_naming_what_is_missing(tmp_path, capsys):
    run_dir = build_run(tmp_path, evaluate=False)
    err = refused(run_dir, tmp_path / "dist", capsys)
    assert f"evidence/runs/{run_dir.name}/eval/eval_summary.json: missing: evaluate the run first" in err


def test_a_writeup_over_the_word_limit_is_refused(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(writeup, "WORD_LIMIT", 50)
    err = refused(run, tmp_path / "dist", capsys)
    assert "WRITEUP.md:" in err and "over the 50-word limit" in err


def test_a_sweeps_best_params_go_in_and_are_checked(run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "best_params.json").write_text(json.dumps(BEST_PARAMS))
    path = build(run, tmp_path / "dist", "--sweep", str(sweep))
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("evidence/best_params.json")) == BEST_PARAMS
        readme = zf.read(README).decode()
    assert "| `optim.lr` | 0.0005 | loguniform [1e-05, 0.001] |" in readme and "in trial `t2`" in readme
    assert verify.main([str(path)]) == 0
    (sweep / "best_params.json").write_text(json.dumps({**BEST_PARAMS, "params": {"optim.lrr": 0.1}}))
    err = refused(run, tmp_path / "dist2", capsys, "--sweep", str(sweep))
    assert "evidence/best_params.json: $.params: optim.lrr not in the search space" in err


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(run, tmp_path_factory) -> Path:
    return build(run, tmp_path_factory.mktemp("built"))


def fails(path: Path, capsys) -> str:
    assert verify.main([str(path)]) == 1
    return capsys.readouterr().err.strip()


def test_verify_fails_a_copy_with_one_changed_byte(built, tmp_path, capsys):
    data = bytearray(built.read_bytes())
    with zipfile.ZipFile(built) as zf:
        info = zf.getinfo(WRITEUP)
    data[info.header_offset + 30 + len(WRITEUP) + 10] ^= 0x01  # inside WRITEUP.md's compressed bytes
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    assert fails(bad, capsys).startswith(f"FAIL {WRITEUP}: ")


def test_verify_fails_a_changed_member_a_missing_one_and_an_extra_one(built, tmp_path, capsys):
    metrics = f"evidence/runs/{built.name.split('_')[1]}/metrics.jsonl"
    changed = rezip(built, tmp_path / "changed.zip", {metrics: b'{"step": 1, "loss": 0.1}\n'})
    assert fails(changed, capsys).startswith(f"FAIL {metrics}: ")
    missing = rezip(built, tmp_path / "missing.zip", {metrics: None})
    assert fails(missing, capsys).startswith(
        f"FAIL {metrics}: listed in MANIFEST.json but missing from the zip"
    )
    with zipfile.ZipFile(built) as zin, zipfile.ZipFile(tmp_path / "extra.zip", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr("notes.txt", "added later\n")
    assert fails(tmp_path / "extra.zip", capsys).startswith("FAIL notes.txt: in the zip but not listed")


def test_verify_fails_a_readme_figure_that_disagrees_with_the_evidence(built, tmp_path, capsys):
    with zipfile.ZipFile(built) as zf:
        readme = zf.read(README).decode()
        manifest = json.loads(zf.read(MANIFEST))
    assert "(5/8)" in readme
    edited = readme.replace("(5/8)", "(6/8)").encode()
    manifest["members"][README] = {"sha256": hashlib.sha256(edited).hexdigest(), "bytes": len(edited)}
    bad = rezip(built, tmp_path / "readme.zip", {README: edited, MANIFEST: json.dumps(manifest).encode()})
    line = next(i for i, text in enumerate(readme.splitlines(), start=1) if "(5/8)" in text)
    err = fails(bad, capsys)
    assert err.startswith(f"FAIL {README}:{line}: says ") and "(6/8)" in err and "the evidence gives" in err


def test_verify_fails_evidence_that_breaks_its_schema(built, tmp_path, capsys):
    name = f"evidence/runs/{built.name.split('_')[1]}/eval/compare.json"
    with zipfile.ZipFile(built) as zf:
        doc = json.loads(zf.read(name))
        manifest = json.loads(zf.read(MANIFEST))
    del doc["primary_score"]
    data = json.dumps(doc).encode()
    manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    bad = rezip(built, tmp_path / "schema.zip", {name: data, MANIFEST: json.dumps(manifest).encode()})
    err = fails(bad, capsys)
    assert err.startswith(f"FAIL {name}: $: 'primary_score' is a required property")


def test_verify_fails_a_writeup_over_the_word_limit(built, capsys, monkeypatch):
    with zipfile.ZipFile(built) as zf:
        words = writeup.word_count(zf.read(WRITEUP).decode())
    monkeypatch.setattr(verify, "WORD_LIMIT", words - 1)
    assert fails(built, capsys) == f"FAIL {WRITEUP}: {words} words, over the {words - 1}-word limit"


def test_verify_refuses_a_path_that_is_not_a_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        verify.main([str(tmp_path / "nope.zip")])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------------------------
# WITH_MODEL: the final checkpoint in the Orbax layout Tunix's Gemma 3 code loads
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_packaged_checkpoint_loads_with_tunix_gemma3_code(tiny_gemma3, tmp_path):
    import jax.numpy as jnp
    import numpy as np

    from submission.checkpoint import CHECKPOINT, load_exported
    from trainers_jax.model import forward_logits, load_model

    run_dir = build_run(tmp_path, model_dir=tiny_gemma3)
    shutil.copytree(tiny_gemma3, run_dir / "merged")  # stands for the run's merged HF export
    first = build(run_dir, tmp_path / "a", "--with-model")
    second = build(run_dir, tmp_path / "b", "--with-model")
    assert first.read_bytes() == second.read_bytes()  # the Orbax files are reproducible too
    assert verify.main([str(first)]) == 0
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        assert not any(n.endswith((".safetensors", "commit_success.txt")) for n in names)
        assert f"model/{CHECKPOINT}/_METADATA" in names and "model/config.json" in names
        zf.extractall(tmp_path / "unzipped", [n for n in names if n.startswith("model/")])

    packaged = load_exported(
        tmp_path / "unzipped" / "model"
    )  # tunix.models.gemma3.params.create_model_from_checkpoint
    reference, _ = load_model(tiny_gemma3)
    tokens = jnp.array([[2, 40, 41, 42, 43, 44, 45, 46]])
    mask = jnp.ones_like(tokens, dtype=bool)
    np.testing.assert_array_equal(
        np.asarray(forward_logits(packaged, tokens, mask)),
        np.asarray(forward_logits(reference, tokens, mask)),
    )


def test_a_gemma2_model_is_refused_for_the_orbax_export(tiny_gemma2, tmp_path, capsys):
    run_dir = build_run(tmp_path, model_dir=tiny_gemma2)
    shutil.copytree(tiny_gemma2, run_dir / "merged")
    err = refused(run_dir, tmp_path / "dist", capsys, "--with-model")
    assert "a Gemma 2 model; the Orbax export covers Gemma 3" in err
