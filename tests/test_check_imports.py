"""scripts.check_imports: the import rules of the project, on small trees and on the project."""

from __future__ import annotations

from pathlib import Path

from scripts.check_imports import import_graph, main, violations

ROOT = Path(__file__).resolve().parents[1]


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for parent in path.relative_to(tmp_path).parents:
            if str(parent) != ".":
                (tmp_path / parent / "__init__.py").touch()
    return tmp_path


def test_the_project_has_no_violations(capsys):
    assert main(["--root", str(ROOT)]) == 0
    assert "0 violations" in capsys.readouterr().out


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    root = tree(tmp_path, {
        "evals/a.py": "from evals.b import x\n",
        "evals/b.py": "def f():\n    from evals import a\n",
        "evals/c.py": "import evals.a\n",
    })  # fmt: skip
    found = violations(import_graph(root))
    assert found == ["import cycle: evals.a <-> evals.b"]
    assert main(["--root", str(root)]) == 1


def test_relative_imports_resolve_against_the_package(tmp_path):
    root = tree(tmp_path, {"evals/a.py": "from .b import x\n", "evals/b.py": "from . import a\n"})
    assert violations(import_graph(root)) == ["import cycle: evals.a <-> evals.b"]


def test_layer_rules(tmp_path):
    root = tree(tmp_path, {
        "trainers_torch/sft.py": "",
        "trainers_torch/grpo.py": "from trainers_torch.sft import train\n",
        "trainers_torch/model.py": "import evals.score\n",
        "evals/score.py": "",
        "evals/load.py": "from trainers_torch import sft\n",
        "common/rewards.py": "from evals.score import x\n",
        "scripts/run.py": "from trainers_torch.sft import train\n",
    })  # fmt: skip
    found = violations(import_graph(root))
    assert found == [
        "common.rewards imports evals.score (common/ imports only common/)",
        "evals.load imports the recipe trainers_torch.sft (recipes import library modules only)",
        "trainers_torch.grpo imports the recipe trainers_torch.sft (recipes import library modules only)",
        "trainers_torch.model imports evals.score (a trainer library module never imports evals/)",
    ]
