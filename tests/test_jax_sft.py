"""JAX SFT (trainers_jax.sft) against the torch recipe: same weights + same rows → same loss,
before and after one AdamW step (Gemma 3, Gemma 2 with its final-logit soft-cap and a sliding
window shorter than the packed rows, and Llama with a ChatML template); the fsdp=2 path; Orbax
resume; the merged HF export."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from common import sft_data
from common.prompts import load_tokenizer
from common.sft_config import DataConfig
from tests.sft_data import arithmetic_records, write_records

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64


@pytest.fixture(scope="module")
def tiny6(tmp_path_factory):
    """Six layers: five sliding-window + one global, Gemma 3's pattern (so packing masks matter)."""
    from tests.tiny import build_gemma3

    return build_gemma3(tmp_path_factory.mktemp("tiny6"), layers=6)


def packed_rows(model_dir: Path, path: Path) -> tuple[list[sft_data.Example], list[list[int]]]:
    """The records at ``path`` tokenized for ``model_dir`` (its chat template), the first two packed rows."""
    tok = load_tokenizer(model_dir)
    examples, _, _ = sft_data.tokenize_records(path, tok, DataConfig(max_len=400, pack_tokens=1024))
    packed = sft_data.pack_rows([len(e) for e in examples], list(range(len(examples))), 1024)
    return examples, packed[:2]


@pytest.fixture(scope="module")
def rows(tiny6, tmp_path_factory):
    path = write_records(tmp_path_factory.mktemp("data") / "train.jsonl", arithmetic_records(12))
    return (*packed_rows(tiny6, path), path)


@pytest.mark.parametrize("model_fixture", ["tiny6", "tiny_gemma2", "tiny_llama"])
def test_loss_and_one_adamw_step_match_torch(model_fixture, rows, request):
    from transformers import AutoModelForCausalLM

    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.losses import device_arrays, eval_loss_sum
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import build_optimizer, train_step
    from trainers_torch.data import collate
    from trainers_torch.losses import completion_loss_sum
    from trainers_torch.model import attention_for
    from trainers_torch.optim import build_optimizer as torch_optimizer

    torch.set_num_threads(1)
    path = request.getfixturevalue(model_fixture)
    examples, packed = packed_rows(path, rows[2])  # through this model's tokenizer and chat template
    overrides = [f"model.path={path}", "train.method=full", "optim.warmup_steps=0", "optim.weight_decay=0.01",
                 "optim.max_grad_norm=1.0", f"train.loss_chunk_tokens={CHUNK}"]  # fmt: skip
    cfg = load_sft_config(None, overrides)
    attn = attention_for(
        json.loads((path / "config.json").read_text())
    )  # eager keeps Gemma 2's attention cap
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation=attn)
    lm.config.use_cache = False
    micro_t = [collate(examples, [r], 0) for r in packed]  # two micro-batches: grad accumulation
    micro_n = [sft_data.collate(examples, [r], 0) for r in packed]
    n_targets = sum(b.n_targets for b in micro_n)

    mesh = make_mesh(1, 1)
    model, _ = build_model(cfg, mesh)
    arrays = [device_arrays(b, CHUNK, 1024, 400) for b in micro_n]  # Gemma 3: banded (400 = max_len)

    def losses():
        t = sum(completion_loss_sum(lm, b, CHUNK).item() for b in micro_t) / n_targets
        j = sum(float(eval_loss_sum(model, a, CHUNK)) for a in arrays) / n_targets
        return t, j

    t0, j0 = losses()
    assert abs(t0 - j0) / t0 < 1e-4, (t0, j0)
    dense = {k: v for k, v in arrays[0].items() if k != "band_mask"}
    unmasked = dict(dense, segment_ids=(dense["segment_ids"] > 0).astype(np.int32))
    assert (
        abs(float(eval_loss_sum(model, unmasked, CHUNK)) - float(eval_loss_sum(model, arrays[0], CHUNK)))
        > 1e-3
    )

    wrt = trainable_filter(cfg.train, model.config.num_layers)
    optimizer = build_optimizer(model, cfg, wrt, total_steps=3)
    loss, grad_norm = train_step(model, optimizer, arrays, n_targets, CHUNK, wrt)
    opt_t = torch_optimizer(lm, cfg.optim)
    for b in micro_t:
        (completion_loss_sum(lm, b, CHUNK) / n_targets).backward()
    norm_t = float(torch.nn.utils.clip_grad_norm_([p for p in lm.parameters() if p.requires_grad], 1.0))
    opt_t.step()
    assert abs(loss - t0) / t0 < 1e-4 and abs(grad_norm - norm_t) / norm_t < 1e-4, (loss, grad_norm, norm_t)
    t1, j1 = losses()
    assert t1 < t0 - 1e-3  # the step moved the weights
    assert abs(t1 - j1) / t1 < 1e-4, (t1, j1)


