"""Partitioning: a cost model, a layer chain, pipeline and sharding solvers, baselines, the plan."""
from dnet.partition.layers import Layer, LayerChain, layer_chain
from dnet.partition.pipeline import solve, solve_exact, solve_heuristic, solve_order
from dnet.partition.plan import Plan, plan_from_stages, plan_pipeline
from dnet.partition.problem import PipelineProblem, PlanError, Stage, build_problem, evaluate

__all__ = ["Layer", "LayerChain", "layer_chain", "solve", "solve_exact", "solve_heuristic", "solve_order", "Plan",
           "plan_from_stages", "plan_pipeline", "PipelineProblem", "PlanError", "Stage", "build_problem", "evaluate"]
