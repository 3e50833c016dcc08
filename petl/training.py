"""HF Trainer integration: optimizer parameter groups, best-state selection with early stopping,
and delta-only checkpoints for PETL methods.

Where the head's learning rate is set: `build_param_groups` (from --head_lr / --petl_lr).

Exact resume: besides HF's files (weights or delta, optimizer, scheduler, RNG, trainer_state.json),
every checkpoint-N/ holds what lives outside the model: the best state and its step, epoch and
score, the evaluation history, the early-stopping counter (RESUME_STATE_FILE, BEST_STATE_FILE) and
the running training-loss sums. They are written before HF's trainer_state.json, so a checkpoint
with trainer_state.json is complete; `resolve_resume_checkpoint` only resumes from complete ones."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from petl.cache import CACHE_INPUT, run_from_layer
from petl.core import PETL_CONFIG_FILE, _owner, gathered, is_new_parameter, load_petl, save_petl
from petl.errors import PetlError
from petl.results import write_atomic
from petl.state import get_state

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"  # HF's, written last into a checkpoint
RESUME_STATE_FILE = "petl_resume.json"  # best-state bookkeeping and training-loss sums
BEST_STATE_FILE = "petl_best_state.safetensors"  # the trained tensors at the best validation score
RESUME_FORMAT_VERSION = 1
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint-N folders in `output_dir` that were written to the end (trainer_state.json
    present), by step. A folder without it was cut short by a crash while being saved."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            if (child / TRAINER_STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
            else:
                logger.warning("skipping %s: no %s (saving was cut short)", child, TRAINER_STATE_FILE)
    return [path for _, path in sorted(found)]


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str | os.PathLike | None) -> str | None:
    """--resume_from_checkpoint: None (or false/empty) starts afresh; `true` is the latest complete
    checkpoint-N in output_dir (HF's get_last_checkpoint, skipping checkpoints cut short); anything
    else must be a complete checkpoint folder. Bad values are a PetlError naming them."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        latest = complete_checkpoints(output_dir) if output_dir else []
        if not latest:
            raise PetlError(
                f"--resume_from_checkpoint true: --output_dir {str(output_dir)!r} holds no complete {PREFIX_CHECKPOINT_DIR}-N "
                f"folder (with {TRAINER_STATE_FILE}); checkpoints are written with --save_strategy epoch or steps"
            )
        logger.info("resuming from the latest checkpoint, %s", latest[-1])
        return str(latest[-1])
    folder = Path(value)
    if not folder.is_dir():
        raise PetlError(
            f"--resume_from_checkpoint {value!r} is not a folder; give a {PREFIX_CHECKPOINT_DIR}-N folder of an earlier run, "
            "or 'true' for the latest one in --output_dir"
        )
    if not (folder / TRAINER_STATE_FILE).is_file():
        raise PetlError(
            f"--resume_from_checkpoint {value!r} has no {TRAINER_STATE_FILE}: not a checkpoint, or one cut short while "
            "being saved; give a complete checkpoint folder"
        )
    return str(folder)


def read_resume_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's RESUME_STATE_FILE, checked; a PetlError if missing or malformed."""
    path = Path(checkpoint) / RESUME_STATE_FILE
    if not path.is_file():
        raise PetlError(
            f"--resume_from_checkpoint {str(checkpoint)!r} has no {RESUME_STATE_FILE} (the best state, evaluation history "
            "and early-stopping counter): it was written by an older version; resuming from it would not be exact"
        )
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PetlError(f"{str(path)!r} is not valid JSON: {err}") from None
    loss = state.get("train_loss") if isinstance(state, dict) else None
    ok = (
        isinstance(state, dict)
        and state.get("format_version") == RESUME_FORMAT_VERSION
        and isinstance(loss, dict)
        and all(isinstance(loss.get(k), (int, float)) for k in ("total", "pending"))
        and isinstance(loss.get("last_logged_step"), int)
        and (state.get("best") is None or isinstance(state.get("best"), dict))
    )
    if not ok:
        raise PetlError(f"{str(path)!r} is not a resume state of format {RESUME_FORMAT_VERSION} (train_loss, best); was it edited?")
    return state


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
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_lr: float | None,
    petl_lr: float | None,
    method_lrs: dict[str, float] | None = None,
) -> list[dict]:
    """Groups: head, method parameters (new), other trainable weights; each split by decay. Each group
    says where its rate came from (`lr_source`). `method_lrs` (method -> its default rate; given when
    no --petl_lr or --learning_rate was) sets the new parameters' rates, per method; methods of one run
    with different defaults get a group each (`petl:<method>`)."""
    owner = _owner(model)
    no_decay = no_decay_parameter_names(model)
    lrs = group_learning_rates(learning_rate, head_lr, petl_lr)
    defaults = {m: lr for m, lr in (method_lrs or {}).items() if lr} if not petl_lr else {}
    petl_source = "--petl_lr" if petl_lr else "--learning_rate"
    trained = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            method = owner.get(name, ("other", None))[0]
            kind = "head" if method == "head" else ("petl" if is_new_parameter(model, name) else "other")
            trained.append((name, param, kind, method))
    petl_methods = [m for _, _, kind, m in trained if kind == "petl"]
    petl_rates = {m: (defaults[m], f"default for {m}") if m in defaults else (lrs["petl"], petl_source) for m in petl_methods}
    split_by_method = len({lr for lr, _ in petl_rates.values()}) > 1
    rates: dict[str, tuple[float, str]] = {
        "head": (lrs["head"], "--head_lr" if head_lr else "--learning_rate"),
        "other": (lrs["other"], "--learning_rate"),
    }
    if petl_rates and not split_by_method:  # one rate; its source names every method it is the default of
        lr, source = next(iter(petl_rates.values()))
        named = sorted(m for m in petl_rates if m in defaults)
        rates["petl"] = (lr, f"default for {', '.join(named)}" if named else source)
    groups: dict[tuple[str, bool], list] = {}
    for name, param, kind, method in trained:
        if kind == "petl" and split_by_method:
            kind = f"petl:{method}"
            rates[kind] = petl_rates[method]
        groups.setdefault((kind, name not in no_decay), []).append((name, param))
    out = []
    for (kind, decay), items in sorted(groups.items()):
        out.append(
            {
                "params": [p for _, p in items],
                "lr": rates[kind][0],
                "lr_source": rates[kind][1],
                "weight_decay": weight_decay if decay else 0.0,
                "group_name": f"{kind}{'' if decay else '/no_decay'}",
                "num_parameters": sum(p.numel() for _, p in items),
            }
        )
    return out