@pytest.mark.parametrize("scale", [1.0, 40.0])
@pytest.mark.parametrize("block", [None, 10])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_frozen_head_loss_matches_the_recomputing_one(softcap, block, scale):
    """The frozen-head path (d loss / d hidden formed in the forward pass) gives the same loss and
    hidden gradient as the checkpointed one, padding slots included, and no head gradient, with
    the vocabulary in one block and in five. At ``scale`` 40 the logits reach the hundreds
    without a cap (exp overflows float32 past 88), so the one-pass softmax must rescale by each
    block's new maximum."""
    import jax
    import jax.numpy as jnp

    from trainers_jax.losses import head_loss_sum

    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(24, 16)) * scale, jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(50, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, 24), jnp.int32)
    valid = jnp.asarray(np.arange(24) < 19)  # the last five slots are padding

    def loss(h, e, trains):
        return head_loss_sum(h, e, targets, valid, 8, softcap, trains, block)

    (full, (gh_full, ge_full)) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, embedding, True)
    (frozen, (gh_frozen, ge_frozen)) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, embedding, False)
    assert np.isfinite(float(frozen)) and float(full) == pytest.approx(float(frozen), rel=1e-6)
    np.testing.assert_allclose(np.asarray(gh_frozen), np.asarray(gh_full), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(gh_full[19:]).max()) == 0.0  # padding slots get no gradient
    assert float(jnp.abs(ge_full).max()) > 0 and float(jnp.abs(ge_frozen).max()) == 0.0


def test_vocab_block_divides_the_vocabulary():
    """On a CPU the frozen head's block is the largest divisor of the vocabulary up to 2,048
    columns (none of at least 256: one block)."""
    from trainers_jax.losses import vocab_block

    vocabs = (262_144, 256_000, 128_256, 32_000, 50, 4_099)
    assert [vocab_block(v) for v in vocabs] == [2048, 2048, 2004, 2000, 50, 4_099]


def test_frozen_head_gradient_keeps_the_hidden_dtype():
    """A bfloat16 hidden state gets a bfloat16 gradient from the frozen-head loss (the float32
    loss scale must not promote it: the model's own backward pass needs its dtype), close to the
    float32 one, with the vocabulary in five blocks."""
    import jax
    import jax.numpy as jnp

    from trainers_jax.losses import head_loss_sum

    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(40, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 40, 16), jnp.int32)
    valid = jnp.ones(16, jnp.bool_)

    def grad(h, e):
        return jax.grad(lambda x: 0.5 * head_loss_sum(x, e, targets, valid, 8, None, False, 8))(h)

    g16 = grad(hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16))
    g32 = grad(hidden, embedding)
    assert g16.dtype == jnp.bfloat16 and g32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g16, np.float32), np.asarray(g32), rtol=0.05, atol=0.02)


