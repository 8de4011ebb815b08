"""The runtime: what one node runs (a stage graph through its backend), and how a graph is cut into stages."""
from dnet.runtime.pipeline import contiguous_assignment, split_pipeline
from dnet.runtime.runner import StageRunner, StageStats

__all__ = ["StageRunner", "StageStats", "contiguous_assignment", "split_pipeline"]
