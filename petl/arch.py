"""Where things live in each supported architecture.

Methods never hard-code module names: they ask this map for the transformer layers and, inside a
layer, for the attention projections (q, k, v, o), the FFN projections and the LayerNorms. Paths are
exact dotted attribute paths (no substring matching), relative to the backbone (`model.base_model`)
for `layers`/`word_embeddings` and relative to one layer for everything else.
Adding an architecture means adding one `ArchSpec` entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from petl.errors import PetlError


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # ModuleList of transformer layers, relative to the backbone
    word_embeddings: str  # token embedding table, relative to the backbone
    embeddings: str  # module turning input_ids (+ positions, types) into the first hidden states
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
        raise PetlError(f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


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
