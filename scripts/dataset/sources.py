"""Readers that turn each source (GSM8K, reasoning-gym tasks, user JSONL/CSV) into trace records.

Each reader returns records per split plus rejects (``{"where", "reason"}``) for items it
had to leave out, so the builder can count and report every one of them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from common.errors import InputError
from common.jsonl import iter_jsonl, scan_jsonl
from common.records import make_record
from scripts.dataset.solutions import (
    SolutionError,
    op_category,
    parse_solution,
    solution_ops,
    step_difficulty,
)

Records = dict[str, list[dict[str, Any]]]
Rejects = list[dict[str, Any]]

# reasoning-gym tasks built from an evaluation set: never train on them when evaluating there.
DERIVED_FROM = {"gsm_symbolic": "gsm8k-test"}


@dataclass
class Buckets:
    """Difficulty from step count: ``easy`` up to ``easy_max_steps``, ``medium`` up to ``medium_max_steps``."""

    easy_max_steps: int = 2
    medium_max_steps: int = 4

    def __call__(self, n_steps: int) -> str:
        return step_difficulty(n_steps, self.easy_max_steps, self.medium_max_steps)


def shape_meta(steps: list[dict[str, Any]], buckets: Buckets) -> dict[str, Any]:
    """Category (operation mix), difficulty (step bucket), step count and operator counts of a solution."""
    ops = solution_ops(steps)
    return {
        "category": op_category(ops),
        "difficulty": buckets(len(steps)),
        "n_steps": len(steps),
        "ops": dict(sorted(ops.items())),
    }


# --- GSM8K -------------------------------------------------------------------------------------


@dataclass
class GSM8KSource:
    dir: str = "data/gsm8k"
    splits: list[str] = field(default_factory=lambda: ["train", "test"])  # files <dir>/<split>.jsonl


def read_gsm8k(src: GSM8KSource, buckets: Buckets) -> tuple[Records, Rejects, dict[str, str]]:
    """GSM8K lines as records, ids ``gsm8k-<split>-<index>``; a malformed line is an error (the copy is vendored)."""
    out: Records = {}
    inputs = {}
    for split in src.splits:
        path = Path(src.dir) / f"{split}.jsonl"
        inputs[split] = str(path)
        records = out[split] = []
        for lineno, row in tqdm(iter_jsonl(path), desc=f"gsm8k {split}", unit=" lines", leave=False):
            where = f"{path}:{lineno}"
            if not isinstance(row, dict) or not all(
                isinstance(row.get(k), str) for k in ("question", "answer")
            ):
                raise InputError(f"{where}: expected an object with string 'question' and 'answer'")
            try:
                steps, final = parse_solution(row["answer"])
            except SolutionError as err:
                raise InputError(f"{where}: answer: {err}") from None
            rid = f"gsm8k-{split}-{len(records):05d}"
            meta = {"source": "gsm8k", **shape_meta(steps, buckets)}
            records.append(make_record(rid, row["question"].strip(), str(final), steps, meta))
    return out, [], inputs


# --- reasoning-gym -----------------------------------------------------------------------------


@dataclass
class RGTask:
    name: str
    size: int
    split: str = "train"
    seed: int | None = None  # default: derived from the build seed and the task name
    config: dict[str, Any] = field(default_factory=dict)  # extra arguments to create_dataset


@dataclass
class RGSource:
    tasks: list[RGTask]
    # gsm_symbolic items rewrite GSM8K test problems; allow them in a training split only on purpose.
    allow_eval_derived_in_train: bool = False


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: tuples and sets become lists, other objects their ``str``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((json_safe(v) for v in value), key=repr)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return str(value)


def task_seed(task: RGTask, seed: int) -> int:
    if task.seed is not None:
        return task.seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{task.name}".encode()).digest()[:4], "big")


def check_rg_splits(src: RGSource, train_splits: list[str]) -> None:
    """Refuse eval-derived tasks (gsm_symbolic) in a training split unless the config allows it."""
    for task in src.tasks:
        origin = DERIVED_FROM.get(task.name)
        if origin and task.split in train_splits and not src.allow_eval_derived_in_train:
            raise InputError(
                f"reasoning_gym task '{task.name}' is put in training split '{task.split}', but its items are "
                f"rewrites of {origin} problems: training on them leaks the {origin} evaluation. Put it in "
                "an evaluation split (e.g. split: test), or set reasoning_gym.allow_eval_derived_in_train=true "
                f"if this model will never be evaluated on {origin}"
            )


def read_reasoning_gym(src: RGSource, seed: int, buckets: Buckets) -> tuple[Records, Rejects, dict[str, Any]]:
    """Generate each task, keep items whose own answer scores 1.0 with the task's ``score_answer``."""
    import reasoning_gym

    out: Records = defaultdict(list)
    rejects: Rejects = []
    inputs: dict[str, Any] = {}
    seen: set[tuple[str, int]] = set()
    for task in src.tasks:
        tseed = task_seed(task, seed)
        if (task.name, tseed) in seen:
            raise InputError(
                f"reasoning_gym task '{task.name}' listed twice with seed {tseed}; give one a different seed"
            )
        seen.add((task.name, tseed))
        try:
            ds = reasoning_gym.create_dataset(task.name, size=task.size, seed=tseed, **task.config)
        except (ValueError, TypeError, AssertionError) as err:
            raise InputError(f"reasoning_gym task '{task.name}': {err or type(err).__name__}") from None
        inputs[f"{task.name}@{tseed}"] = {
            "size": task.size,
            "seed": tseed,
            "split": task.split,
            "config": task.config,
        }
        for idx in tqdm(range(task.size), desc=f"rg {task.name}", leave=False):
            where = f"reasoning_gym:{task.name}[{idx}]"
            try:
                entry = json.loads(json.dumps(json_safe(ds[idx])))
            except Exception as err:  # a generator may fail on some seeds
                rejects.append({"where": where, "task": task.name, "reason": f"generation raised {err!r}"})
                continue
            reason = _score_own_answer(ds, entry)
            if reason:
                rejects.append({"where": where, "task": task.name, "reason": reason})
                continue
            out[task.split].append(_rg_record(task.name, tseed, idx, entry, ds.category, buckets))
    return dict(out), rejects, inputs


