"""Collect real Gemma 3 270M completions on GSM8K test questions, as fixtures for the scorer tests.

    python tests/data/collect_completions.py \
        --model models/gemma-3-270m --gsm8k data/gsm8k/test.jsonl \
        --out tests/data/gemma3_270m_completions.jsonl

Each question is answered greedily from the plain prompt, and again under one of four
rotating settings (two sampled, two primed); every third question also gets a short primed
run that stops at ``</answer>``, as a decoder with that stop string would. A primed
completion starts with text we put in the model's mouth, e.g. ``<reasoning>``, so the
fixture shows a variety of tag behaviours; the saved ``completion`` is the prime plus what
the model generated, up to and including the stop marker (``<end_of_turn>``, ``<eos>`` or
the stop string) when there was one. ``--only NAME`` reruns one setting and merges its
records into the existing file. About 3 minutes on two idle CPU cores (the committed file
took 27 minutes on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a plain script from anywhere

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.jsonl import read_jsonl, write_jsonl
from common.prompts import end_of_turn, format_prompt

N_QUESTIONS = 24
STRIDE = 55  # question indices 0, 55, 110, ...: a spread over the 1,319 test questions
MAX_NEW_TOKENS = 128
BATCH = 8


def gold_and_reasoning(answer_field: str) -> tuple[str, str]:
    """GSM8K's final answer (after ``#### ``) and its worked solution without ``<<…>>`` notes."""
    body, _, gold = answer_field.rpartition("#### ")
    return gold.strip(), re.sub(r"<<[^>]*>>", "", body).strip()


def settings_for(k: int, reasoning: str) -> dict:
    """The second setting for question number ``k`` (rotates through four)."""
    rotation = [
        {"name": "sample_t0.7", "do_sample": True, "temperature": 0.7, "top_p": 0.95, "top_k": 64},
        {"name": "sample_t1.0", "do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0},
        {"name": "primed_reasoning_open", "do_sample": False, "prime": "<reasoning>"},
        {
            "name": "primed_gold_reasoning",
            "do_sample": False,
            "prime": f"<reasoning>{reasoning}</reasoning>\n<answer>",
        },
    ]
    return rotation[k % len(rotation)]


STOP_AT_ANSWER = {
    "name": "primed_gold_reasoning_stop",
    "do_sample": False,
    "stop": "</answer>",
    "max_new_tokens": 16,
}


def generate(model, tokenizer, prompts: list[str], setting: dict, seed: int) -> list[str]:
    """Continue each prompt; returns the generated text including the stop marker if any."""
    stop_ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer)), tokenizer.eos_token_id]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    kwargs = {"do_sample": setting["do_sample"]}
    if setting["do_sample"]:
        kwargs.update(temperature=setting["temperature"], top_p=setting["top_p"], top_k=setting["top_k"])
    if "stop" in setting:
        kwargs.update(stop_strings=[setting["stop"]], tokenizer=tokenizer)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=setting.get("max_new_tokens", MAX_NEW_TOKENS),
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    texts = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        ids = []
        for tok in row:
            if tok == tokenizer.pad_token_id:  # a row that finished early is padded
                break
            ids.append(tok)
            if tok in stop_ids:
                break
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if "stop" in setting and setting["stop"] in text:
            text = text[: text.index(setting["stop"]) + len(setting["stop"])]
        texts.append(text)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/gemma-3-270m")
    parser.add_argument("--gsm8k", default="data/gsm8k/test.jsonl")
    parser.add_argument("--out", default=str(Path(__file__).with_name("gemma3_270m_completions.jsonl")))
    parser.add_argument("--only", action="append", help="run just this setting, merging into --out")
    args = parser.parse_args()

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = read_jsonl(args.gsm8k)

    jobs = []  # (record without completion, full prompt text, setting)
    for k in range(N_QUESTIONS):
        index = k * STRIDE
        gold, reasoning = gold_and_reasoning(rows[index]["answer"])
        question = rows[index]["question"]
        prompt = format_prompt(tokenizer, question)
        settings = [{"name": "greedy", "do_sample": False}, settings_for(k, reasoning)]
        if k % 3 == 0:
            settings.append({**STOP_AT_ANSWER, "prime": f"<reasoning>{reasoning}</reasoning>\n<answer>"})
        for setting in settings:
            if args.only and setting["name"] not in args.only:
                continue
            record = {
                "id": f"gsm8k-test-{index:04d}-{setting['name']}",
                "gsm8k_index": index,
                "setting": setting,
                "question": question,
                "gold": gold,
            }
            jobs.append((record, prompt + setting.get("prime", ""), setting))

    start = time.time()
    records = []
    # Batch jobs that share a generation setting (left padding keeps greedy results per row).
    by_kind: dict[str, list] = {}
    for job in jobs:
        by_kind.setdefault(job[2]["name"], []).append(job)
    for kind, group in by_kind.items():
        for i in range(0, len(group), BATCH):
            chunk = group[i : i + BATCH]
            texts = generate(model, tokenizer, [p for _, p, _ in chunk], chunk[0][2], seed=1000 + i)
            for (record, _, setting), text in zip(chunk, texts, strict=True):
                records.append({**record, "completion": setting.get("prime", "") + text})
            print(f"{kind}: {i + len(chunk)}/{len(group)} done, {time.time() - start:.0f}s", flush=True)
    if args.only:  # keep the other settings' records from the existing file
        records += [r for r in read_jsonl(args.out) if r["setting"]["name"] not in args.only]
    records.sort(key=lambda r: r["id"])
    write_jsonl(args.out, records)
    print(f"wrote {len(records)} completions to {args.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
