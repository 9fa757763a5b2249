"""Solver-answer decoding and the YAML-trace evals, on a tiny Gemma 3 that writes scripted text.

The tiny random model runs through the real decode loop (KV cache, stops, tokenizer); a thin
wrapper adds a large logit to the next character of a scripted completion, so the test knows
what the model writes: a trace that executes (the solver's answer replaces the model's wrong
one), a trace that does not (the model's own answer stands), and no trace at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evals import generate as gen
from evals.solver_answer import with_solver_answer

TRACE = (
    "expert: rate_equation\ntrace:\n- {op: init, var: rate, value: 12}\n- {op: init, var: time, value: 3}\n"
    "- {op: compute, compute_op: mul, args: [rate, time], var: result}\n- {op: query, var: result}"
)
SCRIPTS = {  # question -> what the model writes
    "good": f"<reasoning>{TRACE}</reasoning><answer>35</answer>",  # the trace gives 36; the model wrote 35
    "bad": "<reasoning>expert: rate_equation\ntrace:\n- {op: init, var: rate, value: 12}\n- {op: query, var: rate}"
    "</reasoning><answer>12</answer>",  # a short-circuit: does not execute
    "text": "<reasoning>12 * 3 = 36</reasoning><answer>36</answer>",  # no trace
}
ITEMS = [
    {"id": f"q-{k}", "question": k, "answer": "36", "reasoning": "r",
     "steps": [{"i": 1, "type": "text", "content": "r"}],
     "meta": {"source": "t", "category": "rate_equation", "difficulty": "easy", "experts": ["rate_equation"]}}
    for k in SCRIPTS
]  # fmt: skip


def test_with_solver_answer() -> None:
    res = with_solver_answer(SCRIPTS["good"] + "<end_of_turn>")
    assert res["completion"] == f"<reasoning>{TRACE}</reasoning><answer>36</answer>"
    assert (res["answer_source"], res["solver_value"]) == ("solver", "36")
    assert res["model_completion"].endswith("<answer>35</answer><end_of_turn>")
    for key in ("bad", "text"):
        res = with_solver_answer(SCRIPTS[key])
        assert res["completion"] == res["model_completion"] == SCRIPTS[key]
        assert (res["answer_source"], res["solver_value"]) == ("model", None)
    half = "<reasoning>" + TRACE  # cut off before </reasoning>: nothing to execute
    assert with_solver_answer(half)["completion"] == half
    decimal = with_solver_answer(f"<reasoning>{TRACE.replace('value: 3}', 'value: 0.25}')}</reasoning>")
    assert decimal["completion"].endswith("<answer>3</answer>")


class Scripted:
    """Wraps a tiny causal LM: at each step the next character of the prompt's script wins."""

    def __new__(cls, lm: Any, tok: Any) -> Any:
        import torch

        class _Scripted(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lm, self.config, self.ids, self.k = lm, lm.config, [], 0

            def forward(self, input_ids: Any, **kwargs: Any) -> Any:
                if input_ids.shape[1] > 1:  # prefill: which question is this?
                    text = tok.decode(input_ids[0])
                    question = next(
                        q for q in SCRIPTS if text.endswith(f"\n{q}<end_of_turn>\n<start_of_turn>model\n")
                    )
                    self.ids = tok(SCRIPTS[question] + "<end_of_turn>", add_special_tokens=False).input_ids
                    self.k = 0
                out = self.lm(input_ids=input_ids, **kwargs)
                out.logits[:, -1, self.ids[min(self.k, len(self.ids) - 1)]] += 1e4
                self.k += 1
                return out

        return _Scripted()


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tokenizers import Tokenizer, decoders

    from tests.tiny import build_gemma3
    from trainers_torch.model import load_model

    path = build_gemma3(tmp_path / "tiny")
    tok_file = path / "tokenizer.json"  # decode characters back to text without separators
    fused = Tokenizer.from_file(str(tok_file))
    fused.decoder = decoders.Fuse()
    fused.save(str(tok_file))
    lm, tok = load_model(path)
    monkeypatch.setattr(gen, "load_for_eval", lambda *a, **k: (Scripted(lm, tok), tok))
    return path


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_solver_answer_decoding_on_a_tiny_model(scripted: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "items.jsonl", ITEMS)
    out = tmp_path / "preds.jsonl"
    cfg = gen.GenerateConfig(
        model=gen.ModelSpec(path=str(scripted)),
        data=gen.DataSpec(path=str(data), n=0, prompt="yaml"),
        decode=gen.DecodeSettings(max_new_tokens=400, solver_answer=True),
        batch_size=1,
        out=str(out),
    )
    gen.run(cfg, progress=False)
    preds = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    good, bad, text = preds["q-good"], preds["q-bad"], preds["q-text"]
    assert good["model_completion"] == SCRIPTS["good"]  # what the model decoded, up to its end of turn
    assert good["completion"] == f"<reasoning>{TRACE}</reasoning><answer>36</answer>"
    assert (good["answer_source"], good["solver_value"], good["stop_reason"]) == (
        "solver",
        "36",
        "end_of_turn",
    )
    assert bad["completion"] == bad["model_completion"] == SCRIPTS["bad"] and bad["answer_source"] == "model"
    assert text["completion"] == SCRIPTS["text"] and text["solver_value"] is None
    assert good["decoding"]["solver_answer"] is True

    # Scored both ways: the submitted (solver) answers and the answers the model wrote itself.
    from evals.traces import score_set

    s = score_set(list(preds.values()), ITEMS)
    assert s["strict_accuracy"] == pytest.approx(2 / 3)  # good (solver 36) and text (model 36)
    assert s["model_answer_accuracy"] == pytest.approx(1 / 3)  # only the text item wrote 36
    assert (s["parse_rate"], s["valid_rate"], s["solver_accuracy"]) == pytest.approx((2 / 3, 1 / 3, 1 / 3))
    assert s["answer_sources"] == {"solver": 1, "model": 2}
    assert s["trace_outcomes"]["short_circuit"] == 1 and s["trace_outcomes"]["parse_failure"] == 1
    assert s["by_trace_experts"]["rate_equation"] == {
        "n": 2,
        "solver_accuracy": 0.5,
        "solver_accuracy_ci95": pytest.approx([0.0945, 0.9055], abs=1e-3),
    }


def test_traces_eval_writes_summary_report_and_headline(scripted: Path, tmp_path: Path, capsys: Any) -> None:
    from evals import traces

    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"train_seconds": 12.5}))
    data = _write(tmp_path / "items.jsonl", ITEMS)
    free = _write(tmp_path / "free.jsonl", [
        {"id": "q-good", "completion": "<reasoning>x</reasoning><answer>36</answer>"},
        {"id": "q-bad", "completion": "<reasoning>x</reasoning><answer>1</answer>"},
        {"id": "q-text", "completion": "<reasoning>x</reasoning><answer>2</answer>"},
    ])  # fmt: skip
    cfg = [f"sets=[{{name: heldout_seed, path: {data}, n: 0}}, {{name: gsm8k, path: {data}, n: 0}}]",
           f"freetext={free}", "batch_size=1", f"model.base={scripted}"]  # fmt: skip
    # the run dir holds no model: point the run at the tiny model through the monkeypatched loader
    (run / "config.yaml").write_text(f"model:\n  path: {scripted}\n")
    import shutil

    shutil.copytree(scripted, run / "merged")
    traces.main(["--run", str(run), *cfg])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    head = json.loads(line)
    assert head["synthetic_seed_accuracy"] == pytest.approx(2 / 3)
    assert head["gsm8k_n"] == 3 and head["gsm8k_accuracy"] == pytest.approx(2 / 3)
    assert head["freetext_gsm8k_accuracy"] == pytest.approx(1 / 3)
    assert head["paired_p"] == 1.0 and head["train_seconds"] == 12.5
    assert head["synthetic_template_accuracy"] is None  # no such set in this config
    summary = json.loads((run / "eval" / "traces_summary.json").read_text())
    assert summary["headline"] == head
    assert summary["freetext"]["metrics"]["strict"]["table"] == {
        "both": 1,
        "a_only": 0,
        "b_only": 1,
        "neither": 1,
    }
    html = (run / "eval" / "traces_report.html").read_text()
    assert "Against the free-text run" in html and "McNemar" in html and "rate_equation" in html
    assert "by the question's numbers" in html


