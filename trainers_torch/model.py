"""Causal LMs on the torch side: load one (and its tokenizer) from a local Hugging Face
directory, and make it trainable: LoRA through PEFT on the decoder's linear layers, or full
fine-tuning of all or the last N blocks."""

from __future__ import annotations

import contextlib
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from common.errors import InputError
from common.hardware import native_bf16
from common.prompts import load_tokenizer
from common.runs import say
from common.sft_config import LoraConfig, ModelConfig
from trainers_torch.rms_norm import fuse_rms_norms

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_model_dir(path: str | Path) -> Path:
    """A local HF model dir with config.json and weights, or an ``InputError`` saying what is missing."""
    p = Path(path)
    if not (p / "config.json").is_file():
        hint = f" (run `make model MODEL={p.name}`)" if p.parent.name == "models" else ""
        raise InputError(f"{p}: not a model directory, config.json missing{hint}")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise InputError(f"{p}: no *.safetensors weights")
    try:
        json.loads((p / "config.json").read_text())
    except ValueError as err:
        raise InputError(f"{p / 'config.json'}: invalid JSON: {err}") from None
    return p


def attention_for(hf_config: dict[str, Any], requested: str | None = None) -> str | None:
    """The attention implementation to load a model with: ``eager`` when its config soft-caps
    attention logits (Gemma 2; transformers' sdpa and flash paths drop the cap, computing
    another model), else ``requested`` (None: transformers' default)."""
    text = hf_config.get("text_config") or hf_config
    return "eager" if text.get("attn_logit_softcapping") else requested


PACKED_SDPA = "packed_sdpa"  # the attention trained models run with (``packed_sdpa``); sdpa otherwise


