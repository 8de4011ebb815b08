"""TEST ONLY: a dnet worker that dies by SIGKILL, as a crash in native code would, when it is asked to run a
request whose input `x` starts with NaN. The hook lives here, not in dnet: the worker is dnet's own, with its
`_run` wrapped before `dnet worker` starts. Run as `python crashing_worker.py WORKER-ARGS...`."""
import os
import signal
import sys

import numpy as np

from dnet.cli.main import main
from dnet.cluster.worker import Worker

_run = Worker._run


def _run_or_crash(self, stage, request, tensors):
    x = tensors.get("x")
    if x is not None and x.size and np.isnan(x.flat[0]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _run(self, stage, request, tensors)


Worker._run = _run_or_crash
main(["worker", *sys.argv[1:]])
