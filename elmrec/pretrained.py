"""Where T5 and its tokenizer come from: a local folder, a model mirror, or the hub, in that order.

    model_name = "t5-small"          ->  <model_mirror>/t5-small if that folder exists, else the hub
    model_name = "/models/t5-small"  ->  that folder

Pretrained weights are loaded when present (local folder, hub, or the hub cache). Without them a full-shape T5
is refused before any training (`RandomInitRefused`: a randomly initialised t5-small is not the paper's model and
would silently yield meaningless numbers) unless `model.allow_random_init=true`, in which case it is initialised
from the config with a WARNING and the caller records `pretrained=False`. A `reduced` shape
(ModelSettings.reduced) always starts from random weights: it is for demos and tests on small machines.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration

from elmrec.config import ModelSettings

logger = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


class RandomInitRefused(RuntimeError):
    """A full-shape T5 has no pretrained weights and random initialisation was not allowed."""


def resolve_model_source(settings: ModelSettings) -> tuple[str, bool]:
    """(location, is_local): `model_name` as an existing folder, else `<mirror>/<model_name>` when that folder
    exists (mirror = settings.model_mirror or $ELMREC_MODEL_MIRROR), else the hub name."""
    name = Path(settings.model_name).expanduser()
    if name.is_dir():
        return str(name), True
    mirror = settings.model_mirror or os.environ.get("ELMREC_MODEL_MIRROR")
    if mirror and (Path(mirror).expanduser() / settings.model_name).is_dir():
        return str(Path(mirror).expanduser() / settings.model_name), True
    return settings.model_name, False


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub can be asked at all: not in offline mode and its host accepts a TCP connection.
    Checked first because an unreachable hub otherwise costs ~30 s of retries per file."""
    if huggingface_hub.is_offline_mode():
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the hub client try
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _where(settings: ModelSettings) -> tuple[str, bool, bool]:
    """(location, is_local, local_files_only) for the transformers loaders."""
    source, is_local = resolve_model_source(settings)
    return source, is_local, is_local or not _hub_reachable()


def _missing_hint(settings: ModelSettings, source: str, error: OSError) -> OSError:
    return OSError(
        f"cannot load {source!r} for model_name={settings.model_name!r} (hub unreachable and not cached?): {error}. "
        f"Point model_name at a local folder, or set model_mirror / ELMREC_MODEL_MIRROR to a folder holding "
        f"{settings.model_name}/ with config.json and spiece.model."
    )


def load_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    """The tokenizer of the resolved model location (same resolution as `load_t5`)."""
    source, _, local_only = _where(settings)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except OSError as error:
        raise _missing_hint(settings, source, error) from error


def _refusal(settings: ModelSettings, reason: str) -> RandomInitRefused:
    return RandomInitRefused(
        f"no pretrained weights for {settings.model_name!r} ({reason}). Fetch them from the Hugging Face hub "
        f"({huggingface_hub.constants.ENDPOINT}, reachable or cached), or point ELMREC_MODEL_MIRROR "
        f"(model.model_mirror) at a folder holding {settings.model_name}/ with its weights; to train a randomly "
        f"initialised full-shape T5 anyway, set model.allow_random_init=true"
    )


def check_weights(settings: ModelSettings) -> None:
    """Before any work: RandomInitRefused when `load_t5` would certainly refuse (a full-shape T5, random init not
    allowed, and no weight file in a local folder nor a reachable hub). Cheap: reads no weights."""
    if settings.reduced is not None or settings.allow_random_init:
        return
    source, is_local, local_only = _where(settings)
    if is_local and not any((Path(source) / f).is_file() for f in WEIGHT_FILES):
        raise _refusal(settings, f"no weight file ({', '.join(WEIGHT_FILES)}) in {source}")
    cached = (isinstance(huggingface_hub.try_to_load_from_cache(source, name), str) for name in WEIGHT_FILES)
    if not is_local and local_only and not any(cached):
        raise _refusal(settings, "the hub is unreachable and holds no cached weights")


def load_t5(settings: ModelSettings) -> tuple[T5ForConditionalGeneration, bool]:
    """(model, pretrained). Reduced shape: random init from the base config, never loads weights. Otherwise
    pretrained weights when present or reachable; else RandomInitRefused, or with `allow_random_init` a random
    init with a WARNING."""
    source, is_local, local_only = _where(settings)
    try:
        config = T5Config.from_pretrained(source, local_files_only=local_only)
    except OSError as error:
        raise _missing_hint(settings, source, error) from error
    if settings.reduced is not None:
        config.update(settings.reduced.model_dump())
        logger.info("reduced T5 %s from %s: random init, no pretrained weights", settings.reduced.model_dump(), source)
        return T5ForConditionalGeneration(config), False
    if is_local and not any((Path(source) / f).is_file() for f in WEIGHT_FILES):
        reason = f"no weight file ({', '.join(WEIGHT_FILES)}) in {source}"
    else:
        try:
            return T5ForConditionalGeneration.from_pretrained(source, local_files_only=local_only), True
        except OSError as error:
            reason = str(error).splitlines()[0]
    if not settings.allow_random_init:
        raise _refusal(settings, reason)
    logger.warning("T5 weights unavailable (%s): T5 is RANDOMLY INITIALISED from the config of %s "
                   "(model.allow_random_init=true)", reason, source)
    return T5ForConditionalGeneration(config), False