def packed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    packed_lengths: list[list[int]] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except for packed rows (``packed_lengths``: each row's
    example lengths, in order): there each example attends only to itself, causally, one
    ``scaled_dot_product_attention`` call per example, so a row costs the sum of its
    examples' squares instead of its own square (block-diagonal mask, computed in full)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_lengths is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )  # fmt: skip
    gqa = query.shape[1] != key.shape[1]
    rows = []
    # split, not sliced: a slice's backward writes its gradient into a zero tensor of the whole
    # input, one per example; a split's backward is one concatenation
    by_row = [t.split(1) for t in (query, key, value)]
    for b, lengths in enumerate(packed_lengths):
        parts = []
        for n, q, k, v in zip(lengths, *(t[b].split(lengths, dim=2) for t in by_row), strict=True):
            band = None
            if sliding_window and n > sliding_window:  # key j is seen from i when i - window < j <= i
                i = torch.arange(n, device=query.device)
                band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - sliding_window)
            parts.append(torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=band, dropout_p=dropout, is_causal=band is None, scale=scaling, enable_gqa=gqa,
            ))  # fmt: skip
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def register_packed_sdpa() -> None:
    """Make ``packed_sdpa`` an attention implementation transformers can load a model with
    (its masks are sdpa's, for calls without ``packed_lengths``: generation, padded batches)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local HF directory, in eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    attention = attention_for(json.loads((p / "config.json").read_text()))
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(p), dtype=torch_dtype(dtype), attn_implementation=attention
    )
    model.to(device).eval()
    return model, load_tokenizer(p)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def causal_lm(model: Any) -> Any:
    """The underlying ``*ForCausalLM`` of a PEFT model (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(lm: Any) -> torch.nn.ModuleList:
    layers = getattr(lm.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(
            f"{type(lm).__name__}: no decoder .layers list; this trainer needs a decoder-only LM"
        )
    return layers


def linear_module_names(lm: Any) -> list[str]:
    """Names (last component) of every ``nn.Linear`` inside the decoder blocks."""
    names = {
        n.rsplit(".", 1)[-1] for n, m in decoder_layers(lm).named_modules() if isinstance(m, torch.nn.Linear)
    }
    return sorted(names)


class SharedLoraDropout(torch.nn.Module):
    """Dropout on the input of LoRA adapters: one mask per input tensor, shared by the adapters
    that read that tensor, and a cheaper mask on CPU.

    PEFT gives each adapted layer its own ``nn.Dropout``, so q/k/v (and gate/up) each draw a
    mask over the same hidden states. Installed as every adapter's ``lora_dropout`` (one
    instance), this draws one mask per distinct input: the same tensor object (and version)
    as the previous call gets the previous output. Each adapter still sees its input dropped
    with probability p; sibling adapters drop the same features.

    On CPU ``torch.bernoulli`` costs ~13 ns per element (a sequential generator, one draw per
    element). Here each mask takes one draw of torch's generator, the seed of a NumPy SFC64
    generator whose raw 64-bit words make four 16-bit lanes each, kept where a lane (as a signed
    int16) is at least ``round(p·2¹⁶) − 2¹⁵``: ``p_eff = round(p·2¹⁶)/2¹⁶`` (0.0500031 for 0.05)
    and the scale ``1/(1 − p_eff)``. SFC64's words come about 2× faster than torch's generator
    draws them (1.6 against 3.8 ms for 508,416 words, 2 threads). Seeded and checkpointed with
    torch's RNG, replayed by gradient checkpointing as ``nn.Dropout`` is (it restores that RNG).
    Other devices use ``F.dropout`` with p.

    ``keep`` gives the masked input unscaled with its scale, which the fused LoRA forward folds
    into the adapter's own scaling (a full-size product less forward and back).
    """

    LANE_BITS = 16

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = min(round(p * (1 << self.LANE_BITS)), (1 << self.LANE_BITS) - 1)  # p_eff < 1
        self.p_eff = self.threshold / (1 << self.LANE_BITS)
        self._last: tuple[torch.Tensor, int, torch.Tensor, float] | None = None

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """A boolean keep-mask shaped like CPU tensor ``x``: P(keep) = 1 − p_eff."""
        n = x.numel()
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        words = torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int64))
        lanes = words.view(torch.int16)[:n].view(x.shape)
        return lanes >= self.threshold - (1 << (self.LANE_BITS - 1))

    def keep(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(kept, scale)``: the dropped input is ``kept · scale``. On CPU ``kept`` is ``x`` with
        the dropped features zeroed and ``scale`` is ``1/(1 − p_eff)``; elsewhere ``kept`` is
        ``F.dropout``'s output (already scaled) and ``scale`` 1."""
        if not self.training or self.p == 0.0:
            return x, 1.0
        last = self._last
        if last is not None and last[0] is x and last[1] == x._version:
            return last[2], last[3]
        if x.device.type == "cpu":
            kept, scale = torch.where(self.mask(x), x, 0.0), 1.0 / (1.0 - self.p_eff)
        else:
            kept, scale = torch.nn.functional.dropout(x, self.p, training=True), 1.0
        self._last = (x, x._version, kept, scale)
        return kept, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, scale = self.keep(x)
        return kept if scale == 1.0 else kept * scale

    def extra_repr(self) -> str:
        return f"p={self.p}, p_eff={self.p_eff:.6f}"


def share_lora_dropout(model: Any, p: float) -> SharedLoraDropout | None:
    """Replace every PEFT ``lora_dropout`` of ``model`` by one ``SharedLoraDropout`` (p > 0)."""
    if p == 0.0:
        return None
    shared = SharedLoraDropout(p)
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name in list(drops.keys()):
                drops[name] = shared
    return shared


def _fused_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT's LoRA ``Linear.forward`` for the plain case, with ``base(x) + s·B(A(drop(x)))``
    as one in-place ``addmm_`` into the base output (no separate scale, add and temporary); the
    shared dropout's scale joins ``s`` there.

    A bfloat16 or float16 base with float32 adapters (PEFT's default) computes the adapter
    product in the base's dtype from the float32 weights (as ``torch.autocast`` would): the
    weights and optimizer stay float32, and the [tokens, features] input is not copied to
    float32 nor the product back. Anything else (adapters off or merged, several or mixed
    adapters, DoRA and other variants, adapter biases, another cast) takes PEFT's own forward."""
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (
        args or kwargs or name is None or self.disable_adapters or self.merged
        or name not in self.lora_A or name in self.lora_variant
        or self.lora_A[name].bias is not None or self.lora_B[name].bias is not None
        or not _adapter_dtype_fits(x.dtype, self.lora_A[name].weight.dtype)
    ):  # fmt: skip
        return type(self).forward(self, x, *args, **kwargs)
    # on [tokens, features]: an in-place op on a view of the output would make autograd copy the
    # whole output gradient back (CopySlices); on the output itself it passes it through
    result = self.base_layer(x.reshape(-1, x.shape[-1]))
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if a.dtype != x.dtype:
        a, b = a.to(x.dtype), b.to(x.dtype)
    drop = self.lora_dropout[name]
    kept, scale = drop.keep(x) if isinstance(drop, SharedLoraDropout) else (drop(x), 1.0)
    h = torch.nn.functional.linear(kept.reshape(-1, x.shape[-1]), a)
    result.addmm_(h, b.t(), alpha=self.scaling[name] * scale)
    return result.view(*x.shape[:-1], result.shape[-1])


def _adapter_dtype_fits(x: torch.dtype, adapter: torch.dtype) -> bool:
    """Whether the fused forward takes an input of dtype ``x`` into adapters of ``adapter``: the
    same dtype, or a half-precision input with float32 adapters."""
    return x == adapter or (adapter == torch.float32 and x in (torch.bfloat16, torch.float16))


def fuse_lora_forward(model: Any) -> int:
    """Give every PEFT LoRA ``Linear`` of ``model`` ``_fused_lora_forward``; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and isinstance(module.base_layer, torch.nn.Linear):
            module.forward = types.MethodType(_fused_lora_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def apply_lora(lm: Any, lora: LoraConfig, trainable_layers: int | None) -> Any:
    """Wrap ``lm`` with LoRA adapters (PEFT) on the decoder's linear layers; the embedding stays frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    available = linear_module_names(lm)
    targets = lora.target_modules or available
    unknown = sorted(set(targets) - set(available))
    if unknown:
        raise InputError(
            f"lora.target_modules: {unknown} not linear layers of the decoder; available: {available}"
        )
    layers = None
    n_layers = len(decoder_layers(lm))
    if trainable_layers is not None:
        k = min(trainable_layers, n_layers)
        layers = list(range(n_layers - k, n_layers))
    peft_cfg = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # annotated int; peft divides it by r as a float
        lora_dropout=lora.dropout,
        target_modules=list(targets),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(lm, peft_cfg)
    share_lora_dropout(model, lora.dropout)
    fuse_lora_forward(model)
    return model


def freeze_for_full(lm: Any, cfg: Tuning) -> None:
    """Full fine-tuning: everything trains, or only the last N blocks + final norm (+ lm_head)."""
    if cfg.trainable_layers is None:
        for p in lm.parameters():
            p.requires_grad_(True)
        return
    for p in lm.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(lm)
    for block in list(layers)[-cfg.trainable_layers :]:
        for p in block.parameters():
            p.requires_grad_(True)
    norm = getattr(lm.get_decoder(), "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    if cfg.train_lm_head:
        for p in lm.get_output_embeddings().parameters():
            p.requires_grad_(True)


def sparse_tied_embedding(lm: Any) -> None:
    """When the input embedding is the (tied) LM head's weight and trains, let its lookup send a
    sparse gradient (only the batch's token rows), which ``tied_lookup`` adds in place into the
    dense [vocab, H] gradient of the chunked head loss (``losses``; Gemma 3: 262,144 x 640)."""
    emb = _tied_embedding(lm)
    if emb is not None:
        emb.sparse = emb.weight.requires_grad


def _tied_embedding(lm: Any) -> torch.nn.Embedding | None:
    """``lm``'s input embedding when it is a plain lookup whose weight is the LM head's, else None."""
    emb, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    tied = isinstance(emb, torch.nn.Embedding) and head is not None and emb.weight is head.weight
    return emb if tied else None


def tied_lookup(lm: Any, input_ids: torch.Tensor) -> torch.Tensor | None:
    """The input embeddings of ``input_ids``, looked up through a leaf alias of the tied weight
    whose sparse gradient a hook adds in place into the weight's ``.grad``; None (look up as
    usual) unless gradients are on and ``sparse_tied_embedding`` made the lookup sparse.

    Autograd sums the gradients a tensor gets from two places before accumulating them, and
    sums a dense and a sparse one out of place: through the tied weight itself, every
    micro-batch would allocate a second [vocab, H] tensor and copy the head's gradient into it
    (Gemma 3 270M: 671 MB; full SFT's peak memory was 0.7-1.1 GB higher over 8 steps, at the
    same step time). The alias shares the weight's storage, so the forward pass is the same.
    The head's gradient reaches the weight before the lookup's (the lookup is the first op of
    the forward pass), but the hook also works the other way round. ``torch.autograd.grad``
    would not see the lookup's part: the trainers call ``backward``."""
    emb = _tied_embedding(lm) if torch.is_grad_enabled() else None
    if emb is None or not (emb.sparse and emb.weight.requires_grad):
        return None
    weight = emb.weight
    alias = weight.detach().requires_grad_()

    def fold(leaf: torch.Tensor) -> None:
        rows, leaf.grad = leaf.grad, None
        if rows is None:
            return
        if weight.grad is None:
            weight.grad = rows.to_dense()
        else:
            weight.grad.add_(rows)

    alias.register_post_accumulate_grad_hook(fold)
    return torch.func.functional_call(emb, {"weight": alias}, (input_ids,))


def keep_freed_memory(device: str) -> bool:
    """On CPU with glibc: serve large allocations from the heap instead of fresh ``mmap`` regions and
    never trim it, so the big tensors a step frees and allocates again (full fine-tuning's
    [vocab, H] head gradient and every weight gradient) reuse pages already mapped instead of
    faulting in zeroed ones each step. Full SFT on the real Gemma 3 270M ran 1.3-1.7x faster
    for +0.5 GB peak memory (interleaved bench runs); LoRA and GRPO steps were unchanged.
    False (nothing set) off the CPU or where the C library has no ``mallopt`` (not glibc)."""
    import ctypes

    if device != "cpu":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def resolve_device(name: str) -> str:
    if name == "auto":
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("model.device=cuda but torch sees no CUDA device")
    return name


class Tuning(Protocol):
    """What trains: the ``train`` section of the SFT and the GRPO configs both have these."""

    method: Literal["lora", "full"]
    trainable_layers: int | None  # only the last N decoder blocks (None: all)
    train_lm_head: bool  # full fine-tuning of the last N blocks: the LM head too
    gradient_checkpointing: bool


def build_model(model_cfg: ModelConfig, lora: LoraConfig, train: Tuning) -> Any:
    """The model ready to train: LoRA-wrapped or with the chosen parameters unfrozen."""
    from transformers import AutoModelForCausalLM

    path = check_model_dir(model_cfg.path)
    attention = attention_for(json.loads((path / "config.json").read_text()), model_cfg.attn_implementation)
    if attention == "sdpa":  # the same attention; packed rows (losses.completion_states) example by example
        register_packed_sdpa()
        attention = PACKED_SDPA
    lm: Any = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch_dtype(model_cfg.dtype), attn_implementation=attention
    )
    device = resolve_device(model_cfg.device)
    if device == "cpu" and model_cfg.dtype == "bfloat16" and not native_bf16():
        say(
            "warning: this CPU has no AVX512_BF16 or AMX: model.dtype=bfloat16 is many times slower than float32"
        )
    lm.to(device)
    lm.config.use_cache = False
    fuse_rms_norms(lm)  # the same outputs; a backward in four passes instead of autograd's chain
    if train.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train.method == "lora":
        for p in lm.parameters():
            p.requires_grad_(False)
        model = apply_lora(lm, lora, train.trainable_layers)
        if model_cfg.init_adapter:
            load_adapter_weights(model, Path(model_cfg.init_adapter))
    else:
        if model_cfg.init_adapter:
            raise InputError(
                "model.init_adapter applies to train.method=lora; for full, point model.path at a merged/ dir"
            )
        note = model_cfg.lost_updates_note(train.method, adapters_in_float32=True)
        if note:
            say(f"warning: {note}")
        freeze_for_full(lm, train)
        sparse_tied_embedding(lm)
        model = lm
    return model


def load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    """Copy a saved PEFT adapter's weights into ``model`` (same rank and targets)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{adapter_dir}: not a PEFT adapter dir (adapter_model.safetensors missing)")
    try:
        result: Any = set_peft_model_state_dict(model, load_file(str(weights)))  # annotated `-> namedtuple`
    except RuntimeError as err:  # shape mismatch: another rank
        raise InputError(f"{weights}: does not fit this LoRA config ({str(err).splitlines()[0]})") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise InputError(
            f"{weights}: adapter does not match this LoRA config "
            f"(unexpected {list(result.unexpected_keys)[:3]}, missing {missing[:3]})"
        )


def parameter_counts(model: Any) -> dict[str, int]:
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable}


@contextlib.contextmanager
def generation_mode(model: Any) -> Iterator[None]:
    """Eval mode with the KV cache on, for decoding; the training RNG is left untouched."""
    lm = causal_lm(model)
    was_training = model.training
    model.eval()
    lm.config.use_cache = True
    devices = [torch.cuda.current_device()] if next(lm.parameters()).is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        lm.config.use_cache = False
        model.train(was_training)
