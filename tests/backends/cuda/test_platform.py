"""Target 'cuda' where this machine cannot run it: one line saying why, never a traceback or a late failure."""
import subprocess
import sys
from pathlib import Path

import pytest

from dnet.backends.cuda import unavailable

needs_no_gpu = pytest.mark.skipif(unavailable() is None, reason="this machine has a CUDA GPU: nothing to refuse")


@needs_no_gpu
def test_compiling_for_cuda_without_a_gpu_is_one_line_naming_why_and_the_targets_here():
    import dnet
    from dnet.errors import BackendError

    class Double(dnet.Module):
        def forward(self, x):
            return x * 2.0

    with pytest.raises(BackendError) as caught:
        dnet.compile(Double(), (dnet.TensorType((2, 3), dnet.f32),), target="cuda")
    text = str(caught.value)
    assert "\n" not in text and "target 'cuda' cannot run here" in text
    assert caught.value.hint is not None and "targets that run on this machine:" in caught.value.hint
    assert "numpy" in caught.value.hint and "cuda" not in caught.value.hint


@needs_no_gpu
def test_dnet_run_with_target_cuda_prints_one_line_and_exits_2():
    example = Path(__file__).parents[3] / "examples" / "attention.dnet"
    proc = subprocess.run([sys.executable, "-c", "from dnet.cli import main; main()", "run", str(example),
                           "--init", "seeded", "--dims", "x_0=2,x_1=8", "--target", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "target 'cuda' cannot run here" in proc.stderr


@needs_no_gpu
def test_a_worker_asked_for_cuda_refuses_at_start(monkeypatch):
    monkeypatch.setenv("DNET_CLUSTER_SECRET", "0" * 64)
    proc = subprocess.run([sys.executable, "-m", "dnet.cluster", "--listen", "127.0.0.1:0", "--backend", "cuda"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "backend 'cuda' cannot run on this machine" in proc.stderr
    assert "ready" not in proc.stdout.lower()


def test_the_reason_is_one_line():
    reason = unavailable()
    assert reason is None or "\n" not in reason
