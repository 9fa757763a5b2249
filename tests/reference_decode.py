"""transformers' own ``generate`` as the reference the eval decode loop is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evals import generate as gen


def transformers_generate(
    model: Any, tok: Any, prompts: list[str], settings: gen.DecodeSettings, return_ids: bool = False
) -> list[dict]:
    """The batch through ``model.generate`` (greedy, left padding, the same stop tokens), each
    row cut and described by ``evals.generate``'s own ``_finish``."""
    import torch
    from transformers import GenerationConfig

    stops = gen.stop_token_ids(tok, settings)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    cfg = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        eos_token_id=list(stops),
        pad_token_id=tok.pad_token_id,
    )
    with torch.inference_mode():
        new = model.generate(**enc, generation_config=cfg)[:, enc.input_ids.shape[1] :].tolist()
    n_prompt = enc.attention_mask.sum(dim=1).tolist()
    return [gen._finish(tok, new[k], stops, int(n_prompt[k]), return_ids) for k in range(len(prompts))]


QUESTIONS = ["3 and 4?", "12 and 5, times 3?", "41 and 7?", "What is 7 times 8?"]


def completion_ids(path: Path | str, backend: str, max_new_tokens: int) -> list[list[int]]:
    """Greedy completion token ids of ``QUESTIONS`` from the model ``path`` names, loaded by
    ``evals.load`` on ``backend`` and decoded by ``evals.generate``."""
    from evals import generate as gen
    from evals import load

    model, tok = load.load_for_eval(load.resolve_model(str(path)), backend)
    prompts = [gen.build_prompt(tok, q, "text") for q in QUESTIONS]
    settings = gen.DecodeSettings(max_new_tokens=max_new_tokens)
    out = gen.generate_completions(
        model, tok, prompts, settings, batch_size=4, progress=False, return_ids=True
    )
    return [r["completion_ids"] for r in out]