def test_accuracy_by_whether_the_question_repeats_a_number() -> None:
    from evals.traces import repeats_a_number, score_set

    assert repeats_a_number("Jonah had 14 and returns 14 of them.")
    assert repeats_a_number("Lamps cost $13; she buys 13.") and repeats_a_number("1.5 kg, then 1.50 kg")
    assert not repeats_a_number("Lena has 43 balloons and Ingrid has 18; 1,800 more.")
    assert not repeats_a_number("no numbers here")
    items = [
        {"id": "a", "question": "Tom has 3 and gets 3 more.", "answer": "6"},
        {"id": "b", "question": "Tom has 3 and gets 4 more.", "answer": "7"},
        {"id": "c", "question": "Tom has 5 and gets 4 more.", "answer": "9"},
    ]
    right = "<reasoning>r</reasoning><answer>{}</answer>"
    preds = [  # a: submitted right, written wrong; b: both right; c: both wrong
        {"id": "a", "completion": right.format(6), "model_completion": right.format(5)},
        {"id": "b", "completion": right.format(7), "model_completion": right.format(7)},
        {"id": "c", "completion": right.format(1), "model_completion": right.format(1)},
    ]
    s = score_set(preds, items)["by_question_numbers"]
    assert s["a number repeated"]["n"] == 1 and s["a number repeated"]["strict_accuracy"] == 1.0  # submitted
    assert s["all distinct"]["n"] == 2 and s["all distinct"]["strict_accuracy"] == 0.5
    assert s["all distinct"]["strict_accuracy_ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-3)
