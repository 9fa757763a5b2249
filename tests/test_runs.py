from __future__ import annotations

import dataclasses
import json

import yaml

from common.runs import MetricsLogger, RunDir, read_metrics, weights_sha256


@dataclasses.dataclass
class Cfg:
    run_name: str = "t"
    lr: float = 0.1


def test_run_dir_manifest_and_resume_history(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1"}\n')
    run = RunDir.start(tmp_path / "runs" / "t", Cfg(), data_files={"train": data}, device="cpu")
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == {"run_name": "t", "lr": 0.1}
    m = run.read_manifest()
    for key in ("command", "git_commit", "config_hash", "libraries", "device", "start_time", "end_time"):
        assert key in m
    assert m["data"]["train"]["sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    assert m["status"] == "running" and m["libraries"]["python"]
    run.finish(final_loss=1.5)
    m = run.read_manifest()
    assert m["status"] == "completed" and m["end_time"] and m["final_loss"] == 1.5
    again = RunDir.start(run.path, Cfg(), device="cpu")
    assert again.read_manifest()["previous_attempts"][0]["status"] == "completed"
    assert all((run.path / d).is_dir() for d in ("checkpoints", "plots", "eval"))


def test_metrics_logger_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, loss=2.0, lr=0.1, note="x")
        log.log(2, loss=1.0)
    (tmp_path / "metrics.jsonl").open("a").write('{"step": 3, "lo')  # torn last line
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1, 2] and recs[0]["note"] == "x"
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tb").iterdir())


def test_weights_sha_cached_and_invalidated(tmp_path):
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"abc")
    first = weights_sha256(tmp_path)
    assert json.loads((tmp_path / "weights.sha256").read_text())["sha256"] == first
    assert weights_sha256(tmp_path) == first
    w.write_bytes(b"abcd")
    assert weights_sha256(tmp_path) != first
    assert weights_sha256(tmp_path / "empty-nothing") is None
