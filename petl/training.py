"""HF Trainer integration: optimizer parameter groups, best-state selection with early stopping,
and delta-only checkpoints for PETL methods.

Where the head's learning rate is set: `build_param_groups` (from --head_lr / --petl_lr)."""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from petl.cache import CACHE_INPUT, run_from_layer
from petl.core import PETL_CONFIG_FILE, _owner, gathered, is_new_parameter, load_petl, save_petl

logger = logging.getLogger(__name__)


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases, normalisation weights, and parameters a method flags as additive deltas
    (`param.petl_no_decay = True`: BitFit deltas, prompts, prefixes) get no weight decay."""
    names = set()
    for mod_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()
        for p_name, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if is_norm or p_name == "bias" or getattr(param, "petl_no_decay", False):
                names.add(full)
    return names


def group_learning_rates(learning_rate: float, head_lr: float | None, petl_lr: float | None) -> dict[str, float]:
    """Learning rate per group kind: --head_lr and --petl_lr default to --learning_rate."""
    return {"head": head_lr or learning_rate, "petl": petl_lr or learning_rate, "other": learning_rate}


def build_param_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, head_lr: float | None, petl_lr: float | None
) -> list[dict]:
    """Groups: head, method parameters (new), other trainable weights; each split by decay."""
    owner = _owner(model)
    no_decay = no_decay_parameter_names(model)
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        method = owner.get(name, ("other", None))[0]
        kind = "head" if method == "head" else ("petl" if is_new_parameter(model, name) else "other")
        groups.setdefault((kind, name not in no_decay), []).append((name, param))
    lrs = group_learning_rates(learning_rate, head_lr, petl_lr)
    out = []
    for (kind, decay), items in sorted(groups.items()):
        out.append(
            {
                "params": [p for _, p in items],
                "lr": lrs[kind],
                "weight_decay": weight_decay if decay else 0.0,
                "group_name": f"{kind}{'' if decay else '/no_decay'}",
                "num_parameters": sum(p.numel() for _, p in items),
            }
        )
    return out


class PetlTrainer(Trainer):
    """Trainer with our parameter groups; checkpoints of PETL runs hold only the trained tensors."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Our losses are per-batch means. The Trainer would otherwise see `**kwargs` in forward,
        # assume the model normalises by `num_items_in_batch` itself, and then neither divide by
        # the accumulation steps nor undo DDP's averaging: k-times (or world-size-times) updates.
        self.model_accepts_loss_kwargs = False

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            args = self.args
            groups = build_param_groups(opt_model, args.learning_rate, args.weight_decay, args.head_lr, args.petl_lr)
            for g in groups:
                logger.info(
                    "param group %-16s lr=%.2e weight_decay=%.3g tensors=%d parameters=%d",
                    g["group_name"],
                    g["lr"],
                    g["weight_decay"],
                    len(g["params"]),
                    g["num_parameters"],
                )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
            optimizer_kwargs.pop("lr", None)
            clean = [{k: v for k, v in g.items() if k != "num_parameters"} for g in groups]
            self.optimizer = optimizer_cls(clean, lr=args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def evaluation_loop(self, *args, **kwargs):
        """HF averages per-batch losses, and across ranks the last batch is padded with repeated
        examples, so its loss counts some examples twice. The predictions it gathers are exact
        (duplicates dropped); the reported loss is recomputed from them, over each example once."""
        out = super().evaluation_loop(*args, **kwargs)
        predictions = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        keys = [k for k in out.metrics if k.endswith("_loss")]
        if predictions is not None and out.label_ids is not None and len(keys) == 1:
            logits = torch.as_tensor(predictions, dtype=torch.float64)
            labels = torch.as_tensor(out.label_ids)
            if logits.ndim == 2 and logits.shape[-1] > 1:
                loss = nn.functional.cross_entropy(logits, labels.long())
            else:
                loss = nn.functional.mse_loss(logits.reshape(-1), labels.reshape(-1).to(torch.float64))
            out.metrics[keys[0]] = float(loss)
        return out

    def _from_cache(self, inputs: dict):
        """Batches from a CachedCollator carry the states entering the first trained layer."""
        hidden = inputs.pop(CACHE_INPUT, None)
        if hidden is None:
            return nullcontext()
        return run_from_layer(self.model, self.model.petl_cache_start, hidden)

    def compute_loss(self, model, inputs, *args, **kwargs):
        with self._from_cache(inputs):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, *args, **kwargs):
        with self._from_cache(inputs):
            return super().prediction_step(model, inputs, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Resume the optimizer and schedule, then apply *this* run's learning rates and weight decay.

        The checkpoint's optimizer state carries the old values; without this, a resumed run (or a
        PBT exploit with mutated hyperparameters) would silently keep them."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.optimizer is None:
            return
        args = self.args
        lrs = group_learning_rates(args.learning_rate, args.head_lr, args.petl_lr)
        scheduler = self.lr_scheduler
        for i, group in enumerate(self.optimizer.param_groups):
            name = group.get("group_name", "other")
            kind = name.split("/", 1)[0]
            base = lrs.get(kind, args.learning_rate)
            group["weight_decay"] = 0.0 if name.endswith("/no_decay") else args.weight_decay
            factor = 1.0
            if scheduler is not None and hasattr(scheduler, "lr_lambdas"):
                scheduler.base_lrs[i] = base
                factor = scheduler.lr_lambdas[i](scheduler.last_epoch)
            group["initial_lr"] = base
            group["lr"] = base * factor
        if scheduler is not None and hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        logger.info("resumed; learning rates now %s", {g.get("group_name"): f"{g['lr']:.3g}" for g in self.optimizer.param_groups})

    def _is_petl_run(self) -> bool:
        methods = getattr(self.model, "petl_methods", None) or []
        return not any(m.method == "full" for m in methods)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self._is_petl_run():
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        state = None
        trained = _owner(self.model)
        if state_dict is not None and all(n in state_dict for n in trained):
            # DeepSpeed hands over the gathered weights (under ZeRO-3 the only whole copy)
            state = {n: state_dict[n].detach().cpu().contiguous() for n in trained}
        save_petl(self.model, output_dir, state=state)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if Path(resume_from_checkpoint, PETL_CONFIG_FILE).is_file():
            load_petl(model or self.model, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


class BestStateCallback(TrainerCallback):
    """Keeps an in-memory copy of the trainable tensors at the best validation score, stops early
    after `patience` evaluations without improvement, and restores the best state on request.

    Only the trained tensors are copied, so a PETL run holds kilobytes to megabytes, never a
    full-model checkpoint on disk."""

    def __init__(self, model: nn.Module, metric: str, greater_is_better: bool = True, patience: int | None = None):
        self.model = model
        self.metric_key = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.patience = patience
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_epoch: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.history: list[dict] = []
        self.active = True

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value > self.best_value if self.greater_is_better else value < self.best_value

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.active or not metrics or self.metric_key not in metrics:
            return
        value = float(metrics[self.metric_key])
        self.history.append({"step": state.global_step, "epoch": state.epoch, self.metric_key: value})
        if math.isnan(value):
            value = -math.inf if self.greater_is_better else math.inf
        if self._better(value):
            self.best_value, self.best_step, self.best_epoch = value, state.global_step, state.epoch
            trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            with gathered([p for _, p in trained]):  # collective under ZeRO-3; every rank evaluates
                self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in trained}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            if self.patience is not None and self.bad_evals >= self.patience:
                logger.info("early stopping: %d evaluations without improvement of %s", self.bad_evals, self.metric_key)
                control.should_training_stop = True

    def restore_best(self) -> bool:
        if self.best_state is None:
            return False
        params = dict(self.model.named_parameters())
        with torch.no_grad(), gathered([params[n] for n in self.best_state], modify=True):
            for name, tensor in self.best_state.items():
                params[name].copy_(tensor)
        return True
