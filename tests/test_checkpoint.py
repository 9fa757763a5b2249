"""The checkpoint writers on a small module (no model load, no training run): what a step dir
holds, republishing a step, pruning, leftovers of killed saves, refusing what does not fit."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from common.errors import InputError
from trainers_torch import checkpoint as ckpt


class Tied(torch.nn.Module):
    """An embedding tied to its head (one parameter under two names) and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def trainer(seed: int = 0) -> tuple[Tied, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))


def train_step(model: Tied, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    loss = model.head(model.embed(torch.tensor([1, 2]))).square().sum()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def save(root: Path, step: int, model: Tied, opt: torch.optim.Optimizer, sched: object, **kw: object) -> Path:
    return ckpt.save_checkpoint(root, step, model, opt, sched, {"tokens": step * 10}, **kw)  # type: ignore[arg-type]


def test_step_dir_holds_trainable_weights_states_and_state_json_last(tmp_path: Path) -> None:
    model, opt, sched = trainer()
    train_step(model, opt, sched)
    adapters: list[Path] = []

    def save_adapter(path: Path) -> None:
        adapters.append(path)
        path.mkdir()
        (path / "adapter_config.json").write_text("{}")

    path = save(tmp_path / "checkpoints", 3, model, opt, sched, save_adapter=save_adapter)
    assert path == tmp_path / "checkpoints" / "step-000003"
    assert adapters[0].parent.name.startswith(".tmp-step-000003-")  # written before the rename
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter",
        "optimizer.pt",
        "rng.pt",
        "scheduler.pt",
        "state.json",
        "trainable.safetensors",
    ]
    assert (path / "adapter" / "adapter_config.json").is_file()
    assert json.loads((path / "state.json").read_text()) == {"step": 3, "tokens": 30}
    weights = load_file(str(path / "trainable.safetensors"))
    assert list(weights) == ["embed.weight"]  # tied head saved once, frozen layer not at all
    assert torch.equal(weights["embed.weight"], model.embed.weight.detach())
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]  # no temp left