def test_bfloat16_lora_step_trains_and_exports_float32(tiny6, rows):
    """``model.dtype=bfloat16`` with LoRA (the YAML-trace recipe's setting): one step runs, its
    loss is the float32 step's to bfloat16 precision, and the merged weights come out float32."""
    import jax.numpy as jnp

    from trainers_jax.config import load_sft_config
    from trainers_jax.export import merged_weights
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.losses import device_arrays
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import build_optimizer, train_step

    examples, packed, _ = rows
    batch = sft_data.collate(examples, packed[:1], 0)
    arrays = [device_arrays(batch, CHUNK, 1024)]
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_sft_config(None, [f"model.path={tiny6}", f"model.dtype={dtype}", "lora.rank=4", "lora.alpha=8",
                                     "optim.lr=1e-2", "optim.warmup_steps=0", f"train.loss_chunk_tokens={CHUNK}"])  # fmt: skip
        mesh = make_mesh(1, 1)
        model, _ = build_model(cfg, mesh)
        wrt = trainable_filter(cfg.train, model.config.num_layers)
        with mesh:
            optimizer = build_optimizer(model, cfg, wrt, total_steps=2)
            first = train_step(model, optimizer, arrays, batch.n_targets, CHUNK, wrt)
            second = train_step(model, optimizer, arrays, batch.n_targets, CHUNK, wrt)
        out[dtype] = (first, second, model)
    (l32, n32), after32, _ = out["float32"]
    (l16, n16), after16, model16 = out["bfloat16"]
    assert model16.embedder.input_embedding[...].dtype == jnp.bfloat16
    assert abs(l16 - l32) / l32 < 0.02 and abs(n16 - n32) / n32 < 0.1, (l16, l32, n16, n32)
    assert after16[0] < l16 and after32[0] < l32  # B starts at zero: the second step sees the first's update
    weights = merged_weights(model16, 8.0)
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float32)}


def test_update_step_compiles_once(tiny6, rows, caplog):
    """The optimizer's fresh state starts on the params' mesh, so the update's second call sees
    the shardings of its first and reuses its compilation (it compiled again at step 2 before)."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding

    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.losses import device_arrays
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import build_optimizer, train_step

    examples, packed, _ = rows
    batch = sft_data.collate(examples, packed[:1], 0)
    arrays = [device_arrays(batch, CHUNK, 1024)]
    cfg = load_sft_config(None, [f"model.path={tiny6}", "lora.rank=4", f"train.loss_chunk_tokens={CHUNK}"])
    mesh = make_mesh(1, 1)
    model, _ = build_model(cfg, mesh)
    wrt = trainable_filter(cfg.train, model.config.num_layers)
    with mesh:
        optimizer = build_optimizer(model, cfg, wrt, total_steps=3)
        leaves = jax.tree.leaves(nnx.state(optimizer))
        assert all(isinstance(x.sharding, NamedSharding) for x in leaves)
        with caplog.at_level(logging.WARNING), jax.log_compiles():
            for _ in range(3):
                train_step(model, optimizer, arrays, batch.n_targets, CHUNK, wrt)
    compiles = [r.getMessage() for r in caplog.records if "Compiling jit(apply_grads)" in r.getMessage()]
    assert len(compiles) == 1, len(compiles)


def test_lora_a_is_drawn_as_peft_draws_it(tiny6):
    """Both backends draw LoRA A uniform in ±1/sqrt(fan_in) (PEFT's ``kaiming_uniform_(a=sqrt(5))``;
    qwix's default is sqrt(6) times wider), so one config starts both trainings alike."""
    import jax
    from flax import nnx

    from common.sft_config import load_sft_config as torch_config
    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model
    from trainers_jax.model import make_mesh
    from trainers_torch.model import build_model as torch_model

    def spread(a: np.ndarray, fan_in: int) -> float:  # max |a| in units of 1/sqrt(fan_in)
        return float(np.abs(a).max() * np.sqrt(fan_in))

    cfg = load_sft_config(None, [f"model.path={tiny6}", "lora.rank=4", "lora.alpha=8"])
    model, _ = build_model(cfg, make_mesh(1, 1))
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.LoRAParam))[0]
    jax_a = [
        spread(np.asarray(v), int(np.prod(v.shape[:-1])))
        for p, v in flat
        if "lora_a" in jax.tree_util.keystr(p)
    ]
    tcfg = torch_config(None, [f"model.path={tiny6}", "lora.rank=4", "lora.alpha=8"])
    peft = torch_model(tcfg.model, tcfg.lora, tcfg.train)
    torch_a = [spread(p.detach().numpy(), p.shape[1]) for n, p in peft.named_parameters() if ".lora_A." in n]
    assert jax_a and torch_a
    for s in jax_a + torch_a:  # uniform draws of >= 64 values reach close to their bound
        assert 0.8 < s <= 1.0 + 1e-6, (jax_a, torch_a)


