"""Where things live in each supported architecture.

Methods never hard-code module names: they ask this map for the transformer layers and, inside a
layer, for the attention projections (q, k, v, o), the FFN projections and the LayerNorms. Paths are
exact dotted attribute paths (no substring matching), relative to the backbone (`model.base_model`)
for `layers`/`word_embeddings` and relative to one layer for everything else.
Adding an architecture means adding one `ArchSpec` entry here.

Fused projections (GPT-2's `c_attn` computes q, k and v in one Conv1D) are named `path@slot`:
`attn.c_attn@q` is the q columns of `attn.c_attn`'s output (slots listed in `fused_slots`; q, k and v
slots are as wide as the query and key/value heads: narrower k and v under grouped-query attention).

Besides the paths, an entry states only what truly differs, declaratively: methods that cannot work
on it and why (`refused`), config values outside which the paths are wrong (`required_config`), why
the frozen-layer cache is invalid (`cache_refusal`), and, for shared layers (ALBERT), what a "layer" is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

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
    refused: dict[str, str] = field(default_factory=dict)  # registry method name -> why it cannot work on this architecture
    required_config: dict[str, Any] = field(default_factory=dict)  # config values the paths assume -> refused otherwise
    cache_refusal: Callable[[Any], str | None] | None = None  # config -> why the frozen-layer cache is invalid (None: valid)
    shared_layers: str | None = None  # the map's "layers" are shared across depths (ALBERT): what a layer index means
    cache_keeps_layers: int = 0  # layers the cached forward must still run (DeBERTa's encoder fails on an empty layer list)

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

_LLAMA_LIKE = ArchSpec(
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
)


def _electra_cache_refusal(config) -> str | None:
    if config.embedding_size != config.hidden_size:
        return (
            f"ELECTRA with embedding_size {config.embedding_size} != hidden_size {config.hidden_size} projects the embeddings "
            "(embeddings_project) after the module the cached states replace"
        )
    return None


def _deberta_cache_refusal(config) -> str | None:
    if getattr(config, "conv_kernel_size", 0) > 0:
        return "DeBERTa-v2 with conv_kernel_size > 0 applies its convolution after the first layer the encoder runs (the cache cuts layers)"
    return None


_NO_PAST_KEY_VALUES = "its attention takes no past_key_values and {why}, so learned prefix keys have no place in it"

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
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,  # q, k, v have biases (BitFit on them), o and the FFN none
    "qwen3": _LLAMA_LIKE,  # per-head q/k RMSNorm inside attention: the map is unchanged
    "gemma": _LLAMA_LIKE,  # the sqrt(hidden) embedding scale is inside embed_tokens: the cache replaces it too
    "phi3": replace(
        _LLAMA_LIKE,
        q="self_attn.qkv_proj@q",
        k="self_attn.qkv_proj@k",
        v="self_attn.qkv_proj@v",
        ffn_in=("mlp.gate_up_proj",),  # gate and up fused in one projection
        fused_slots=("q", "k", "v"),
    ),
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": replace(_BERT_LIKE, cache_refusal=_electra_cache_refusal),
    "deberta-v2": replace(  # DeBERTa-v2 and -v3
        _BERT_LIKE,
        q="attention.self.query_proj",
        k="attention.self.key_proj",
        v="attention.self.value_proj",
        refused={
            "prefix": _NO_PAST_KEY_VALUES.format(
                why="scores every key by its relative position to each query (disentangled c2p/p2c attention)"
            )
        },
        cache_refusal=_deberta_cache_refusal,
        cache_keeps_layers=1,
    ),
    "distilbert": ArchSpec(
        layers="transformer.layer",
        word_embeddings="embeddings.word_embeddings",
        embeddings="embeddings",
        self_attn="attention",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        ffn_in=("ffn.lin1",),
        ffn_out="ffn.lin2",
        attn_ln="sa_layer_norm",
        ffn_ln="output_layer_norm",
        attn_block="attention",
        ffn_block="ffn",
    ),
    "modernbert": ArchSpec(
        layers="layers",
        word_embeddings="embeddings.tok_embeddings",
        embeddings="embeddings",
        self_attn="attn",
        q="attn.Wqkv@q",
        k="attn.Wqkv@k",
        v="attn.Wqkv@v",
        o="attn.Wo",
        ffn_in=("mlp.Wi",),  # input and gate fused in one projection
        ffn_out="mlp.Wo",
        attn_ln="attn_norm",  # an Identity in layer 0
        ffn_ln="mlp_norm",
        attn_block="attn",
        ffn_block="mlp",
        fused_slots=("q", "k", "v"),
        refused={"prefix": _NO_PAST_KEY_VALUES.format(why="applies rotary positions computed for exactly the input's tokens")},
    ),
    "albert": ArchSpec(
        layers="encoder.albert_layer_groups",
        word_embeddings="embeddings.word_embeddings",
        embeddings="embeddings",
        self_attn="albert_layers.0.attention",
        q="albert_layers.0.attention.query",
        k="albert_layers.0.attention.key",
        v="albert_layers.0.attention.value",
        o="albert_layers.0.attention.dense",
        ffn_in=("albert_layers.0.ffn",),
        ffn_out="albert_layers.0.ffn_output",
        attn_ln="albert_layers.0.attention.LayerNorm",
        ffn_ln="albert_layers.0.full_layer_layer_norm",
        attn_block="albert_layers.0.attention",
        ffn_block="albert_layers.0.ffn",
        required_config={"inner_group_num": 1},  # every released ALBERT; the paths name albert_layers.0 only
        cache_refusal=lambda config: "ALBERT runs its one shared layer group at every depth, so no layer below a method is frozen",
        shared_layers=(
            "ALBERT shares one layer group's weights across all depths: a layer index here is a shared group "
            "(num_hidden_groups, 1 in every released ALBERT), and a method placed on it acts at every depth; "
            "per-depth placement is impossible"
        ),
    ),
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
    spec = ARCHITECTURES[model_type]
    for name, expected in spec.required_config.items():
        value = getattr(model.config, name, None)
        if value != expected:
            raise PetlError(
                f"{model_type} with {name}={value!r} is not supported; allowed: {name}={expected!r} "
                "(the module paths in petl/arch.py assume it)"
            )
    return spec


def check_method_supported(model: nn.Module, method: str) -> None:
    """A method this architecture cannot host is refused by name, with the reason, before anything attaches."""
    reason = arch_for(model).refused.get(method)
    if reason:
        raise PetlError(f"--method {method} is not supported for {model.config.model_type}: {reason}")


def layer_indices(model: nn.Module, spec: str, flag: str) -> list[int]:
    """The layers a `--<method>_layers` spec names; on shared layers (ALBERT) an error says what a layer is."""
    from petl.layers import parse_layers

    try:
        return parse_layers(spec, num_layers(model), flag)
    except PetlError as err:
        note = arch_for(model).shared_layers
        raise PetlError(f"{err} ({note})" if note else str(err)) from None


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


def slot_range(module: nn.Module, slot: str | None, spec: ArchSpec, config) -> tuple[int, int] | None:
    """Output columns [start, end) of `slot` in a fused projection; None for the whole output. Fused q, k, v
    slots are as wide as the query heads and the key/value heads (Phi-3 with grouped-query attention)."""
    if slot is None:
        return None
    if slot not in spec.fused_slots:
        raise PetlError(f"internal: unknown fused slot {slot!r}; this architecture has {spec.fused_slots}")
    out = projection_features(module)[1]
    if spec.fused_slots == ("q", "k", "v"):
        heads, kv_heads, head_dim = attention_geometry(config)
        widths = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
    else:
        widths = (out // len(spec.fused_slots),) * len(spec.fused_slots)
    if sum(widths) != out:
        raise PetlError(f"internal: fused projection of width {out} does not split into {dict(zip(spec.fused_slots, widths, strict=True))}")
    index = spec.fused_slots.index(slot)
    start = sum(widths[:index])
    return start, start + widths[index]


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


def input_embedding_width(model: nn.Module) -> int:
    """Width of the token embeddings, where input prompts go: below hidden_size when the model projects
    its embeddings up (ALBERT, ELECTRA-small: embedding_size 128)."""
    return get_module(backbone_of(model), arch_for(model).word_embeddings).weight.shape[1]


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