def _score_own_answer(ds: Any, entry: dict[str, Any]) -> str | None:
    """Why the task's own answer fails its ``score_answer`` on the JSON copy of the entry, or None."""
    answer = entry.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        return f"no reference answer (answer is {answer!r})"
    try:
        score = ds.score_answer(answer, entry)
    except Exception as err:  # a task's scorer may raise anything
        return f"score_answer raised {type(err).__name__}: {err}"
    return None if score == 1.0 else f"score_answer gives {score} to the task's own answer"


def _rg_record(name: str, tseed: int, idx: int, entry: dict[str, Any], family: str, buckets: Buckets) -> dict:
    meta: dict[str, Any] = {"source": "reasoning_gym", "category": name, "difficulty": "unrated"}
    meta.update(rg_task=name, rg_family=family)
    steps: list[dict[str, Any]] = []
    cot = entry.get("metadata", {}).get("answer_cot")
    if isinstance(cot, str):
        try:
            steps, _ = parse_solution(cot, require_final=False)
        except SolutionError as err:
            meta["reasoning_error"] = str(err)
    if steps:
        meta["difficulty"] = buckets(len(steps))
        meta["n_steps"] = len(steps)
    if name in DERIVED_FROM:
        meta["derived_from"] = DERIVED_FROM[name]
    meta["rg_entry"] = entry
    placeholder = f"No worked reasoning: reasoning-gym task {name} provides only the answer."
    rid = f"rg-{name}-{tseed}-{idx:05d}"
    return make_record(rid, entry["question"].strip(), entry["answer"].strip(), steps, meta, placeholder)


# --- user JSONL / CSV --------------------------------------------------------------------------

USER_FIELDS = ("question", "answer", "reasoning", "id", "category", "difficulty")


