"""Object-level passes: each a `Pass` from ObjectModule to a new ObjectModule (the input is never changed).

- `fold_constants`: constant members, literal lets and scalar arithmetic to literals.
- `remove_branches` (`remove_branches_for(entry, present)`): specialise functions on which
  optional arguments are present and which object an object argument holds; drop `if`s on
  constant conditions.
- `eliminate_dead_code` (`eliminate_dead_code_for(entry)`): drop what the entry does not need.
- `default_pipeline(entry, present)`: the three in order, folding twice; `run_with_trace` runs it
  and returns the module after each pass, for `dnet inspect --passes`.
"""
from dnet.objects.passes.branches import remove_branches, remove_branches_for
from dnet.objects.passes.dce import eliminate_dead_code, eliminate_dead_code_for
from dnet.objects.passes.fold import fold_constants
from dnet.objects.passes.pipeline import default_pipeline, run_with_trace

__all__ = [
    "default_pipeline", "eliminate_dead_code", "eliminate_dead_code_for", "fold_constants", "remove_branches",
    "remove_branches_for", "run_with_trace",
]
