"""GRPO log-probs: the chunked LM head equals full-logit log_softmax (values and gradients),
and the packed completion log-probs equal a plain unpacked forward on the tiny model."""

from __future__ import annotations

import pytest
import torch

from common.sft_data import Example, pack_rows
from trainers_torch.data import collate
from trainers_torch.losses import completion_logprobs, lm_head_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_logprobs(hidden, weight, targets, softcap, temperature):
    z = hidden @ weight.t()
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return torch.log_softmax(z / temperature, dim=-1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("train_head", [False, True])
@pytest.mark.parametrize("block", [2048, 32])  # the vocabulary in one block; in 4, the last short
def test_chunked_head_logprobs_equal_full_log_softmax(softcap, temperature, train_head, block, monkeypatch):
    monkeypatch.setattr("trainers_torch.losses.VOCAB_BLOCK", block)
    torch.manual_seed(0)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False).double()
    head.weight.requires_grad_(train_head)
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n, dtype=torch.float64)

    got = lm_head_logprobs(hidden, head, targets, 8, softcap, temperature)  # 5 chunks, the last short
    want = reference_logprobs(hidden, head.weight, targets, softcap, temperature)
    torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-5)

    (g_hidden,) = torch.autograd.grad((got * upstream).sum(), [hidden], retain_graph=train_head)
    (w_hidden,) = torch.autograd.grad((want * upstream).sum(), [hidden], retain_graph=train_head)
    torch.testing.assert_close(g_hidden, w_hidden, rtol=1e-5, atol=1e-6)
    if train_head:
        (g_w,) = torch.autograd.grad((got * upstream).sum(), [head.weight])
        (w_w,) = torch.autograd.grad((want * upstream).sum(), [head.weight])
        torch.testing.assert_close(g_w, w_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the no-grad path gives the same values
        torch.testing.assert_close(lm_head_logprobs(hidden, head, targets, 8, softcap, temperature), got)


def test_packed_completion_logprobs_equal_unpacked_full_logits(tiny_gemma3):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_gemma3), dtype=torch.float32).eval()
    torch.manual_seed(1)
    examples = []
    for k, (n_prompt, n_completion) in enumerate([(9, 5), (14, 1), (6, 11), (20, 3)]):
        ids = torch.randint(6, 100, (n_prompt + n_completion,)).tolist()
        examples.append(Example(str(k), k, ids, n_prompt))
    rows = pack_rows([len(e) for e in examples], [2, 0, 3, 1], pack_tokens=32)
    assert any(len(r) > 1 for r in rows)  # really packed
    batch = collate(examples, rows, pad_id=0)
    with torch.no_grad():
        got = completion_logprobs(lm, batch, chunk=4, temperature=0.9)
        want = []
        for i in [i for row in rows for i in row]:
            ex = examples[i]
            logits = lm(input_ids=torch.tensor([ex.ids])).logits[0].float()
            lp = torch.log_softmax(logits / 0.9, dim=-1)
            pos = torch.arange(ex.n_prompt - 1, len(ex.ids) - 1)
            want.append(lp[pos, torch.tensor(ex.ids[ex.n_prompt :])])
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-4, atol=1e-4)
