"""The one registry of PETL methods.

A method is a config dataclass (its fields are the CLI flags `--<flag_prefix>_<field>`) plus an
`apply(model, config) -> {param_name: layer}` function that attaches or unfreezes parameters and
returns the trainable parameters it owns, keyed by full name, with their layer (None if not
layer-specific), or `(layer, part)` to report parts of a method separately (IDPG: generator,
encoder). `new_parameters` says whether those are new (they get `--petl_lr`) or existing backbone
weights (they get `--learning_rate`); parts listed in `pretrained_parts` count as existing weights.
Methods of one `group` (e.g. "input prompt"; "adapter": adapter and its presets) exclude each other.

A method is defined in one file, petl/methods/<method>.py, plus its import line in petl/methods/__init__.py:
- each config field is declared with `option(default, help)`; argument_classes.PetlArguments lists the
  flag `<flag_prefix>_<field>: <type> = option_field(method, field)`, which takes default and help from
  here (tests/test_registry.py proves that every option has its flag, of the same type);
- `merge` / `unmerge` fold the method into the base weights and out again (merge_petl, unmerge_petl
  call them, additive methods first; a method without them cannot be merged);
- `search_space` is its default space for run_glue_hyper_search.py (petl.search adds the common one).

What a method records on the model goes into its one `PetlState` (petl.state: methods, owners,
parts, pooler type, new parameters, cache start, extra inputs), never into `model.<attribute>`s of
its own. (Per-tensor flags such as `param.petl_no_decay`, and per-module bookkeeping that a
method's hooks read from the module they run on, stay where they are: they are not model state.)

The extra-inputs contract (model -> data pipeline -> model). A method whose modules read inputs
of their own (IDPG: its sentence encoder reads the raw text with its own tokenizer):
1. declares them in `apply`: `attach_state(model).extra_inputs[prefix] = tokenizer`, one column
   prefix per tokenizer (IDPG: "idpg");
2. the pipeline tokenises the raw text (the original pair, not the decoder's joined template) once
   more with each: `petl.data.tokenize_split(..., extra_tokenizers=get_state(model).extra_inputs)`
   adds the columns `<prefix>_input_ids`, `<prefix>_attention_mask` (and whatever else that
   tokenizer returns), truncated to min(--max_seq_length, the tokenizer's model_max_length);
3. `petl.data.ExtraInputsCollator` pads the `<prefix>_*` columns with their own tokenizer and the
   rest with the main collator; the Trainer must keep those columns (`remove_unused_columns=False`),
   as they are no argument of the model's `forward`;
4. the method's forward pre-hook on the model pops every `<prefix>_*` keyword before the backbone
   sees it and hands them, prefix removed, to its module (petl.methods.prompt: `extra_prefix`).
A batch without them reaches the module with no inputs, which refuses it with an error naming
this path.

The hook-order rule: additive hooks before multiplicative ones. A hook that adds a term which does
not depend on the module's output - LoRA's `B A x`, BitFit's bias delta: they complete the
module's own map `W x + b` - is registered with `register_forward_hook(..., prepend=True)`, so it
runs first. Hooks that read or rewrite the module's output - a serial adapter's `y + f(y)`, a
learned scaling `l * y` (IA3's keys and values), prefix tuning's replacement of placeholder rows
on MPNet's key and value projections - are appended, so they run after it, in the order the
methods are listed, and see the complete output `W x + b + update`. (A pre-hook that rewrites a
module's input, as IA3's FFN scaling does, runs before its forward: every forward hook's `x` is the
rewritten input.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from petl.errors import PetlError


@dataclass
class MethodConfig:
    """Base of every method config. `method` is the registry name."""

    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def option(default: Any, help: str) -> Any:
    """A method config field: its default and its help text (shown by `run_glue.py --help`)."""
    return field(default=default, metadata={"help": help})


def option_field(method: str, name: str) -> Any:
    """The dataclass field of the flag `--<flag_prefix>_<name>` (argument_classes.PetlArguments):
    default and help taken from the method's config, so they are stated once, in the method's file."""
    options = {f.name: f for f in fields(get_method(method).config_cls)}
    if name not in options or name == "method":
        raise PetlError(f"internal: method {method!r} has no option {name!r}")
    return field(default=options[name].default, metadata={"help": options[name].metadata.get("help", "")})


def given_method_flags(petl_args: Any, given: Any) -> list[str]:
    """The method option flags (`<flag_prefix>_<field>` fields of PetlArguments) among `given`, sorted: refused
    where a saved delta or a loaded adapter fixes the method (--load_petl, --load_peft)."""
    prefixes = {entry.flag_prefix for entry in METHODS.values()}
    return sorted(f.name for f in fields(petl_args) if f.name.split("_", 1)[0] in prefixes and f.name in set(given))


def nothing_to_fold(model: nn.Module) -> int:
    """`merge` and `unmerge` of methods that train the backbone's own weights (full, head, ffn): those
    weights are trained in place, so there is nothing to fold in or out; 0 modules changed."""
    return 0


@dataclass
class MethodEntry:
    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, Any], dict[str, int | None]]
    flag_prefix: str  # CLI flags are --<flag_prefix>_<field>
    new_parameters: bool = True
    exclusive: bool = False  # may not be combined with any other method
    preset: dict[str, Any] = field(default_factory=dict)  # fixed field values (presets such as houlsby)
    description: str = ""
    group: str | None = None  # at most one method of a group per run (presets of one config share one)
    pretrained_parts: tuple[str, ...] = ()  # parts holding pretrained weights (trained at --learning_rate)
    # fold the method into the base weights, logits unchanged / undo it; each returns the modules changed
    # and skips modules already in that state. None: the method cannot be merged (merge_petl refuses it)
    merge: Callable[[nn.Module], int] | None = None
    unmerge: Callable[[nn.Module], int] | None = None
    multiplicative: bool = False  # its hooks scale outputs: they run after the additive ones, so it folds after them
    # the method's default search space (run_glue_hyper_search.py without --search_space): argument name ->
    # one distribution (see petl.search); merged over the common one. None: not declared (a test demands one)
    search_space: dict[str, dict] | None = None
    # the learning rate of its new parameters when neither --petl_lr nor --learning_rate is given (the rate its
    # scripts/<method>_hyper.sh uses); None for methods that train only existing weights (--learning_rate)
    default_lr: float | None = None


METHODS: dict[str, MethodEntry] = {}


def register(entry: MethodEntry) -> MethodEntry:
    METHODS[entry.name] = entry
    return entry


def get_method(name: str) -> MethodEntry:
    if name not in METHODS:
        raise PetlError(f"--method {name!r} is unknown; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def make_config(name: str, **values: Any) -> MethodConfig:
    """Build a method's config from field values; preset fields cannot be overridden."""
    entry = get_method(name)
    for key, fixed in entry.preset.items():
        if key in values and values[key] != fixed:
            raise PetlError(f"--method {name} fixes {entry.flag_prefix}_{key}={fixed!r}; got {values[key]!r}")
    allowed = {f.name for f in fields(entry.config_cls)} - {"method"}
    unknown = set(values) - allowed
    if unknown:
        raise PetlError(f"method {name!r} has no option {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed))}")
    cfg = entry.config_cls(method=name, **{**values, **entry.preset})
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def config_from_dict(data: dict[str, Any], where: str | None = None) -> MethodConfig:
    """A method config from its dict (a saved delta's petl_config.json, the Python API): the method
    name and each option's type are checked; `where` (e.g. the file) prefixes any error."""
    from petl.typecheck import checked_value, field_types, shown

    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise PetlError(f'{prefix}expected a method config (an object with a "method" name), got {shown(data)}')
    data = dict(data)
    name = data.pop("method")
    try:
        entry = get_method(name)
        for key in entry.preset:
            data.pop(key, None)
        types = field_types(entry.config_cls)
        for key, value in data.items():
            if key in types:
                try:
                    data[key] = checked_value(value, types[key])
                except TypeError as err:
                    raise PetlError(f"{name} option {key!r} is {shown(value)}; expected {err}") from None
        return make_config(name, **data)
    except PetlError as err:
        raise PetlError(f"{prefix}{err}") from None