@pytest.mark.parametrize("model_fixture", ["tiny6", "tiny_llama"])
def test_flat_lora_gives_qwix_lora_values_and_gradients(model_fixture, rows, request):
    """``FlatLoraProvider`` (the trainers' LoRA: linear layers' leading axes flattened) gives
    the loss and LoRA gradients of qwix's own ``LoraProvider`` on the same weights, with B set
    to random values so every adapter is in play; the flat model's step is checked to hand the
    flat provider [B, T, D] inputs."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from trainers_jax import lora as jax_lora
    from trainers_jax.config import load_sft_config
    from trainers_jax.losses import device_arrays
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import micro_grads

    examples, packed, _ = rows
    arrays = device_arrays(sft_data.collate(examples, packed[:1], 0), CHUNK, 1024)
    path = request.getfixturevalue(model_fixture)
    cfg = load_sft_config(None, [f"model.path={path}", "lora.rank=4", f"train.loss_chunk_tokens={CHUNK}"])
    flat_calls = []
    real_call = jax_lora.FlatLoraProvider.dot_general

    def counted(self, lhs, *args, **kwargs):  # type: ignore[no-untyped-def]
        flat_calls.append(lhs.ndim)
        return real_call(self, lhs, *args, **kwargs)

    out = {}
    mesh = make_mesh(1, 1)
    for flat in (True, False):
        model, _ = jax_lora.build_model(cfg, mesh, flat_lora=flat)
        leaves, tree = jax.tree.flatten(nnx.state(model, nnx.LoRAParam))
        keys = jax.random.split(jax.random.key(1), len(leaves))
        drawn = [jax.random.normal(k, v.shape, v.dtype) * 0.05 for k, v in zip(keys, leaves, strict=True)]
        nnx.update(model, jax.tree.unflatten(tree, drawn))
        wrt = jax_lora.trainable_filter(cfg.train, model.config.num_layers)
        jax.clear_caches()  # each model traces its own step: no compiled step is shared
        with mesh, pytest.MonkeyPatch.context() as mp:
            mp.setattr(jax_lora.FlatLoraProvider, "dot_general", counted)
            out[flat] = micro_grads(model, arrays, CHUNK, wrt)
    assert 3 in flat_calls  # the flat model's step took [B, T, D] inputs through the flat path
    (loss_q, grads_q), (loss_f, grads_f) = out[False], out[True]
    np.testing.assert_allclose(float(loss_f), float(loss_q), rtol=1e-5)
    q, f = jax.tree.leaves(grads_q), jax.tree.leaves(grads_f)
    assert len(q) == len(f) > 0 and all(float(jnp.abs(x).max()) > 0 for x in q)
    for x, y in zip(q, f, strict=True):
        x, y = np.asarray(x), np.asarray(y)  # float32 sums in another order: within 1e-5 of the largest
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5 * float(np.abs(x).max()))


def test_lora_plus_scales_only_the_b_matrices_update(tiny6, rows):
    """``optim.lora_b_lr_ratio`` (LoRA+), as on torch: on the first step (B = 0, so A has no
    gradient) the B matrices move ratio times as far, nothing else moves; a model without LoRA
    refuses the setting. The step hands back only what it changes: every frozen parameter is
    still the same array afterwards (under ``nnx.jit``'s default graph updates each one came back
    out of the compiled step as a copy, the embedding included)."""
    import jax
    from flax import nnx

    from common.errors import InputError
    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.losses import device_arrays
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import build_optimizer, lora_b_mask, train_step

    examples, packed, _ = rows
    batch = sft_data.collate(examples, packed[:1], 0)
    arrays = [device_arrays(batch, CHUNK, 1024)]
    moved = {}
    for ratio in (1.0, 4.0):
        cfg = load_sft_config(None, [f"model.path={tiny6}", "lora.rank=4", "lora.alpha=8", "optim.lr=1e-3",
                                     "optim.warmup_steps=0", f"optim.lora_b_lr_ratio={ratio}",
                                     f"train.loss_chunk_tokens={CHUNK}"])  # fmt: skip
        mesh = make_mesh(1, 1)
        model, _ = build_model(cfg, mesh)
        wrt = trainable_filter(cfg.train, model.config.num_layers)
        before = jax.tree.map(np.asarray, nnx.state(model, wrt))
        frozen = jax.tree.leaves(nnx.state(model, nnx.Not(wrt)))
        with mesh:
            train_step(
                model, build_optimizer(model, cfg, wrt, total_steps=10), arrays, batch.n_targets, CHUNK, wrt
            )
        after = jax.tree.leaves(nnx.state(model, nnx.Not(wrt)))
        assert len(frozen) == len(after) > 0 and all(a is b for a, b in zip(frozen, after, strict=True))
        moved[ratio] = jax.tree.map(lambda a, b: np.asarray(a) - b, nnx.state(model, wrt), before)
    is_b = jax.tree.leaves(lora_b_mask(moved[1.0]))
    assert any(is_b) and not all(is_b)
    for b, d1, d4 in zip(is_b, jax.tree.leaves(moved[1.0]), jax.tree.leaves(moved[4.0]), strict=True):
        if b:
            assert np.abs(d1).max() > 0
            np.testing.assert_allclose(d4, 4.0 * d1, rtol=1e-5, atol=1e-9)
        else:
            assert np.abs(d1).max() == 0 and np.abs(d4).max() == 0  # A: no gradient yet
    full = load_sft_config(None, [f"model.path={tiny6}", "train.method=full", "optim.lora_b_lr_ratio=4"])
    model, _ = build_model(full, make_mesh(1, 1))
    with pytest.raises(InputError, match="lora_b_lr_ratio=4.0: the model has no LoRA B"):
        build_optimizer(model, full, trainable_filter(full.train, model.config.num_layers), total_steps=2)


def test_head_trains_follows_the_trainable_filter(tiny6):
    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import head_trains

    mesh = make_mesh(1, 1)
    cases = {
        ("train.method=lora",): False,
        ("train.method=full",): True,
        ("train.method=full", "train.trainable_layers=2", "train.train_lm_head=false"): False,
        ("train.method=full", "train.trainable_layers=2"): True,
    }
    for overrides, expected in cases.items():
        cfg = load_sft_config(None, [f"model.path={tiny6}", *overrides])
        model, _ = build_model(cfg, mesh)
        assert head_trains(model, trainable_filter(cfg.train, model.config.num_layers)) is expected, overrides


FSDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    sys.path.insert(0, {root!r})
    import jax
    from common import sft_data
    from common.prompts import load_tokenizer
    from common.sft_config import DataConfig
    from trainers_jax.config import load_sft_config
    from trainers_jax.lora import build_model, trainable_filter
    from trainers_jax.losses import device_arrays, eval_loss_sum
    from trainers_jax.model import make_mesh
    from trainers_jax.optim import build_optimizer, train_step

    tok = load_tokenizer({model!r})
    ex, _, _ = sft_data.tokenize_records({data!r}, tok, DataConfig(max_len=400, pack_tokens=1024))
    rows = sft_data.pack_rows([len(e) for e in ex], list(range(len(ex))), 1024)[:2]
    batch = sft_data.collate(ex, rows, 0)
    arrays = device_arrays(batch, 64, 1024)
    out = {{"devices": len(jax.devices())}}
    for fsdp in (1, 2):
        cfg = load_sft_config(None, ["model.path={model}", "train.method=full"])
        mesh = make_mesh(fsdp, 1)
        model, _ = build_model(cfg, mesh)
        wrt = trainable_filter(cfg.train, model.config.num_layers)
        with mesh:
            opt = build_optimizer(model, cfg, wrt, 2)
            loss, norm = train_step(model, opt, [arrays], batch.n_targets, 64, wrt)
            after = float(eval_loss_sum(model, arrays, 64)) / batch.n_targets
        shard = model.embedder.input_embedding[...].sharding
        out[fsdp] = {{"loss": loss, "norm": norm, "after": after, "sharding": str(shard)}}
    print("RESULT " + json.dumps(out))
    """
)


