"""Prompt tuning (Lester et al. 2021): P soft tokens inserted at the input embeddings.

A pre-hook on the top-level model turns `input_ids` into `inputs_embeds`, inserts the prompts and
extends `attention_mask` and `token_type_ids`. `position`: `after_cls` puts them right after the
first (special) token, so CLS pooling still reads the real CLS token; `start` puts them before it,
as PEFT does; `auto` (default) is `after_cls` for encoders and `start` for decoders (no CLS token).

`attach_input_prompts` is shared by every method that inserts prompts at the input (prompt tuning,
P-tuning, IDPG): they differ only in the module that produces the prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petl.arch import arch_for, backbone_of, get_module
from petl.errors import PetlError
from petl.methods.forward_args import bind_arguments, unbind
from petl.methods.targets import owned_parameters
from petl.registry import MethodConfig, MethodEntry, option, register


@dataclass
class PromptConfig(MethodConfig):
    length: int = option(10, "Number of soft prompt tokens.")
    init: str = option("random", "random, vocab, or text.")
    init_text: str = option("", "Text whose token embeddings initialise prompts.")
    position: str = option("auto", "after_cls: after the first token; start: before it (as PEFT); auto: after_cls, start on decoders.")

    def validate(self) -> None:
        if self.length < 1:
            raise PetlError(f"--prompt_length {self.length} is invalid; allowed: >= 1")
        if self.init not in ("random", "vocab", "text"):
            raise PetlError(f"--prompt_init {self.init!r} is not one of random, vocab, text")
        if self.init == "text" and not self.init_text:
            raise PetlError("--prompt_init text needs --prompt_init_text")
        validate_position(self.position, "prompt_position")


PROMPT_POSITIONS = ("auto", "after_cls", "start")


def validate_position(position: str, flag: str) -> None:
    if position not in PROMPT_POSITIONS:
        raise PetlError(f"--{flag} {position!r} is not one of {', '.join(PROMPT_POSITIONS)}")


def insert_index(model: nn.Module, position: str) -> int:
    if position == "auto":
        position = "start" if arch_for(model).decoder else "after_cls"
    return 1 if position == "after_cls" else 0


class SoftPrompt(nn.Module):
    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.embeddings = nn.Parameter(embeddings)
        self.embeddings.petl_no_decay = True

    def forward(self) -> torch.Tensor:
        # read through a module call, so DeepSpeed ZeRO-3 gathers the partitioned tensor first
        return self.embeddings


def _initial_prompt(model: nn.Module, word_embeddings: nn.Embedding, config: PromptConfig) -> torch.Tensor:
    table = word_embeddings.weight.detach()
    if config.init == "random":
        return torch.randn(config.length, table.shape[1], device=table.device) * getattr(model.config, "initializer_range", 0.02)
    if config.init == "vocab":
        ids = torch.randint(0, table.shape[0], (config.length,))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
        token_ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
        if not token_ids:
            raise PetlError(f"--prompt_init_text {config.init_text!r} has no tokens")
        ids = torch.tensor((token_ids * config.length)[: config.length])
    with torch.no_grad():  # through the module, not its table: Gemma scales its embeddings by sqrt(hidden) inside it
        return word_embeddings(ids.to(table.device)).detach().clone()


def _insert(x: torch.Tensor, block: torch.Tensor, at: int) -> torch.Tensor:
    return torch.cat([x[:, :at], block, x[:, at:]], dim=1)


def _prompt_pre_hook(word_embeddings: nn.Embedding, source: nn.Module, at: int, extra_prefix: str | None):
    def hook(module, args, kwargs):
        # inputs meant for the prompt source (IDPG's encoder reads its own tokens): removed before binding
        extra = {}
        if extra_prefix:
            extra = {k.removeprefix(f"{extra_prefix}_"): kwargs.pop(k) for k in list(kwargs) if k.startswith(f"{extra_prefix}_")}
        bound = bind_arguments(module, args, kwargs)
        a = bound.arguments
        input_ids = a.get("input_ids")
        embeds = a.get("inputs_embeds")
        if embeds is None:
            if input_ids is None:
                raise PetlError("prompt tuning needs input_ids or inputs_embeds")
            embeds = word_embeddings(input_ids)
        b = embeds.shape[0]
        prompts = source(**extra)  # (P, h) shared, or (B, P, h) per instance; called as a module (ZeRO-3 gathers)
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0)
        p = prompts.shape[1]
        block = prompts.to(embeds.dtype).expand(b, -1, -1)
        a["inputs_embeds"] = _insert(embeds, block, at)
        a["input_ids"] = None
        if a.get("attention_mask") is not None:
            mask = a["attention_mask"]
            a["attention_mask"] = _insert(mask, mask.new_ones(b, p), at)
        if a.get("token_type_ids") is not None:
            tt = a["token_type_ids"]
            a["token_type_ids"] = _insert(tt, tt.new_zeros(b, p), at)
        if a.get("position_ids") is not None:
            raise PetlError("prompt tuning does not support explicit position_ids")
        return unbind(bound)

    return hook


def attach_input_prompts(model: nn.Module, source: nn.Module, position: str, extra_prefix: str | None = None) -> None:
    """Insert `source(...)`'s prompts into every forward's input embeddings at `position`."""
    word_embeddings = get_module(backbone_of(model), arch_for(model).word_embeddings)
    hook = _prompt_pre_hook(word_embeddings, source, insert_index(model, position), extra_prefix)
    model.register_forward_pre_hook(hook, with_kwargs=True)


def apply_prompt(model: nn.Module, config: PromptConfig) -> dict[str, int | None]:
    word_embeddings = get_module(backbone_of(model), arch_for(model).word_embeddings)
    model.soft_prompt = SoftPrompt(_initial_prompt(model, word_embeddings, config))
    attach_input_prompts(model, model.soft_prompt, config.position)
    return owned_parameters(model, model, None, ("soft_prompt",))


register(
    MethodEntry(
        "prompt",
        PromptConfig,
        apply_prompt,
        flag_prefix="prompt",
        group="input prompt",
        description="soft prompt tokens at the input embeddings",
        search_space={"learning_rate": {"loguniform": [1e-3, 3e-1]}, "prompt_length": {"choice": [5, 10, 20]}},
        default_lr=1e-2,  # scripts/prompt_hyper.sh
    )
)
