"""The linear probe at layer k: a linear head fitted to convergence on the frozen pooled features of
the (truncated) backbone - the fair "what the frozen features already hold" baseline of a layer study.

    run_glue.py --method linear-probe --num_hidden_layers 4 --pooler_type avg ...     # probe at layer 3
    sweep grid:  linear-probe: {method: linear-probe, num_hidden_layers: "{next}"}

It trains nothing by gradient descent through the Trainer: `fit_linear_probe` extracts the pooled
features of the training, validation (and nothing else) sets once, through the Trainer's own
prediction loop (so the frozen-layer cache serves them where the run has one), standardises them
on the training set, and fits for each L2 strength of `L2_STRENGTHS`:
- classification: multinomial logistic regression, mean cross-entropy + l2/2 |W|^2, by torch
  L-BFGS (strong Wolfe line search) in float64, warm-started from the previous, stronger strength;
- regression: ridge regression, closed form (the same objective with squared error).
The strength with the best validation selection metric wins (ties: the stronger one); its weights,
standardisation folded in, become the model's head (one `nn.Linear` named `head.out_proj`), so the
run then evaluates, predicts, saves and records like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from petl.errors import PetlError
from petl.registry import MethodConfig, MethodEntry, nothing_to_fold, register

NAME = "linear-probe"
# L2 strengths tried, strongest first (warm starts go from a smooth solution towards a sharper one), half a
# decade apart: on 800 MRPC pairs the validation optimum sits between 10 (a constant predictor) and 1
L2_STRENGTHS = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
LBFGS_MAX_ITERATIONS = 500


@dataclass
class LinearProbeConfig(MethodConfig):
    pass


class LinearProbeHead(nn.Module):
    """pooled -> logits: one linear map (no dropout, no hidden layer)."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(pooled)


def apply_linear_probe(model: nn.Module, config: LinearProbeConfig) -> dict[str, int | None]:
    """Replace the pooled classifier's MLP head by a linear one; the backbone stays frozen and nothing
    else trains (petl.core makes the new head's parameters the head's)."""
    from petl.models import ClassificationHead

    head = getattr(model, "head", None)
    if not isinstance(head, (ClassificationHead, LinearProbeHead)):
        raise PetlError(f"--method {NAME} needs a pooled head: give --pooler_type cls, avg or last (not 'model')")
    model.head = LinearProbeHead(head.out_proj.in_features, head.out_proj.out_features).to(head.out_proj.weight.device)
    return {}


def is_linear_probe(method_names: list[str]) -> bool:
    return NAME in method_names


def pooled_features(model: nn.Module, trainer, dataset) -> np.ndarray:
    """The head's input (the pooled features) for every example of `dataset`, in order, through the
    Trainer's prediction loop (devices, the frozen-layer cache and batching as in evaluation)."""
    captured: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach().to("cpu", torch.float64)))
    try:
        trainer.predict(dataset, metric_key_prefix="features")
    finally:
        handle.remove()
    features = torch.cat(captured).numpy() if captured else np.zeros((0, 0))
    if len(features) != len(dataset):
        raise PetlError(f"internal: {len(features)} pooled feature rows for {len(dataset)} examples")
    return features


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_labels: int, l2: float, start: tuple | None = None) -> tuple:
    """Multinomial logistic regression (mean cross-entropy + l2/2 |W|^2) by L-BFGS: (W [d, K], b [K])."""
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = torch.zeros(x.shape[1], num_labels, dtype=torch.float64) if start is None else start[0].clone()
    bias = torch.zeros(num_labels, dtype=torch.float64) if start is None else start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=LBFGS_MAX_ITERATIONS, tolerance_grad=1e-7, tolerance_change=1e-10,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_ridge(features: np.ndarray, targets: np.ndarray, l2: float) -> tuple:
    """Ridge regression (mean squared error + l2 |W|^2) in closed form; features are centred: (W [d, 1], b [1])."""
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.float64).reshape(-1)
    mean = y.mean()
    gram = x.T @ x / len(x) + l2 * torch.eye(x.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, x.T @ (y - mean) / len(x))
    return weight.reshape(-1, 1), mean.reshape(1)


