"""dnet's LLVM backend against its C backend on SmolLM2-135M (Q4_1 blocks): greedy decode tokens/s and
compile time. MiniLM's latency is in `benchmarks/minilm.py --backends-only`.

    .venv/bin/python benchmarks/llvm.py [--tokens 32] [--repeats 3]

Both load the same GGUF file and keep its weights in their blocks; the decode rate is the median of
`--repeats` generations of `--tokens` greedy tokens after a 4-token prompt, the two targets taking
turns, and both must produce the same text.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402


def smollm2(tokens: int, repeats: int) -> str:
    import dnet

    llms, load_s = {}, {}
    for target in ("c", "llvm"):
        start = time.perf_counter()
        llms[target] = dnet.llm.load(target=target, context=256, prefix_cache=False)
        load_s[target] = time.perf_counter() - start
        llms[target].generate("Once upon a time", max_tokens=2, temperature=0)          # warm
    rates: dict[str, list[float]] = {t: [] for t in llms}
    texts: dict[str, str] = {}
    for _ in range(repeats):
        for target, llm in llms.items():
            start = time.perf_counter()
            texts[target] = llm.generate("Once upon a time", max_tokens=tokens, temperature=0)
            rates[target].append(tokens / (time.perf_counter() - start))
    rows = [["target", "decode tok/s", "load + compile s", "text"]]
    for target in llms:
        rows.append([target, f"{statistics.median(rates[target]):.1f}", f"{load_s[target]:.1f}",
                     repr(texts[target][:40])])
    same = "the same text" if texts["c"] == texts["llvm"] else "DIFFERENT TEXT"
    return f"SmolLM2-135M (Q4_1), {tokens} greedy tokens after a 4-token prompt ({same})\n" + table(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from dnet.hardware import detect

    print(f"dnet LLVM vs C, {detect().summary()}")
    print(smollm2(args.tokens, args.repeats))


if __name__ == "__main__":
    main()
