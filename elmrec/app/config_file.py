"""`--config FILE.yaml`: settings overrides from a file, in the nested shape of the settings.

The file has the shape of the `config.yaml` every MLflow run logs (elmrec.tracking.RunLog.settings: the run's
whole settings, `settings.model_dump(mode="json")`), so a logged config replays as is:

    elmrec run --config config.yaml                    # the logged run's settings, the same work dir
    elmrec run --config config.yaml --seed 7           # the same, one setting changed

A file may hold only some settings (`{data: {dataset: sports}, train: {lr: 5.0e-4}}`) and may name a preset
(`preset: mini`). Precedence, highest first: command-line options (`--seed`, `--set ...`, `--preset`) >
the --config file > the preset's values > the defaults. A logged config holds every setting, so the preset
only matters for a partial file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PRESET_KEY = "preset"  # the one key of a config file that is not a setting


class ConfigFileError(ValueError):
    """A --config file that cannot be read or is not a mapping of settings; the message names the file."""


def read_config(path: Path) -> tuple[str | None, dict[str, Any]]:
    """(the preset the file names or None, its settings overrides) from a YAML (or JSON) file."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read the config file ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigFileError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from error
    if loaded is None:
        return None, {}
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    overrides = dict(loaded)
    preset = overrides.pop(PRESET_KEY, None)
    if preset is not None and not isinstance(preset, str):
        raise ConfigFileError(f"{path}: `preset` must be a preset name, got {preset!r}")
    return preset, overrides