def choose_strength(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    num_labels: int,
    is_regression: bool,
    score,
    greater: bool,
    strengths: tuple[float, ...] = L2_STRENGTHS,
) -> dict[str, Any]:
    """Fit one probe per L2 strength on standardised training features; the validation-best wins.
    `score(outputs, labels)` is the selection metric. Returns the chosen strength, every strength's
    validation score, and the weights with the standardisation folded in (for raw features)."""
    (x_train, y_train), (x_val, y_val) = train, validation
    centre = x_train.mean(0)
    scale = x_train.std(0)
    scale[scale < 1e-12] = 1.0
    z_train, z_val = (x_train - centre) / scale, (x_val - centre) / scale
    best, scores, start = None, {}, None
    for l2 in strengths:
        if is_regression:
            weight, bias = fit_ridge(z_train, y_train, l2)
        else:
            weight, bias = start = fit_logistic(z_train, y_train, num_labels, l2, start)
        outputs = (torch.as_tensor(z_val) @ weight + bias).numpy()
        value = float(score(outputs, y_val))
        scores[l2] = value
        if best is None or (value > best[0] if greater else value < best[0]):
            best = (value, l2, weight, bias)
    value, l2, weight, bias = best
    folded_weight = weight / torch.as_tensor(scale).reshape(-1, 1)  # z = (x - centre) / scale
    folded_bias = bias - torch.as_tensor(centre) @ folded_weight
    return {"l2": l2, "validation_score": value, "scores": scores, "weight": folded_weight, "bias": folded_bias}


def fit_linear_probe(model: nn.Module, trainer, train_ds, validation_ds, train_labels, validation_labels, task_name: str | None,
                     is_regression: bool, metric: str, greater: bool) -> dict[str, Any]:  # fmt: skip
    """Fit the probe (see the module docstring) and install it as the model's head. Returns what the
    record keeps: the chosen strength, each strength's validation score, and the seconds it took."""
    from petl.metrics import glue_metrics

    if trainer.args.world_size > 1:
        raise PetlError(f"--method {NAME} runs in one process (its fit reads every feature at once); run it without torchrun or DeepSpeed")
    started = time.time()
    model.eval()
    x_train = pooled_features(model, trainer, train_ds)
    x_val = pooled_features(model, trainer, validation_ds)
    y_train, y_val = np.asarray(train_labels), np.asarray(validation_labels)
    num_labels = model.head.out_proj.out_features

    def score(outputs: np.ndarray, gold: np.ndarray) -> float:
        return glue_metrics(task_name, outputs, gold, is_regression)[metric]

    chosen = choose_strength((x_train, y_train), (x_val, y_val), num_labels, is_regression, score, greater)
    out_proj = model.head.out_proj
    with torch.no_grad():
        out_proj.weight.copy_(chosen["weight"].T.to(out_proj.weight.dtype))
        out_proj.bias.copy_(chosen["bias"].to(out_proj.bias.dtype))
    return {
        "l2": chosen["l2"],
        "validation_score": chosen["validation_score"],
        "validation_scores": {str(k): v for k, v in chosen["scores"].items()},
        "features": {"train": list(x_train.shape), "validation": list(x_val.shape)},
        "fit_seconds": time.time() - started,
    }


register(
    MethodEntry(
        NAME,
        LinearProbeConfig,
        apply_linear_probe,
        flag_prefix="probe",
        new_parameters=False,
        exclusive=True,
        description="frozen backbone, a linear head fitted to convergence on its pooled features (L-BFGS logistic or "
        "ridge regression, L2 strength chosen on validation)",
        merge=nothing_to_fold,
        unmerge=nothing_to_fold,
        search_space={},  # nothing to search: the fit chooses its own L2 strength on validation
    )
)
