"""Cache policy of the stage tasks: skip a stage whose settings, input files and code are unchanged.

The key comes from elmrec.stages.fingerprint (settings that shape the stage, SHA-256 of its input files,
source of the library modules it runs, output paths) plus the task's own source. The flow refreshes the
cache of a stage that is forced or whose stored output is not up to date (elmrec.stages.up_to_date: deleted,
or built from other inputs than today's), so `Cached` always means the output on disk is today's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

from elmrec.stages import fingerprint


@dataclass
class StageFingerprint(CachePolicy):
    stage: str = ""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = fingerprint(inputs["settings"], self.stage)
        task_source = TASK_SOURCE.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        return hash_objects(self.stage, key, task_source, raise_on_failure=True)


def stage_cache(stage: str) -> CachePolicy:
    return StageFingerprint(stage=stage)
