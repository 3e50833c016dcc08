"""IDPG (Wu et al. 2022): instance-dependent prompt generation.

A sentence encoder reads each input; a bottleneck MLP (encoder hidden -> `hidden` -> P x model
hidden) turns its pooled output into that instance's P prompt vectors, inserted at the model's
input embeddings like prompt tuning's. The encoder has its own tokenizer: it reads the raw text,
tokenised by the data pipeline into `idpg_input_ids` / `idpg_attention_mask` (see
the model's `PetlState.extra_inputs`), which the pre-hook removes from the model's inputs (the
extra-inputs contract, in petl.registry's docstring).

Variants:
- original:    frozen encoder (always in eval mode, no dropout), generator trains;
- trained:     the encoder trains too (at --learning_rate; the generator at --petl_lr);
- prompt_only: learned input embeddings (no input text) through the frozen encoder -> one prompt
               shared by every input;
- reparam:     no encoder: one learned vector through the same MLP -> one shared prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, backbone_of, get_module, input_embedding_width
from petl.errors import PetlError
from petl.methods.prompt import attach_input_prompts, validate_position
from petl.methods.targets import full_name
from petl.registry import MethodConfig, MethodEntry, option, register
from petl.state import attach_state

IDPG_VARIANTS = ("original", "trained", "prompt_only", "reparam")
IDPG_POOLING = ("cls", "avg", "last")
EXTRA_INPUT_PREFIX = "idpg"


@dataclass
class IdpgConfig(MethodConfig):
    encoder: str = option("minilm-l6", "Sentence encoder: packaged alias, local folder or hub id.")
    pooling: str = option("avg", "Encoder pooling: cls, avg or last.")
    hidden: int = option(256, "Generator bottleneck width.")
    prompt_length: int = option(5, "Prompt vectors generated per input.")
    variant: str = option(
        "original", "original (frozen encoder), trained (encoder trains), prompt_only (one shared prompt), reparam (no encoder)."
    )
    position: str = option("auto", "Where prompts go: auto, after_cls, start.")

    def validate(self) -> None:
        if self.prompt_length < 1:
            raise PetlError(f"--idpg_prompt_length {self.prompt_length} is invalid; allowed: >= 1")
        if self.hidden < 1:
            raise PetlError(f"--idpg_hidden {self.hidden} is invalid; allowed: >= 1")
        if self.variant not in IDPG_VARIANTS:
            raise PetlError(f"--idpg_variant {self.variant!r} is not one of {', '.join(IDPG_VARIANTS)}")
        if self.pooling not in IDPG_POOLING:
            raise PetlError(f"--idpg_pooling {self.pooling!r} is not one of {', '.join(IDPG_POOLING)}")
        validate_position(self.position, "idpg_position")


def load_encoder(name_or_path: str):
    """The sentence encoder and its tokenizer; any failure is one line naming the encoder."""
    from petl.models import load_backbone, load_tokenizer, resolve_model_path

    try:
        path = resolve_model_path(name_or_path)
        encoder = load_backbone(path)
        tokenizer = load_tokenizer(path)
    except PetlError as err:
        raise PetlError(f"--idpg_encoder {name_or_path!r} cannot be loaded: {err}") from None
    except Exception as err:  # noqa: BLE001 - hub, file and format errors all mean the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PetlError(f"--idpg_encoder {name_or_path!r} cannot be loaded: {first}") from None
    if tokenizer.pad_token is None:  # load_tokenizer sets one for decoders only; batches of any encoder need one
        tokenizer.pad_token = tokenizer.eos_token
    return encoder, tokenizer


class PromptGenerator(nn.Module):
    """features (B, in) -> down -> tanh -> up -> prompts (B, P, h)."""

    def __init__(self, in_dim: int, hidden: int, length: int, model_hidden: int):
        super().__init__()
        self.length, self.model_hidden = length, model_hidden
        self.down = nn.Linear(in_dim, hidden)
        self.act = nn.Tanh()
        self.up = nn.Linear(hidden, length * model_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(features))).view(features.shape[0], self.length, self.model_hidden)


@torch.no_grad()
def init_generator_output(generator: PromptGenerator, word_embeddings: nn.Embedding) -> None:
    """Start every instance's prompts near real token embeddings: the output bias holds P embedding
    rows of random vocabulary items, and the instance-dependent part starts at a tenth of the
    embeddings' scale. (Default Linear init gives prompts ~10x larger than any token embedding;
    at position 0 of a decoder, the attention sink, that derails the frozen model: measured on
    SmolLM2-135M/MRPC, training loss stayed above the label prior.)"""
    table = word_embeddings.weight.detach()
    rows = torch.randint(0, table.shape[0], (generator.length,)).to(table.device)  # from the run's seed (set_seed)
    embedded = word_embeddings(rows)  # through the module, not its table: Gemma scales its embeddings by sqrt(hidden) inside it
    generator.up.bias.copy_(embedded.reshape(-1).to(generator.up.bias))
    module_scale = float(embedded.float().norm() / table[rows].float().norm().clamp(min=1e-12))  # 1 for a plain nn.Embedding
    features_scale = 0.5 * generator.up.in_features**0.5  # tanh outputs: about 0.5 each, summed over `hidden`
    generator.up.weight.normal_(0.0, 0.1 * float(table.float().std()) * module_scale / features_scale)


class InstancePrompts(nn.Module):
    def __init__(self, config: IdpgConfig, encoder: nn.Module | None, model_hidden: int, std: float):
        super().__init__()
        self.variant, self.pooling = config.variant, config.pooling
        self.encoder = encoder
        self.encoder_trains = config.variant == "trained"
        in_dim = encoder.config.hidden_size if encoder is not None else model_hidden
        if config.variant == "prompt_only":
            table = encoder.get_input_embeddings().weight.detach()
            rows = torch.randint(0, table.shape[0], (config.prompt_length,))  # from the run's seed (set_seed)
            self.input_prompt = nn.Parameter(table[rows].clone())
            self.input_prompt.petl_no_decay = True
        if config.variant == "reparam":
            self.vector = nn.Parameter(torch.randn(model_hidden) * std)
            self.vector.petl_no_decay = True
        self.generator = PromptGenerator(in_dim, config.hidden, config.prompt_length, model_hidden)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self.encoder_trains:
            self.encoder.eval()  # a frozen feature extractor: no dropout noise in its features
        return self

    def _encode(self, **inputs) -> torch.Tensor:
        from petl.models import pool_hidden

        hidden = self.encoder(**inputs).last_hidden_state
        return pool_hidden(hidden, inputs.get("attention_mask"), self.pooling)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if self.variant == "reparam":
            return self.generator(self.vector.unsqueeze(0))
        if self.variant == "prompt_only":
            embeds = self.input_prompt.unsqueeze(0)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            return self.generator(self._encode(inputs_embeds=embeds, attention_mask=mask))
        if input_ids is None:
            raise PetlError(
                "IDPG needs the encoder's own inputs (idpg_input_ids, idpg_attention_mask); tokenise the raw text "
                "with petl.data.tokenize_split(..., extra_tokenizers=petl.state.get_state(model).extra_inputs)"
            )
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with nullcontext() if self.encoder_trains else torch.no_grad():
            features = self._encode(**inputs)
        return self.generator(features)


def apply_idpg(model: nn.Module, config: IdpgConfig) -> dict[str, int | None | tuple[int | None, str]]:
    encoder = tokenizer = None
    if config.variant != "reparam":
        encoder, tokenizer = load_encoder(config.encoder)
    std = getattr(model.config, "initializer_range", 0.02)
    device = next(model.parameters()).device
    model.idpg = InstancePrompts(config, encoder, input_embedding_width(model), std)  # ALBERT: embedding_size < hidden_size
    init_generator_output(model.idpg.generator, get_module(backbone_of(model), arch_for(model).word_embeddings))
    model.idpg.to(device)
    model.idpg.train(model.training)
    attach_input_prompts(model, model.idpg, config.position, extra_prefix=EXTRA_INPUT_PREFIX)
    if config.variant in ("original", "trained"):
        attach_state(model).extra_inputs[EXTRA_INPUT_PREFIX] = tokenizer  # the extra-inputs contract: petl.registry
    prefix = full_name(model, model.idpg)
    owned: dict[str, tuple[int | None, str]] = {}
    for name, _ in model.idpg.generator.named_parameters():
        owned[f"{prefix}.generator.{name}"] = (None, "generator")
    for attr, part in (("input_prompt", "input prompt"), ("vector", "vector")):
        if hasattr(model.idpg, attr):
            owned[f"{prefix}.{attr}"] = (None, part)
    if config.variant == "trained":
        for name, param in model.idpg.encoder.named_parameters():
            param.requires_grad_(True)
            owned[f"{prefix}.encoder.{name}"] = (None, "encoder")
    for name, param in model.idpg.named_parameters():
        param.requires_grad_(f"{prefix}.{name}" in owned)
    return owned


register(
    MethodEntry(
        "idpg",
        IdpgConfig,
        apply_idpg,
        flag_prefix="idpg",
        group="input prompt",
        pretrained_parts=("encoder",),
        description="instance-dependent prompts: a sentence encoder + bottleneck MLP generate each input's prompt",
        search_space={"learning_rate": {"loguniform": [1e-4, 1e-2]}, "idpg_prompt_length": {"choice": [1, 5, 10]}},
        default_lr=3e-3,  # scripts/idpg_hyper.sh
    )
)