@dataclass
class UserSource:
    path: str
    name: str  # meta.source and id prefix
    mapping: dict[str, str]  # record field -> column, e.g. {question: prompt, answer: target}
    format: Literal["auto", "jsonl", "csv"] = "auto"
    split: str = "train"
    category: str = "general"  # when no category column is mapped

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mapping) - set(USER_FIELDS))
        if unknown:
            raise ValueError(
                f"user.mapping: unknown field '{unknown[0]}' (allowed: {', '.join(USER_FIELDS)})"
            )
        for key in ("question", "answer"):
            if key not in self.mapping:
                raise ValueError(f"user.mapping: '{key}' is required")


def _user_rows(src: UserSource) -> Any:
    """Yield ``(line, row, error)`` from a JSONL or CSV file."""
    path = Path(src.path)
    fmt = src.format if src.format != "auto" else ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt == "jsonl":
        yield from scan_jsonl(path)
        return
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with path.open("rb") as raw:  # name the first non-UTF-8 line before csv reads text
        for lineno, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{lineno}: not UTF-8 ({err.reason} at byte {err.start})") from None
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames or []
            for key, column in src.mapping.items():
                if column not in header:
                    raise InputError(
                        f"{path}: user.mapping.{key}: no column '{column}' (header: {', '.join(header)})"
                    )
            for row in reader:
                if None in row:
                    yield reader.line_num, None, f"{len(row[None])} more cells than the header has"
                    continue
                yield reader.line_num, row, None
        except csv.Error as err:
            raise InputError(f"{path}:{reader.line_num}: invalid CSV: {err}") from None


def _as_text(value: Any, key: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{key}: empty")
    return value.strip()


def read_user(src: UserSource, buckets: Buckets) -> tuple[Records, Rejects, dict[str, str]]:
    """Map a user file's columns onto records; rows that cannot be mapped are rejected with a reason."""
    records: list[dict[str, Any]] = []
    rejects: Rejects = []
    first_line: dict[str, int] = {}
    for lineno, row, error in tqdm(_user_rows(src), desc=f"user {src.name}", unit=" rows", leave=False):
        where = f"{src.path}:{lineno}"
        try:
            if error is not None:
                raise ValueError(error)
            record = _user_record(src, row, lineno, buckets)
            if first_line.setdefault(record["id"], lineno) != lineno:
                raise ValueError(f"id {record['id']!r} already used on line {first_line[record['id']]}")
            records.append(record)
        except (ValueError, SolutionError) as err:
            rejects.append({"where": where, "reason": str(err)})
    return {src.split: records}, rejects, {"user": src.path}


def _user_record(src: UserSource, row: Any, lineno: int, buckets: Buckets) -> dict[str, Any]:
    """One row as a record; its id is ``<name>-<id column>``, or ``<name>-<line>`` without one."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    values = {}
    for key, column in src.mapping.items():
        if column not in row or row[column] is None or row[column] == "":
            if key in ("question", "answer"):
                raise ValueError(f"{column}: missing (mapped to {key})")
            continue
        values[key] = row[column]
    question, answer = _as_text(values["question"], "question"), _as_text(values["answer"], "answer")
    steps: list[dict[str, Any]] = []
    if "reasoning" in values:
        text = values["reasoning"]
        if isinstance(text, list) and all(isinstance(t, str) for t in text):
            text = "\n".join(text)
        steps, final = parse_solution(_as_text(text, "reasoning"), require_final=False)
        if final is not None and final != answer.replace(",", ""):
            raise ValueError(f"reasoning: its '####' answer {final!r} differs from the answer {answer!r}")
    shape = shape_meta(steps, buckets)
    meta: dict[str, Any] = {
        "source": src.name,
        "category": _as_text(values["category"], "category") if "category" in values else src.category,
        "difficulty": shape["difficulty"] if steps else "unrated",
        "n_steps": len(steps),
        "ops": shape["ops"],
    }
    if "difficulty" in values:
        diff = values["difficulty"]
        meta["difficulty"] = (
            diff if isinstance(diff, int) and not isinstance(diff, bool) else _as_text(diff, "difficulty")
        )
    rid = f"{src.name}-{_as_text(values['id'], 'id')}" if "id" in values else f"{src.name}-{lineno:05d}"
    return make_record(
        rid, question, answer, steps, meta, f"No worked reasoning was given for this {src.name} item."
    )