class PetlTrainer(Trainer):
    """Trainer with our parameter groups; checkpoints of PETL runs hold only the trained tensors."""

    def __init__(self, *args, method_lrs: dict[str, float] | None = None, **kwargs):
        """`method_lrs`: each method's default rate for its new parameters, for a run that gave no
        --petl_lr or --learning_rate (build_param_groups); None: they train at --petl_lr, else --learning_rate."""
        self.method_lrs = method_lrs
        self.learning_rates: dict[str, dict] | None = None  # per group: the rate used and where it came from
        super().__init__(*args, **kwargs)
        # Our losses are per-batch means. The Trainer would otherwise see `**kwargs` in forward,
        # assume the model normalises by `num_items_in_batch` itself, and then neither divide by
        # the accumulation steps nor undo DDP's averaging: k-times (or world-size-times) updates.
        self.model_accepts_loss_kwargs = False
        self._resume_state: dict[str, Any] | None = None
        self.add_callback(_RestoreLossSums(self))

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation and prediction read the dataset in order. transformers 5 applies group_by_length
        to them too (a seeded length-grouped shuffle): metrics survive it, since predictions and labels
        move together, but predictions no longer line up with their examples (prediction files, the
        record's test_predictions, the linear probe's features against their labels)."""
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_eval_sampler(eval_dataset)
        if eval_dataset is None or self.args.world_size > 1:
            return None  # a sharded sequential sampler is Accelerate's, as in HF's own branch
        return torch.utils.data.SequentialSampler(eval_dataset)

    def _best_state_callback(self) -> BestStateCallback | None:
        found = [cb for cb in self.callback_handler.callbacks if isinstance(cb, BestStateCallback)]
        if len(found) > 1:
            raise ValueError("a PetlTrainer takes at most one BestStateCallback")
        return found[0] if found else None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs) -> TrainOutput:
        """HF's train, resuming exactly: `true` is the latest complete checkpoint in output_dir, and
        the checkpoint's best state, evaluation history, early-stopping counter and training-loss
        sums are restored, so the run ends as the uninterrupted one would (train_loss included)."""
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        self._resume_state = read_resume_state(checkpoint) if checkpoint else None
        best = self._best_state_callback()
        if self._resume_state is not None and best is not None:
            best.load_checkpoint_state(self._resume_state.get("best"), checkpoint)
        out = super().train(checkpoint, *args, **kwargs)
        if self._resume_state is None:
            return out
        # HF averages over this call's steps only; the restored sum covers the whole run
        train_loss = self._total_loss_scalar / max(self.state.global_step, 0.001)
        return TrainOutput(out.global_step, train_loss, {**out.metrics, "train_loss": train_loss})

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        best = self._best_state_callback()
        if self._resume_state is not None and best is not None and best.stopped:
            # early stopping had ended training when this checkpoint was saved: train no further
            logger.info("the checkpoint was saved when early stopping ended training; no more steps")
            return num_train_epochs, 0
        return epochs_trained, steps_trained_in_current_epoch

    def _save_checkpoint(self, model, trial) -> None:
        """Our resume files first, then HF's (trainer_state.json last marks the checkpoint complete)."""
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            folder.mkdir(parents=True, exist_ok=True)
            best = self._best_state_callback()
            state = {
                "format_version": RESUME_FORMAT_VERSION,
                "step": self.state.global_step,
                # the Trainer's running sums of this rank's training loss (train_loss = total / steps)
                "train_loss": {
                    "total": self._total_loss_scalar,
                    "pending": float(self._tr_loss.item()),
                    "last_logged_step": self._globalstep_last_logged,
                },
                "best": best.save_checkpoint_state(folder) if best is not None else None,
            }
            write_atomic(folder / RESUME_STATE_FILE, lambda tmp: tmp.write_text(json.dumps(state, indent=2)))
        super()._save_checkpoint(model, trial)

    def _restore_loss_sums(self) -> None:
        if self._resume_state is None:
            return
        loss = self._resume_state["train_loss"]
        self._total_loss_scalar = float(loss["total"])
        self._tr_loss = torch.tensor(float(loss["pending"]), dtype=self._tr_loss.dtype, device=self._tr_loss.device)
        self._globalstep_last_logged = int(loss["last_logged_step"])

    def _param_groups(self, model: nn.Module) -> list[dict]:
        args = self.args
        return build_param_groups(model, args.learning_rate, args.weight_decay, args.head_lr, args.petl_lr, self.method_lrs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            args = self.args
            groups = self._param_groups(opt_model)
            for g in groups:
                logger.info(
                    "param group %-16s lr=%.2e (%s) weight_decay=%.3g tensors=%d parameters=%d",
                    g["group_name"],
                    g["lr"],
                    g["lr_source"],
                    g["weight_decay"],
                    len(g["params"]),
                    g["num_parameters"],
                )
            self.learning_rates = {g["group_name"]: {"lr": g["lr"], "source": g["lr_source"]} for g in groups}
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
            optimizer_kwargs.pop("lr", None)
            clean = [{k: v for k, v in g.items() if k not in ("num_parameters", "lr_source")} for g in groups]
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
        return run_from_layer(self.model, get_state(self.model).cache_start, hidden)

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
        current = {g["group_name"]: g["lr"] for g in self._param_groups(self.model)}
        scheduler = self.lr_scheduler
        for i, group in enumerate(self.optimizer.param_groups):
            name = group.get("group_name", "other")
            kind = name.split("/", 1)[0].split(":", 1)[0]
            base = current.get(name, lrs.get(kind, args.learning_rate))
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
        methods = get_state(self.model).methods or []
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


class _RestoreLossSums(TrainerCallback):
    """HF resets its training-loss sums just before on_train_begin; a resumed run sets them back."""

    def __init__(self, trainer: PetlTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._restore_loss_sums()


class BestStateCallback(TrainerCallback):
    """Keeps an in-memory copy of the trainable tensors at the best validation score, stops early
    after `patience` evaluations without improvement, and restores the best state on request.

    Only the trained tensors are copied, so a PETL run holds kilobytes to megabytes, never a
    full-model checkpoint on disk. With checkpoints, PetlTrainer saves this bookkeeping into each
    (save_checkpoint_state) and restores it on resume (load_checkpoint_state)."""

    def __init__(self, model: nn.Module, metric: str, greater_is_better: bool = True, patience: int | None = None):
        self.model = model
        self.metric_key = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.greater_is_better = greater_is_better
        self.patience = patience
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_epoch: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        # every metric of the best evaluation: once that state is restored, its validation scores are known
        # and the final evaluation need not run the validation set again
        self.best_metrics: dict[str, float] | None = None
        self.bad_evals = 0
        self.stopped = False  # early stopping has ended training
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
            self.best_metrics = {"epoch": state.epoch, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
            trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            with gathered([p for _, p in trained]):  # collective under ZeRO-3; every rank evaluates
                self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in trained}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            if self.patience is not None and self.bad_evals >= self.patience:
                logger.info("early stopping: %d evaluations without improvement of %s", self.bad_evals, self.metric_key)
                self.stopped = True
                control.should_training_stop = True

    def save_checkpoint_state(self, folder: Path) -> dict[str, Any]:
        """Write the best tensors into `folder` (atomically); return the rest, for the resume file."""
        if self.best_state is not None:
            write_atomic(folder / BEST_STATE_FILE, lambda tmp: save_file(self.best_state, str(tmp)))
        return {
            "metric_key": self.metric_key,
            "greater_is_better": self.greater_is_better,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "bad_evals": self.bad_evals,
            "stopped": self.stopped,
            "history": self.history,
            "best_metrics": self.best_metrics,
            "has_best_state": self.best_state is not None,
        }

    def load_checkpoint_state(self, saved: dict[str, Any] | None, folder: str | os.PathLike) -> None:
        """Take back what save_checkpoint_state wrote; refuse a checkpoint that selected by another
        metric or whose tensors do not fit this model's trainable parameters."""
        where = f"--resume_from_checkpoint {str(folder)!r}"
        if saved is None:
            raise PetlError(f"{where} holds no best state (it was saved without best-state selection); resuming would not be exact")
        if (saved.get("metric_key"), saved.get("greater_is_better")) != (self.metric_key, self.greater_is_better):
            raise PetlError(
                f"{where} selected the best state by {saved.get('metric_key')!r} (greater is better: "
                f"{saved.get('greater_is_better')}), this run by {self.metric_key!r} (greater is better: {self.greater_is_better}); "
                "resume with the same --metric_for_best_model"
            )
        best_state = None
        if saved.get("has_best_state"):
            path = Path(folder) / BEST_STATE_FILE
            try:
                best_state = load_file(str(path))
            except (OSError, SafetensorError) as err:
                raise PetlError(f"{str(path)!r} cannot be read ({err}); resume from another checkpoint") from None
            shapes = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in self.model.named_parameters() if p.requires_grad}
            saved_shapes = {n: tuple(t.shape) for n, t in best_state.items()}
            if saved_shapes != shapes:
                differ = sorted(set(saved_shapes.items()) ^ set(shapes.items()))[:3]
                raise PetlError(
                    f"{str(path)!r} does not fit this model's trainable parameters (differing: {differ}); same method and model?"
                )
        self.best_state = best_state
        self.best_value = saved.get("best_value")
        self.best_step = saved.get("best_step")
        self.best_epoch = saved.get("best_epoch")
        self.bad_evals = int(saved.get("bad_evals") or 0)
        self.stopped = bool(saved.get("stopped"))
        self.history = list(saved.get("history") or [])
        self.best_metrics = saved.get("best_metrics")  # None from older checkpoints: validation is evaluated again
        logger.info(
            "resumed the best state: %s=%s at step %s, %d evaluations so far, %d without improvement",
            self.metric_key,
            self.best_value,
            self.best_step,
            len(self.history),
            self.bad_evals,
        )

    def restore_best(self) -> bool:
        if self.best_state is None:
            return False
        params = dict(self.model.named_parameters())
        with torch.no_grad(), gathered([params[n] for n in self.best_state], modify=True):
            for name, tensor in self.best_state.items():
                params[name].copy_(tensor)
        return True