def test_republishing_a_step_replaces_it(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    model, opt, sched = trainer()
    first = save(root, 2, model, opt, sched)
    train_step(model, opt, sched)
    again = save(root, 2, model, opt, sched)
    assert again == first and ckpt.complete_checkpoints(root) == [(2, first)]
    saved = load_file(str(again / "trainable.safetensors"))["embed.weight"]
    assert torch.equal(saved, model.embed.weight.detach())  # the new weights, not the old ones


def test_a_stale_temp_dir_of_the_same_step_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    stale = root / f".tmp-step-000001-{os.getpid()}"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    path = save(root, 1, *trainer())
    assert not stale.exists() and not (path / "junk").exists()


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_pruning_keeps_the_newest(tmp_path: Path, keep_last: int) -> None:
    root = tmp_path / "checkpoints"
    model, opt, sched = trainer()
    for step in (1, 2, 3):
        save(root, step, model, opt, sched, keep_last=keep_last)
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [1, 2, 3][-keep_last:]


def test_only_complete_step_dirs_count(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert ckpt.complete_checkpoints(root) == [] and ckpt.latest_checkpoint(root) is None
    model, opt, sched = trainer()
    save(root, 9, model, opt, sched, keep_last=5)
    save(root, 10, model, opt, sched, keep_last=5)
    (root / "step-000011").mkdir()  # no state.json: a save killed mid-way (older layout)
    (root / "step-12").mkdir()  # not six digits
    (root / "step-12" / "state.json").write_text("{}")
    (root / "step-000013").write_text("a file")
    (root / "xstep-000014").mkdir()
    (root / "xstep-000014" / "state.json").write_text("{}")
    (root / ".tmp-step-000015-1").mkdir()
    (root / ".tmp-step-000015-1" / "state.json").write_text("{}")
    assert ckpt.complete_checkpoints(root) == [(9, root / "step-000009"), (10, root / "step-000010")]
    assert ckpt.latest_checkpoint(root) == root / "step-000010"  # 10 after 9: by number, not by name
    assert ckpt.remove_partial(root) == [".tmp-step-000015-1"]
    assert not (root / ".tmp-step-000015-1").exists() and (root / "step-000011").exists()
    assert ckpt.remove_partial(tmp_path / "nothing") == []


def test_remove_partial_returns_every_leftover_sorted(tmp_path: Path) -> None:
    for name in (".tmp-step-000002-9", ".tmp-step-000001-9"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-000001").mkdir()
    assert ckpt.remove_partial(tmp_path) == [".tmp-step-000001-9", ".tmp-step-000002-9"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-000001"]


def test_load_restores_weights_optimizer_schedule_and_rng(tmp_path: Path) -> None:
    model, opt, sched = trainer()
    train_step(model, opt, sched)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    path = save(tmp_path, 1, model, opt, sched)
    expected = (torch.rand(2).tolist(), random.random(), np.random.rand())
    train_step(model, opt, sched)
    after_two = model.embed.weight.detach().clone()

    model2, opt2, sched2 = trainer(seed=1)
    assert ckpt.load_checkpoint(path, model2, opt2, sched2) == {"step": 1, "tokens": 10}
    assert (torch.rand(2).tolist(), random.random(), np.random.rand()) == expected
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"][0]["step"] == 1
    train_step(model2, opt2, sched2)
    assert torch.allclose(model2.embed.weight, after_two)  # same Adam moments, same schedule


def test_load_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    model, opt, sched = trainer()
    path = save(tmp_path, 1, model, opt, sched)
    weights = path / "trainable.safetensors"
    save_file({"embed.weight": torch.zeros(4, 3)}, str(weights))
    with pytest.raises(InputError, match=r"embed.weight: shape \(4, 3\), model has \(5, 3\)"):
        ckpt.load_checkpoint(path, *trainer())
    save_file({"embed.weight": torch.zeros(5, 3), "extra.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(InputError, match=r"missing \[\], unexpected \['extra.weight'\]"):
        ckpt.load_checkpoint(path, *trainer())
    save_file({"other": torch.zeros(1)}, str(weights))
    with pytest.raises(InputError, match=r"missing \['embed.weight'\], unexpected \['other'\]"):
        ckpt.load_checkpoint(path, *trainer())
    (path / "state.json").write_text("{not json")
    with pytest.raises(InputError, match=r"step-000001: unreadable checkpoint"):
        ckpt.load_checkpoint(path, *trainer())


def run_cfg(tmp_path: Path, resume: bool = False, overwrite: bool = False) -> SimpleNamespace:
    return SimpleNamespace(output_dir=str(tmp_path), run_name="r", resume=resume, overwrite=overwrite)


def test_prepare_run_dir_resumes_the_newest_or_refuses_to_clobber(tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert ckpt.prepare_run_dir(run_cfg(tmp_path)) == (run, None)
    assert ckpt.prepare_run_dir(run_cfg(tmp_path, resume=True)) == (run, None)  # nothing to resume yet
    model, opt, sched = trainer()
    save(run / "checkpoints", 1, model, opt, sched)
    save(run / "checkpoints", 2, model, opt, sched)
    with pytest.raises(InputError, match="already holds a run"):
        ckpt.prepare_run_dir(run_cfg(tmp_path))
    assert ckpt.prepare_run_dir(run_cfg(tmp_path, resume=True)) == (run, run / "checkpoints" / "step-000002")
    assert ckpt.prepare_run_dir(run_cfg(tmp_path, overwrite=True)) == (run, None)


def test_a_finished_run_without_checkpoints_counts_as_a_run(tmp_path: Path) -> None:
    (tmp_path / "r" / "final").mkdir(parents=True)
    with pytest.raises(InputError, match="already holds a run"):
        ckpt.prepare_run_dir(run_cfg(tmp_path))


def test_default_keeps_two_latest_is_the_highest_and_state_json_is_indented(tmp_path: Path) -> None:
    model, opt, sched = trainer()
    for step in (1, 2, 3):
        save(tmp_path, step, model, opt, sched)  # the default keep_last: 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000003"]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-000003"
    save(tmp_path, 4, model, opt, sched, keep_last=3)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-000004"
    state = (tmp_path / "step-000004" / "state.json").read_text()
    assert state == json.dumps({"step": 4, "tokens": 40}, indent=2) + "\n"


def test_a_mismatch_lists_three_missing_and_three_unexpected_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, sched, {})
    save_file({f"x{k}": torch.zeros(1) for k in range(5)}, str(path / "trainable.safetensors"))
    with pytest.raises(InputError) as err:
        ckpt.load_checkpoint(path, model, opt, sched)
    assert str(err.value) == (
        f"{path}/trainable.safetensors: does not match this model's trainable parameters "
        "(missing ['0.bias', '0.weight', '1.bias'], unexpected ['x0', 'x1', 'x2'])"
    )


def test_refusal_names_the_run_and_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "r" / "final").mkdir(parents=True)
    with pytest.raises(InputError) as err:
        ckpt.prepare_run_dir(run_cfg(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / 'r'}: already holds a run (checkpoints or final/); pass resume=true to continue it, "
        "overwrite=true to start over, or another run_name"
    )
