"""Where things live in each supported architecture.

Methods never hard-code module names: they ask this map for the transformer layers and, inside a
layer, for the attention projections (q, k, v, o), the FFN projections and the LayerNorms. Paths are
exact dotted attribute paths (no substring matching), relative to the backbone (`model.base_model`)
for `layers`/`word_embeddings` and relative to one layer for everything else.
Adding an architecture means adding one `ArchSpec` entry here.

Fused projections (GPT-2's `c_attn` computes q, k and v in one Conv1D) are named `path@slot`:
`attn.c_attn@q` is the first third of `attn.c_attn`'s output (slots listed in `fused_slots`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from petl.errors import PetlError


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # ModuleList of transformer layers, relative to the backbone
    word_embeddings: str  # token embedding table, relative to the backbone
    embeddings: str | None  # module turning input_ids (+ positions, types) into the first hidden states; None: no
    # such module (GPT-2 adds position embeddings inside the model's forward), so no frozen-layer cache
    self_attn: str  # module taking (hidden_states, attention_mask, ...) and computing q/k/v attention
    q: str
    k: str
    v: str
    o: str  # attention output projection
    ffn_in: tuple[str, ...]  # FFN input projection(s) (Llama has gate and up)
    ffn_out: str  # FFN output projection
    attn_ln: str | None  # LayerNorm belonging to the attention block
    ffn_ln: str | None  # LayerNorm belonging to the FFN block
    attn_block: str  # module whose first input is the attention block's input (parallel adapters read it)
    ffn_block: str  # module whose first input is the FFN block's input
    position_bias_arg: str | None = None  # extra additive score bias passed to `self_attn` (MPNet)
    decoder: bool = False  # causal self-attention, no CLS token: last-token pooling, prompts at the start
    fused_slots: tuple[str, ...] = ()  # slot names of fused projections, in output order (GPT-2: q, k, v)

    def targets(self) -> dict[str, tuple[str, ...]]:
        """Named projection targets used by LoRA and BitFit."""
        return {"q": (self.q,), "k": (self.k,), "v": (self.v,), "o": (self.o,), "ffn_in": self.ffn_in, "ffn_out": (self.ffn_out,)}


_BERT_LIKE = ArchSpec(
    layers="encoder.layer",
    word_embeddings="embeddings.word_embeddings",
    embeddings="embeddings",
    self_attn="attention.self",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    attn_ln="attention.output.LayerNorm",
    ffn_ln="output.LayerNorm",
    attn_block="attention",
    ffn_block="intermediate",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        layers="h",
        word_embeddings="wte",
        embeddings=None,
        self_attn="attn",
        q="attn.c_attn@q",
        k="attn.c_attn@k",
        v="attn.c_attn@v",
        o="attn.c_proj",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        attn_ln="ln_1",
        ffn_ln="ln_2",
        attn_block="attn",
        ffn_block="mlp",
        decoder=True,
        fused_slots=("q", "k", "v"),
    ),
    "llama": ArchSpec(
        layers="layers",
        word_embeddings="embed_tokens",
        embeddings="embed_tokens",  # positions are rotary, applied inside attention: the cache can replace it
        self_attn="self_attn",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        ffn_in=("mlp.gate_proj", "mlp.up_proj"),
        ffn_out="mlp.down_proj",
        attn_ln="input_layernorm",
        ffn_ln="post_attention_layernorm",
        attn_block="self_attn",
        ffn_block="mlp",
        decoder=True,
    ),
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "mpnet": ArchSpec(
        layers="encoder.layer",
        word_embeddings="embeddings.word_embeddings",
        embeddings="embeddings",
        self_attn="attention.attn",
        q="attention.attn.q",
        k="attention.attn.k",
        v="attention.attn.v",
        o="attention.attn.o",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        attn_ln="attention.LayerNorm",
        ffn_ln="output.LayerNorm",
        attn_block="attention",
        ffn_block="intermediate",
        position_bias_arg="position_bias",
    ),
}


def arch_for(model: nn.Module) -> ArchSpec:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise PetlError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))} "
            "(a new architecture is one entry in ARCHITECTURES, petl/arch.py)"
        )
    return ARCHITECTURES[model_type]


def is_decoder_type(model_type: str | None) -> bool:
    """Known decoder architecture (unknown types count as encoders until they fail in `arch_for`)."""
    return model_type in ARCHITECTURES and ARCHITECTURES[model_type].decoder


def is_decoder(model: nn.Module) -> bool:
    return arch_for(model).decoder


def split_slot(path: str) -> tuple[str, str | None]:
    """`attn.c_attn@q` -> ("attn.c_attn", "q"); a plain path -> (path, None)."""
    module_path, _, slot = path.partition("@")
    return module_path, slot or None


def projection_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (weight stored (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    raise PetlError(f"expected a Linear or Conv1D projection, got {type(module).__name__}")


def slot_range(module: nn.Module, slot: str | None, spec: ArchSpec) -> tuple[int, int] | None:
    """Output columns [start, end) of `slot` in a fused projection; None for the whole output."""
    if slot is None:
        return None
    if slot not in spec.fused_slots:
        raise PetlError(f"internal: unknown fused slot {slot!r}; this architecture has {spec.fused_slots}")
    width = projection_features(module)[1] // len(spec.fused_slots)
    start = spec.fused_slots.index(slot) * width
    return start, start + width


def attention_geometry(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim); key/value heads < query heads under grouped-query attention."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Exact dotted-path lookup; a missing attribute is an error, never a silent skip."""
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise PetlError(f"module path {path!r} not found in {type(root).__name__} (missing {part!r})")
        module = getattr(module, part)
    return module


def backbone_of(model: nn.Module) -> nn.Module:
    return model.base_model


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(backbone_of(model), arch_for(model).layers)


def num_layers(model: nn.Module) -> int:
    return len(transformer_layers(model))


def layer_module(model: nn.Module, layer: int, path: str) -> nn.Module:
    return get_module(transformer_layers(model)[layer], path)


def layers_prefix(model: nn.Module) -> str:
    """The dotted name prefix of the transformer layers in `model.named_parameters()`, e.g. `bert.encoder.layer.`."""
    backbone = backbone_of(model)
    for name, module in model.named_modules():
        if module is backbone:
            return (f"{name}." if name else "") + arch_for(model).layers + "."
    raise PetlError("backbone not found in model")


def layer_of_parameter(model: nn.Module, name: str) -> int | None:
    """The layer index a parameter belongs to; None outside the transformer layers (embeddings, head)."""
    prefix = layers_prefix(model)
    if name.startswith(prefix):
        return int(name[len(prefix) :].split(".", 1)[0])
    return None
