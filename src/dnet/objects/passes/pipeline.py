"""The default object-level pipeline, and running it with the module after each pass."""
from __future__ import annotations

from typing import Collection

from dnet.core.passes import Pipeline
from dnet.objects.ir import ObjectModule
from dnet.objects.passes.branches import remove_branches_for
from dnet.objects.passes.dce import eliminate_dead_code_for
from dnet.objects.passes.fold import fold_constants


def default_pipeline(entry: str = "forward", present: Collection[str] | None = None) -> Pipeline[ObjectModule]:
    """fold -> remove branches -> fold (what the branches exposed) -> dead-code elimination, for calling
    root function `entry` with the optional arguments `present` (None: none of them)."""
    return Pipeline([fold_constants, remove_branches_for(entry, present), fold_constants,
                     eliminate_dead_code_for(entry)])


def run_with_trace(module: ObjectModule, entry: str = "forward", present: Collection[str] | None = None,
                   pipeline: Pipeline[ObjectModule] | None = None) -> list[tuple[str, ObjectModule]]:
    """[(pass name, module after it)] for each pass of `pipeline` (default: `default_pipeline`)."""
    trace: list[tuple[str, ObjectModule]] = []
    (pipeline or default_pipeline(entry, present))(module, trace)
    return trace
