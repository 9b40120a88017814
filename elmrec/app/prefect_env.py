"""Which Prefect server `elmrec run` / `elmrec task` use, decided before Prefect is imported.

- `elmrec serve` is up for the work dir (its `serve.json` names a server that answers and whose PREFECT_HOME is
  the work dir's `prefect/`): its server, so no temporary server starts and the runs show in its UI;
- PREFECT_API_URL is set in the environment: that server, as Prefect would;
- otherwise: Prefect's temporary local server, as before.

Either way, flow runs started here and the deployments of `elmrec serve` share one result cache under the work
dir: PREFECT_LOCAL_STORAGE_PATH = <workdir>/prefect/storage (elmrec.app.serve.service_env sets the same for
its worker).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from elmrec.app.serve import ServePaths, ServeState, healthy

STORAGE = "storage"  # below <workdir>/prefect/: Prefect's result storage, shared with `elmrec serve`


def storage_path(workdir: Path) -> Path:
    return ServePaths.under(workdir).home / STORAGE


def prefect_env(workdir: Path, environ: Mapping[str, str] | None = None,
                check: Callable[[str, Path], bool] | None = None) -> dict[str, str]:
    """The PREFECT_* variables to set for a flow run on `workdir` (variables already set are kept); `check`
    tells whether the server at an API URL answers and is `elmrec serve`'s (default: serve.healthy)."""
    environ = os.environ if environ is None else environ
    check = check or healthy
    paths = ServePaths.under(workdir)
    env = {"PREFECT_LOCAL_STORAGE_PATH": str(paths.home / STORAGE)}
    if "PREFECT_API_URL" not in environ:
        try:
            state = ServeState.load(paths.state)
        except (OSError, ValueError, KeyError, TypeError):  # a damaged serve.json: as if none
            state = None
        if state is not None and check(state.api_url, paths.home):
            env.update({"PREFECT_API_URL": state.api_url, "PREFECT_HOME": str(paths.home)})
    return {key: value for key, value in env.items() if key not in environ}


def use_server(workdir: Path) -> str | None:
    """Set the variables of `prefect_env` in this process (before Prefect is imported); the API URL of the
    server `elmrec serve` runs, when it is the one used."""
    env = prefect_env(workdir)
    os.environ.update(env)
    return env.get("PREFECT_API_URL")
