"""Write LoRA weights in PEFT's adapter format (`adapter_config.json` + `adapter_model.safetensors`),
so `peft.PeftModel.from_pretrained(AutoModelForSequenceClassification..., dir)` gives our logits."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from petl.core import _owner, petl_state_dict
from petl.errors import PetlError
from petl.methods.lora import lora_modules
from petl.models import PooledClassifier, head_module_names
from petl.results import write_atomic, write_text_atomic
from petl.state import get_state


def export_peft(model: nn.Module, directory: str, base_model_name_or_path: str = "", state: dict | None = None) -> Path:
    """`state`: the trained tensors by parameter name when already gathered (petl_state_dict)."""
    if isinstance(model, PooledClassifier):
        raise PetlError("--export_peft needs --pooler_type model (PEFT loads onto the stock HF classifier)")
    methods = {c.method for c in get_state(model).methods or []}
    if methods - {"lora", "head"}:
        raise PetlError(f"--export_peft writes LoRA only; this model also has {', '.join(sorted(methods - {'lora', 'head'}))}")
    modules = lora_modules(model)
    if not modules:
        raise PetlError("--export_peft: the model has no LoRA modules")
    if any(m.lora_merged for _, m in modules):
        raise PetlError("--export_peft: unmerge LoRA first (petl.unmerge_petl)")
    if any(None not in m.lora_slots for _, m in modules):
        raise PetlError(
            "--export_peft: LoRA on slots of a fused projection (GPT-2 c_attn q/k/v) has no PEFT equivalent "
            "(PEFT adapts c_attn as one matrix); export LoRA on o, ffn_in, ffn_out only"
        )
    first = modules[0][1]
    ranks = {m.lora_A.out_features for _, m in modules}
    scalings = {m.lora_scaling for _, m in modules}
    if len(ranks) != 1 or len(scalings) != 1:
        raise PetlError("--export_peft needs one rank and alpha for all LoRA modules")
    rank = ranks.pop()
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    head = head_module_names(model)
    if state is None:
        state = petl_state_dict(model)
    tensors = {}
    for name, _ in modules:
        for part in ("lora_A", "lora_B"):
            tensors[f"base_model.model.{name}.{part}.weight"] = state[f"{name}.{part}.weight"]
    for pname, (method, _) in _owner(model).items():
        if method == "head":
            tensors[f"base_model.model.{pname}"] = state[pname]
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": scalings.pop() * rank,
        "lora_dropout": dropout,
        "target_modules": [name for name, _ in modules],
        "modules_to_save": [h.split(".")[-1] for h in head],
        "bias": "none",
        "fan_in_fan_out": not isinstance(first, nn.Linear),  # GPT-2's Conv1D stores weights as (in, out)
        "init_lora_weights": True,
        "inference_mode": True,
    }
    out = Path(directory)
    write_atomic(out / "adapter_model.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_text_atomic(out / "adapter_config.json", json.dumps(config, indent=2))
    return out
