"""The SFT loss: chunked LM head == HF's full loss; packed rows == examples one by one."""

from __future__ import annotations

import pytest
import torch

from common.prompts import end_of_turn, format_target, load_tokenizer
from common.sft_config import DataConfig
from common.sft_data import pack_rows, tokenize_records
from tests.sft_data import arithmetic_records, write_records
from trainers_torch.data import collate
from trainers_torch.losses import IGNORE, completion_loss_sum, lm_head_logprobs, lm_head_loss_sum
from trainers_torch.model import sparse_tied_embedding, tied_lookup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_tiny(path, attn="sdpa", softcap=None):
    """The tiny Gemma 3 with one sliding-window layer and one full-attention layer."""
    from transformers import AutoModelForCausalLM

    from trainers_torch.model import register_packed_sdpa

    register_packed_sdpa()
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=torch.float32,
        attn_implementation=attn,
        layer_types=["sliding_attention", "full_attention"],
    )
    model.config.final_logit_softcapping = softcap
    model.config.use_cache = False
    return model.eval()


@pytest.fixture(scope="module")
def examples(tiny_gemma3, tmp_path_factory):
    tok = load_tokenizer(tiny_gemma3)
    path = write_records(tmp_path_factory.mktemp("data") / "train.jsonl", arithmetic_records(6, seed=3))
    ex, records, report = tokenize_records(path, tok, DataConfig(max_len=600, pack_tokens=2000))
    assert report["overflow_count"] == 0 and len(ex) == 6
    return tok, ex, records


def test_targets_are_exactly_the_completion(examples):
    tok, ex, records = examples
    batch = collate(ex, [[0, 1]], pad_id=tok.pad_token_id)
    targets = batch.targets[0]
    ids = batch.input_ids[0]
    # each example's targets decode to its trace target + end of turn, nothing of the prompt
    n0 = len(ex[0])
    t0 = targets[:n0][targets[:n0] != IGNORE].tolist()
    assert "".join(tok.convert_ids_to_tokens(t0)) == format_target(
        records[0]["reasoning"], records[0]["answer"]
    ) + end_of_turn(tok)
    # the target at position t is the token at t + 1
    keep = (targets != IGNORE).nonzero().squeeze(1)
    assert torch.equal(targets[keep], ids[keep + 1])
    # no target crosses from example 0 into example 1 (example 1 starts with its prompt)
    assert targets[n0 - 1] == IGNORE
    assert batch.position_ids[0, n0] == 0 and batch.position_ids[0, n0 - 1] == n0 - 1
    assert batch.n_targets == sum(len(e) - e.n_prompt for e in ex[:2])


