from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Literal

import pytest

from common.config import config_hash, dump_yaml, load_config, parse_overrides, split_cli
from common.errors import InputError


@dataclasses.dataclass
class Lora:
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj"])


@dataclasses.dataclass
class Cfg:
    run_name: str = "demo"
    lr: float = 1e-4
    steps: int = 10
    use_lora: bool = True
    dtype: Literal["float32", "bfloat16"] = "float32"
    eval_path: str | None = None
    lora: Lora = dataclasses.field(default_factory=Lora)


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides_build_nested_dataclasses(tmp_path):
    p = write(tmp_path, "lr: 1e-4\nsteps: 5\nlora:\n  rank: 4\n")
    cfg = load_config(Cfg, p, ["lora.alpha=32", "use_lora=false", "lora.targets=[q_proj,v_proj]"])
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert cfg.steps == 5
    assert cfg.lora == Lora(rank=4, alpha=32.0, targets=["q_proj", "v_proj"])
    assert cfg.use_lora is False


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    p = write(tmp_path, "lora:\n  rnak: 4\n")
    with pytest.raises(InputError) as err:
        load_config(Cfg, p)
    msg = str(err.value)
    assert str(p) in msg and "lora.rnak" in msg and "alpha, rank, targets" in msg


def test_unknown_override_key(tmp_path):
    with pytest.raises(InputError, match="unknown key 'stepz'.*allowed keys: dtype, eval_path, lora, lr"):
        load_config(Cfg, None, ["stepz=3"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("steps=ten", "steps: expected int, got str 'ten'"),
        ("steps=1.5", "steps: expected int, got float"),
        ("use_lora=1", "use_lora: expected true/false"),
        ("dtype=float16", "dtype: 'float16' is not one of 'float32', 'bfloat16'"),
        ("lora=3", "lora: expected a mapping"),
        ("lr=fast", "lr: expected float"),
        ("lora.targets=q_proj", "lora.targets: expected a list"),
    ],
)
def test_wrong_types_are_named(override, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(Cfg, None, [override])


def test_optional_accepts_null_and_value():
    assert load_config(Cfg, None, ["eval_path=null"]).eval_path is None
    assert load_config(Cfg, None, ["eval_path=data/x.jsonl"]).eval_path == "data/x.jsonl"


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "lr: 1\nsteps: [1, 2\n")
    with pytest.raises(InputError, match=rf"{p}:\d+: invalid YAML"):
        load_config(Cfg, p)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="top level must be a mapping"):
        load_config(Cfg, write(tmp_path, "- 1\n- 2\n"))


def test_override_syntax_errors():
    with pytest.raises(InputError, match="not key=value"):
        parse_overrides(["lr"])
    assert split_cli(["--config", "a.yaml", "lr=1", "x.y=2"]) == (["--config", "a.yaml"], ["lr=1", "x.y=2"])


def test_hash_is_stable_and_sensitive():
    a, b = Cfg(), Cfg()
    assert config_hash(a) == config_hash(b)
    b.lora.rank = 9
    assert config_hash(a) != config_hash(b)
    assert "rank: 8" in dump_yaml(a)


def test_cli_exit_status_two(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "import sys\nfrom common.errors import cli, InputError\n"
        "@cli\ndef main():\n    raise InputError('data.jsonl:3: answer: missing')\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: data.jsonl:3: answer: missing"


@dataclasses.dataclass
class Part:
    path: str = ""
    n: int | None = None


@dataclasses.dataclass
class WithList:
    parts: list[Part] = dataclasses.field(default_factory=list)
    lora: Lora = dataclasses.field(default_factory=Lora)


def test_override_indexes_an_item_of_a_list(tmp_path):
    p = write(tmp_path, "parts:\n  - {path: a.jsonl, n: 5}\n  - {path: b.jsonl, n: 7}\n")
    cfg = load_config(WithList, p, ["parts[1].n=60", "parts[0].path=c.jsonl", "lora={rank: 4}"])
    assert [(q.path, q.n) for q in cfg.parts] == [("c.jsonl", 5), ("b.jsonl", 60)]
    assert (cfg.lora.rank, cfg.lora.alpha) == (4, 16.0)  # a mapping value merges into the section
    with pytest.raises(InputError, match=r"parts\[2\]\.n.*2 item\(s\), no index 2"):
        load_config(WithList, p, ["parts[2].n=1"])
    with pytest.raises(InputError, match=r"'lora' is not a list"):
        load_config(WithList, p, ["lora[0].rank=1"])
    again = load_config(WithList, p, [])  # the file's data is not changed by an earlier load
    assert [q.n for q in again.parts] == [5, 7]