def test_fsdp2_on_two_cpu_devices_matches_one_device(tiny6, rows):
    _, _, data = rows
    script = FSDP_SCRIPT.format(root=str(ROOT), model=str(tiny6), data=str(data))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["devices"] == 2
    one, two = out["1"], out["2"]
    assert "fsdp" in two["sharding"], two["sharding"]
    for key in ("loss", "norm", "after"):
        assert abs(one[key] - two[key]) / abs(one[key]) < 1e-4, (key, one, two)


def test_train_resume_and_merged_export_loads_in_transformers(tiny6, rows, tmp_path):
    import jax
    from flax import nnx
    from transformers import AutoModelForCausalLM

    import trainers_jax.sft as J
    from trainers_jax.config import load_sft_config
    from trainers_jax.export import export_merged
    from trainers_jax.lora import build_model
    from trainers_jax.model import forward_logits, make_mesh

    _, _, data = rows
    args = ["--config", str(ROOT / "configs/sft_gemma3_270m_cpu.yaml"), f"model.path={tiny6}", f"data.train={data}",
            f"data.valid={data}", "data.train_limit=null", "data.valid_limit=4", "data.max_len=400",
            f"output_dir={tmp_path}", "run_name=r",
            "train.max_steps=3", "checkpoint.every_steps=2", "eval.every_steps=0", f"train.loss_chunk_tokens={CHUNK}",
            "optim.lr=1e-2", "lora.rank=4", "eval.generate_n=3", "eval.max_new_tokens=6", "eval.batch_size=2"]  # fmt: skip
    assert J.main(args) == 0
    run = tmp_path / "r"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_recs] == [1, 2, 3] and all(m["grad_norm"] > 0 for m in train_recs[1:])
    assert {"lr", "tokens_per_s", "completion_tokens", "tokens_seen", "epoch"} <= set(train_recs[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    with pytest.raises(SystemExit) as err:  # refuses to clobber
        J.main(args)
    assert err.value.code == 2
    import shutil

    shutil.rmtree(run / "checkpoints" / "3")  # as if killed after the step-2 checkpoint
    summary = J.train(load_sft_config(args[1], [*args[2:], "resume=true"]))
    assert summary["resumed_from_step"] == 2
    again = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    again = [m for m in again if "loss" in m]
    assert [m["step"] for m in again] == [1, 2, 3]
    assert abs(again[-1]["loss"] - train_recs[-1]["loss"]) < 1e-5  # same rows, same state

    # the held-out generation check ran at the end on the LoRA model (Tunix sampler); torch,
    # greedy on the merged export, writes the same completions
    final = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"gen_' in x]
    assert [m["step"] for m in final] == [3] and 0 <= final[0]["gen_format_accuracy"] <= 1
    preds = [json.loads(x) for x in (run / "eval" / "predictions-step-000003.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and (run / "eval" / "scores-step-000003.json").exists()
    from evals.generate import DecodeSettings, generate_completions
    from trainers_torch.model import load_model

    merged, merged_tok = load_model(run / "merged")
    torch_out = generate_completions(
        merged, merged_tok, [p["prompt"] for p in preds], DecodeSettings(max_new_tokens=6), progress=False
    )
    assert [p["completion"] for p in preds] == [o["completion"] for o in torch_out]

    # merged/ export of a LoRA model with non-zero adapters: transformers gives the JAX logits
    cfg = load_sft_config(None, [f"model.path={tiny6}", "lora.rank=4", "lora.alpha=8"])
    model, tok = build_model(cfg, make_mesh(1, 1))
    key = jax.random.key(0)
    for _path, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        key, sub = jax.random.split(key)
        var.value = 0.05 * jax.random.normal(sub, var.value.shape, var.value.dtype)
    out = export_merged(model, tok, tiny6, tmp_path / "merged", lora_alpha=cfg.lora.alpha)
    ids = np.asarray([tok("3 and 4?").input_ids * 3], dtype=np.int32)
    want = np.asarray(forward_logits(model, ids, np.ones_like(ids, dtype=bool)))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(torch.from_numpy(ids).long()).logits.numpy()
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