@pytest.mark.parametrize("block", [2048, 48])  # the tiny vocabulary (128) in one block; in 3, the last short
@pytest.mark.parametrize(("softcap", "sparse"), [(None, False), (3.0, False), (None, True)])
def test_chunked_loss_and_grads_equal_hf_full_loss(
    tiny_gemma3, examples, softcap, sparse, block, monkeypatch
):
    """The chunked head's loss and gradients equal HF's full-logit loss, whether the vocabulary
    is one block or several (``VOCAB_BLOCK``)."""
    monkeypatch.setattr("trainers_torch.losses.VOCAB_BLOCK", block)
    tok, ex, _ = examples
    e = ex[1]
    ids = torch.tensor([e.ids])
    labels = ids.clone()
    labels[0, : e.n_prompt] = IGNORE

    ref = load_tiny(tiny_gemma3, softcap=softcap)
    ref_loss = ref(input_ids=ids, labels=labels).loss
    ref_loss.backward()

    model = load_tiny(tiny_gemma3, softcap=softcap)
    if sparse:  # what build_model does for full fine-tuning: the tied lookup's gradient goes in sparse
        sparse_tied_embedding(model)
        assert model.get_input_embeddings().sparse
    batch = collate(ex, [[1]], pad_id=tok.pad_token_id)
    assert batch.n_targets > 7
    loss = completion_loss_sum(model, batch, chunk=7) / batch.n_targets  # several chunks
    loss.backward()

    assert abs(loss.item() - ref_loss.item()) < 1e-5
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():  # includes the tied embedding / lm_head weight
        assert p.grad.layout == torch.strided, name  # dense, as the fused AdamW and clipping need
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss", ["sft", "logprobs"])
def test_tied_lookup_rows_are_added_in_place_across_micro_batches(tiny_gemma3, examples, loss):
    """Full fine-tuning of the tied embedding: two micro-batches' gradients (the SFT loss, or
    GRPO's per-token log-probs) equal those of the plain dense lookup, and no [vocab, H] sum is
    formed out of place (autograd's dense + sparse sum through the tied weight would)."""
    from torch.profiler import ProfilerActivity, profile

    from trainers_torch.losses import completion_logprobs

    tok, ex, _ = examples
    batches = [collate(ex, [[0, 2]], pad_id=tok.pad_token_id), collate(ex, [[4]], pad_id=tok.pad_token_id)]

    def grads(sparse: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
        model = load_tiny(tiny_gemma3)
        if sparse:
            sparse_tied_embedding(model)
        weight = model.get_input_embeddings().weight
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for i, b in enumerate(batches):
                if loss == "sft":
                    out = completion_loss_sum(model, b, chunk=7) / 10.0
                else:  # a weighted sum of log-probs, as GRPO's loss is
                    logp = completion_logprobs(model, b, chunk=7, temperature=0.7)
                    out = (logp * torch.linspace(-1.0, 1.0, logp.numel())).sum() * (i + 1)
                out.backward()
        vh = list(weight.shape)
        summed = [  # out of place: aten::add itself, not the out= call inside aten::add_
            e.name for e in prof.events() if e.name == "aten::add" and e.input_shapes[:1] == [vh]
            and (e.cpu_parent is None or e.cpu_parent.name != "aten::add_")
        ]  # fmt: skip
        return {n: p.grad for n, p in model.named_parameters()}, summed

    dense, _ = grads(sparse=False)
    rows, summed = grads(sparse=True)
    assert summed == []
    for name, g in rows.items():
        assert g.layout == torch.strided, name
        torch.testing.assert_close(g, dense[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sparse_lookup_only_for_a_trained_tied_embedding(tiny_gemma3):
    ids = torch.tensor([[5, 7, 9]])
    model = load_tiny(tiny_gemma3)
    sparse_tied_embedding(model)
    assert model.get_input_embeddings().sparse
    with torch.no_grad():  # evaluation and generation look up as usual
        assert tied_lookup(model, ids) is None
    torch.testing.assert_close(tied_lookup(model, ids), model.get_input_embeddings()(ids), rtol=0, atol=0)
    model = load_tiny(tiny_gemma3)
    model.get_input_embeddings().weight.requires_grad_(False)  # LoRA / last-N-layer runs
    sparse_tied_embedding(model)
    assert not model.get_input_embeddings().sparse
    assert tied_lookup(model, ids) is None


def test_bfloat16_head_keeps_confident_rows_gradients(monkeypatch):
    """With a bfloat16 head, loss and d loss / d hidden are those of the logits as the bfloat16
    product rounds them, also on rows the model already predicts (p ≈ 0.99): softmax - onehot
    is formed in float32 before its product, where rounding p to bfloat16 first would leave
    -0.01 ± 0.002 at the target."""
    monkeypatch.setattr("trainers_torch.losses.VOCAB_BLOCK", 64)  # 5 blocks, the last short
    torch.manual_seed(0)
    n, h, v = 24, 32, 300
    head = torch.nn.Linear(h, v, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(n, h).to(torch.bfloat16)
    targets = (hidden.double() @ head.weight.double().t()).argmax(-1)
    hidden = (hidden.double() * 25).to(torch.bfloat16)  # confident: p(target) near 1 on most rows
    x = hidden.clone().requires_grad_(True)
    got = lm_head_loss_sum(x, head, targets, chunk=10, softcap=None)
    got.backward()

    rounded = (hidden @ head.weight.t()).double()  # the logits as the bfloat16 product gives them
    p = rounded.softmax(-1)
    p_target = p.gather(1, targets[:, None]).squeeze(1)
    want = torch.nn.functional.cross_entropy(rounded, targets, reduction="sum")
    assert abs(got.item() - want.item()) < 1e-4 * want.item()
    p[torch.arange(n), targets] -= 1.0
    want_grad = p @ head.weight.double()
    # rows near 1 - 1e-9 carry no gradient float32 can hold; judge the confident rows below that
    judged = (p_target > 0.95) & (p_target < 0.999)
    assert judged.sum() >= 6, p_target
    rel = (x.grad.double() - want_grad).norm(dim=1) / want_grad.norm(dim=1)
    assert rel[judged].max() < 2e-2, rel[judged]


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("kind", ["loss", "logprobs"])
def test_trained_head_with_bias_gets_autograd_gradients(monkeypatch, softcap, kind):
    """A head whose weight and bias train: the loss (or weighted log-probs at temperature 0.7)
    and the hidden, weight and bias gradients equal autograd's through the full logits
    (5 vocabulary blocks, the last short; chunks of 7 rows)."""
    monkeypatch.setattr("trainers_torch.losses.VOCAB_BLOCK", 64)
    torch.manual_seed(0)
    n, h, v = 20, 16, 300
    head = torch.nn.Linear(h, v, bias=True)
    with torch.no_grad():
        head.bias.normal_(0.0, 0.5)
    hidden, targets, weights = torch.randn(n, h) * 2.0, torch.randint(0, v, (n,)), torch.randn(n)

    def run(fused: bool) -> list[torch.Tensor]:
        x = hidden.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        if fused and kind == "loss":
            out = lm_head_loss_sum(x, head, targets, chunk=7, softcap=softcap)
        elif fused:
            out = (lm_head_logprobs(x, head, targets, 7, softcap, temperature=0.7) * weights).sum()
        else:
            z = head(x)
            z = torch.tanh(z / softcap) * softcap if softcap else z
            if kind == "loss":
                out = torch.nn.functional.cross_entropy(z, targets, reduction="sum")
            else:
                out = (torch.log_softmax(z / 0.7, -1).gather(1, targets[:, None]).squeeze(1) * weights).sum()
        out.backward()
        return [out.detach(), x.grad, head.weight.grad, head.bias.grad]

    for got, want, name in zip(run(True), run(False), ("value", "hidden", "weight", "bias"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_chunked_loss_backward_runs_once(tiny_gemma3):
    model = load_tiny(tiny_gemma3)
    h = torch.randn(10, model.config.hidden_size, requires_grad=True)
    y = torch.randint(0, model.config.vocab_size, (10,))
    loss = lm_head_loss_sum(h, model.lm_head, y, chunk=3, softcap=None)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()


def test_head_loss_without_grad_matches(tiny_gemma3):
    model = load_tiny(tiny_gemma3, softcap=2.0)
    h = torch.randn(10, model.config.hidden_size)
    y = torch.randint(0, model.config.vocab_size, (10,))
    logits = model.lm_head(h)
    logits = torch.tanh(logits / 2.0) * 2.0
    want = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    with torch.no_grad():
        got = lm_head_loss_sum(h, model.lm_head, y, chunk=3, softcap=2.0)
    assert abs(got.item() - want.item()) < 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager", "packed_sdpa"])
def test_packed_loss_equals_unpacked(tiny_gemma3, examples, attn):
    tok, ex, _ = examples
    model = load_tiny(tiny_gemma3, attn=attn)
    sliding = model.config.sliding_window
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert all(len(e) > 2 * sliding for e in ex)  # the sliding-window layers really slide
    with torch.no_grad():
        one_by_one = sum(
            completion_loss_sum(model, collate(ex, [[i]], tok.pad_token_id), 5).item() for i in range(4)
        )
        row = pack_rows([len(e) for e in ex[:4]], [0, 1, 2, 3], pack_tokens=10_000)
        assert row == [[0, 1, 2, 3]]
        packed = completion_loss_sum(model, collate(ex, row, tok.pad_token_id), 5).item()
        # two rows of different lengths in one batch: right padding is a separate segment
        two_rows = collate(ex, [[0, 1], [2], [3]], tok.pad_token_id)
        padded = completion_loss_sum(model, two_rows, 5).item()
        # control: the same row without per-example positions (plain causal attention) differs
        naive = collate(ex, row, tok.pad_token_id)
        naive.position_ids = torch.arange(naive.input_ids.shape[1])[None]
        crossed = completion_loss_sum(model, naive, 5).item()
    assert abs(packed - one_by_one) / one_by_one < 1e-5
    assert abs(padded - one_by_one) / one_by_one < 1e-5
    assert abs(crossed - one_by_one) / one_by_one > 1e-4  # 10x the tolerance above


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # with dropout, the recompute replays the masks
def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_gemma3, examples, dropout):
    from common.sft_config import load_sft_config
    from trainers_torch.model import build_model

    tok, ex, _ = examples
    batch = collate(ex, [[0, 1]], tok.pad_token_id)
    grads = []
    for gc in (False, True):
        torch.manual_seed(0)
        cfg = load_sft_config(
            None,
            [f"model.path={tiny_gemma3}", f"lora.dropout={dropout}", f"train.gradient_checkpointing={gc}"],
        )
        model = build_model(cfg.model, cfg.lora, cfg.train).train()
        assert all(layer.gradient_checkpointing == gc for layer in model.get_base_model().model.layers)
        with torch.no_grad():  # make the adapters matter (lora_B starts at zero)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
        loss = completion_loss_sum(model, batch, 64) / batch.n_targets
        loss.backward()
        grads.append(
            (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        )
    assert abs(grads[0][0] - grads[1][0]) < 1e-6
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, rtol=1e-4, atol=1e-7, msg=n)


def test_bfloat16_training_step(tiny_gemma3, examples, monkeypatch, capsys):
    import trainers_torch.model
    from common.sft_config import load_sft_config
    from trainers_torch.model import build_model
    from trainers_torch.optim import build_optimizer

    monkeypatch.setattr(trainers_torch.model, "native_bf16", lambda: False)

    tok, ex, _ = examples
    batch = collate(ex, [[0, 1]], tok.pad_token_id)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        cfg = load_sft_config(None, [f"model.path={tiny_gemma3}", f"model.dtype={dtype}", "lora.dropout=0.0"])
        model = build_model(cfg.model, cfg.lora, cfg.train).train()
        warned = "model.dtype=bfloat16 is many times slower" in "".join(capsys.readouterr())
        assert warned == (dtype == "bfloat16")  # said on a CPU without native bfloat16 (patched)
        opt = build_optimizer(model, cfg.optim)
        loss = completion_loss_sum(model, batch, 64) / batch.n_targets
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        opt.step()
        losses[dtype] = loss.item()
    assert abs(losses["bfloat16"] - losses["float32"]) / losses["float32"] < 2e-2


def test_lora_plus_scales_only_the_b_matrices_rate(tiny_gemma3, examples):
    """``optim.lora_b_lr_ratio`` (LoRA+): the B matrices' group runs at lr x ratio through the
    schedule; on the first step (B = 0, so A has no gradient) B moves ratio times as far."""
    from common.errors import InputError
    from common.sft_config import load_sft_config
    from trainers_torch.model import build_model
    from trainers_torch.optim import build_optimizer, build_scheduler, is_lora_b

    tok, ex, _ = examples
    batch = collate(ex, [[0, 1]], tok.pad_token_id)
    moved = {}
    for ratio in (1.0, 4.0):
        torch.manual_seed(0)
        cfg = load_sft_config(None, [f"model.path={tiny_gemma3}", "lora.dropout=0.0", "optim.lr=1e-3",
                                     "optim.warmup_steps=0", f"optim.lora_b_lr_ratio={ratio}"])  # fmt: skip
        model = build_model(cfg.model, cfg.lora, cfg.train).train()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        opt = build_optimizer(model, cfg.optim)
        sched = build_scheduler(opt, 10, cfg.optim)
        (completion_loss_sum(model, batch, 64) / batch.n_targets).backward()
        opt.step()
        moved[ratio] = {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}
        sched.step()
        sched.step()  # two steps into the cosine: both groups' rates scaled by the same factor
        names = {id(p): n for n, p in model.named_parameters()}
        rate = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
        rate_a = {r for n, r in rate.items() if ".lora_A." in n}
        rate_b = {r for n, r in rate.items() if is_lora_b(n)}
        (ra,), (rb,) = rate_a, rate_b
        assert ra < 1e-3 and rb == pytest.approx(ra * ratio)  # both scheduled down from their start
    b_names = [n for n in moved[1.0] if is_lora_b(n)]
    assert b_names and len(b_names) < len(moved[1.0])
    for n, d in moved[1.0].items():
        if is_lora_b(n):
            assert d.abs().max() > 0
            torch.testing.assert_close(moved[4.0][n], 4.0 * d, rtol=1e-5, atol=1e-9, msg=n)
        else:
            assert moved[4.0][n].abs().max() == 0 and d.abs().max() == 0, n  # A: no gradient yet
    full = load_sft_config(
        None, [f"model.path={tiny_gemma3}", "train.method=full", "optim.lora_b_lr_ratio=4"]
    )
    with pytest.raises(InputError, match="lora_b_lr_ratio=4.0: the model has no LoRA B"):
        build_optimizer(build_model(full.model, full.lora, full.train), full.optim)
    with pytest.raises(InputError, match="lora_b_lr_ratio must be > 0"):
        load_sft_config(None, ["optim.lora_b_lr_ratio=0"])


def test_keep_freed_memory_sets_glibc_malloc_options():
    import platform

    from trainers_torch.model import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory("cuda") is False  # nothing to set off the CPU
    assert keep_freed_memory("cpu") is True
    big = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MB: past glibc's largest mmap threshold
    big.fill_(1)
    assert int(big.sum()) == 64 << 20  # the heap serves it


def test_full_bfloat16_warns_that_small_updates_are_lost(tiny_gemma3, examples, capsys):
    """``train.method=full`` on a bfloat16 model trains the bfloat16 weights in place: the trainer
    says so, and it is true (an AdamW step at lr 1e-5 leaves most trained weights bit for bit
    as they were, where float32 moves every one). LoRA keeps its adapters in float32: no warning."""
    from common.sft_config import load_sft_config
    from trainers_torch.model import build_model
    from trainers_torch.optim import build_optimizer

    tok, ex, _ = examples
    batch = collate(ex, [[0, 1]], tok.pad_token_id)
    unchanged = {}
    for method, dtype in (("full", "float32"), ("full", "bfloat16"), ("lora", "bfloat16")):
        torch.manual_seed(0)
        cfg = load_sft_config(None, [f"model.path={tiny_gemma3}", f"model.dtype={dtype}", f"train.method={method}",
                                     "train.trainable_layers=1", "optim.lr=1e-5", "optim.warmup_steps=0",
                                     "optim.weight_decay=0.0", "lora.dropout=0.0"])  # fmt: skip
        model = build_model(cfg.model, cfg.lora, cfg.train).train()
        warned = "is lost; model.dtype=float32 keeps every update" in "".join(capsys.readouterr())
        assert warned == (method == "full" and dtype == "bfloat16"), (method, dtype)
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if method == "lora":
            assert {p.dtype for p in trained.values()} == {torch.float32}
            continue
        before = {n: p.detach().clone() for n, p in trained.items() if p.ndim == 2}
        opt = build_optimizer(model, cfg.optim)
        (completion_loss_sum(model, batch, 64) / batch.n_targets).backward()
        opt.step()
        same = sum(int((trained[n].detach() == w).sum()) for n, w in before.items())
        unchanged[dtype] = same / sum(w.numel() for w in before.values())
    assert unchanged["float32"] < 0.01 and unchanged["bfloat16"] > 0.5, unchanged


@pytest.mark.parametrize(
    ("dtype", "method", "adapters_in_float32", "says"),
    [
        ("float32", "full", False, False),
        ("bfloat16", "full", True, True),
        ("bfloat16", "lora", True, False),
        ("bfloat16", "lora", False, True),
    ],
)
def test_lost_updates_note_names_what_trains_in_low_precision(dtype, method, adapters_in_float32, says):
    from common.sft_config import ModelConfig

    note = ModelConfig(dtype=dtype).lost_updates_note(method, adapters_in_float32)
    assert (note is not None) == says
    if note:
        assert f"train.method={method}" in note and ("LoRA adapters" in note) == (method == "lora")
