"""What the pipeline keeps on a model between modules: one `PetlState`, at `model.petl_state`.

Who writes which field, and who reads it:
- `load_model` (petl.models): `pooler_type` (the resolved `--pooler_type`, `auto` included: what ran,
  recorded and saved with the delta) and `new_parameters` (what the checkpoint lacked and `--seed`
  initialised: the results record).
- `apply_petl` (petl.core): `methods`, `owner`, `parts`, `head` - read by the parameter report, the optimizer's
  groups, saving and loading deltas, the PEFT export, the layer cache and the trainer.
- a method's `apply` (IDPG): `extra_inputs`, the tokenizers of the extra inputs it needs (see
  "The extra-inputs contract" in petl.registry).
- `prepare_cached_datasets` (petl.cache): `cache_start`, the layer that batches of cached states
  enter (read by the trainer).

The object itself is never saved: a delta's petl_config.json holds the method configs (`methods`)
and the values the CLI passes as `extra` (the pooler type among them), as before this object
existed, so deltas saved earlier load unchanged.

Not model state, and so not here: per-tensor flags (`param.petl_no_decay`: the optimizer gives the
tensor no weight decay) and per-module bookkeeping that a method's hooks read from the module they
run on (`lora_slots`, `bias_delta_slots`, `petl_prefix_owner`, `_petl_signature`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # a leaf module: imports nothing of petl at run time
    from petl.registry import MethodConfig

STATE_ATTRIBUTE = "petl_state"


@dataclass
class PetlState:
    """The PETL facts about one model; `None` / empty until the step that sets them has run."""

    methods: list[MethodConfig] | None = None  # the applied MethodConfigs, in order; None: apply_petl has not run
    owner: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # trained parameter -> (method or "head", layer)
    parts: dict[str, str] = field(default_factory=dict)  # parameter -> part, for methods reporting parts (IDPG: generator, encoder)
    head: list[str] = field(default_factory=list)  # parameters of the head's modules, whoever trains them (full fine-tuning owns them)
    pooler_type: str | None = None  # as resolved by load_model; None for a model it did not load
    new_parameters: list[str] = field(default_factory=list)  # parameters the checkpoint lacked, initialised from --seed
    cache_start: int | None = None  # first layer run on cached states (--cache_frozen_layers); None: no cache
    extra_inputs: dict[str, Any] = field(default_factory=dict)  # {column prefix: tokenizer} a method's pre-hook consumes

    @property
    def applied(self) -> bool:
        return self.methods is not None


def attach_state(model: nn.Module) -> PetlState:
    """The model's state, attached (empty) first if it has none. Every write goes through this."""
    state = getattr(model, STATE_ATTRIBUTE, None)
    if state is None:
        state = PetlState()
        setattr(model, STATE_ATTRIBUTE, state)
    return state


def get_state(model: nn.Module) -> PetlState:
    """The model's state for reading; an empty, unattached one if nothing has been recorded."""
    state = getattr(model, STATE_ATTRIBUTE, None)
    return PetlState() if state is None else state
