"""Benchmark: per-Gaussian query relevance from the bank vs decoding every Gaussian's feature.

Not a test: run it by hand (about 10 min on 2 idle cores, most of it the direct path at 1M)::

    .venv/bin/python -m benchmarks.query                          # N = 100k, 1M; d = 768, 1152; t = 1000
    .venv/bin/python -m benchmarks.query --sizes 100000 --dims 768 --k 8 16 32
    .venv/bin/python -m benchmarks.query --direct-max 800000000   # no direct path at 1M x 1152 (~15 GB)

Paths (one query in canonical mode: the text plus 4 negatives), each in its own process so
that its peak memory is its own:

* ``direct``: today's path, every Gaussian's feature ``f = softmax(cos(q W, PSC)/tau) PSC
  [N, d]`` (the head's chunked forward), then the relevance of those features;
* ``bank``: :class:`pipeline.query.relevance.GaussianRelevance`, exact: ``build`` is the
  query-independent ``|f|`` of every Gaussian (once per memory), ``query`` the cost of each
  further query (median of 3 different queries);
* ``top-k``: the same with sparse attention (k largest weights per Gaussian): ``build`` selects
  them and their norms once, ``query`` is O(N k). Its agreement with the exact relevance: the
  largest absolute difference, Pearson r, and the Jaccard overlap of the top-1% Gaussians.

Wall and CPU seconds (all threads) are both given: on a shared machine CPU seconds compare more
fairly. Peak RAM is the process's peak resident memory minus its resident memory once the inputs exist
(the queries ``[N, l]`` and the head). Synthetic memory: bank entries ``normalize(W^T c_j +
0.5 n_j)`` (``c_j`` random unit codes in the query space, ``n_j`` noise), queries near one code
each (``c + 0.3 xi``): peaked attention, as a trained head has (the table gives the mean
effective number of slots a Gaussian attends to, ``exp(entropy)``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from pipeline.core.runtime import peak_ram_mb
from pipeline.query.encode import QueryVector
from pipeline.query.relevance import GaussianRelevance, direct_relevance
from pipeline.splat.memory import MemoryAttention


def synthetic_memory(n: int, d: int, t: int, dims: int = 16, seed: int = 0) -> tuple[MemoryAttention, torch.Tensor]:
    """A memory head over a bank ``[t, d]`` and per-Gaussian queries ``[n, dims]`` (see the module doc)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.linalg.qr(torch.randn(d, dims, generator=gen))[0].T  # [dims, d], orthonormal rows
    codes = torch.nn.functional.normalize(torch.randn(t, dims, generator=gen), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(t, d, generator=gen), dim=-1)
    bank = torch.nn.functional.normalize(codes @ w + 0.5 * noise, dim=-1)
    head = MemoryAttention(bank, dims, tau=0.05, learn_projection=True)
    with torch.no_grad():
        head.proj.copy_(w)
    owner = torch.randint(0, t, (n,), generator=gen)
    queries = codes[owner] + 0.3 * torch.randn(n, dims, generator=gen)
    return head, queries


def queries(d: int, count: int, seed: int = 1) -> list[QueryVector]:
    gen = torch.Generator().manual_seed(seed)
    return [
        QueryVector(torch.randn(d, generator=gen), torch.randn(4, d, generator=gen), "canonical") for _ in range(count)
    ]


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run_case(path: str, n: int, d: int, t: int, k: int | None) -> dict:
    """One path in this process: seconds (build, query) and peak RAM above the inputs (MiB)."""
    head, q = synthetic_memory(n, d, t)
    qvs = queries(d, 3)
    base = _rss_mb()
    out: dict = {"path": path, "n": n, "d": d, "t": t, "k": k}
    if path == "direct":
        t0, c0 = time.perf_counter(), time.process_time()
        direct_relevance(head, q, qvs[0])
        out.update(build=0.0, build_cpu=0.0, query=time.perf_counter() - t0, query_cpu=time.process_time() - c0)
        out["ram_mb"] = peak_ram_mb() - base
        return out
    engine = GaussianRelevance(head, q, attention_k=k)
    t0, c0 = time.perf_counter(), time.process_time()
    if k:
        engine.sparse()
    else:
        engine.norms()
    out.update(build=time.perf_counter() - t0, build_cpu=time.process_time() - c0)
    times, cpus, rels = [], [], []
    for qv in qvs:
        t0, c0 = time.perf_counter(), time.process_time()
        rels.append(engine(qv))
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out.update(query=float(np.median(times)), query_cpu=float(np.median(cpus)), ram_mb=peak_ram_mb() - base)
    if k:
        exact = GaussianRelevance(head, q)(qvs[0])
        out.update(agreement(rels[0], exact))
    else:
        e = engine._attention(0)
        a = e / e.sum(-1, keepdim=True)
        out["slots"] = float(torch.exp(-(a * torch.log(a.clamp_min(1e-30))).sum(-1)).mean())
    return out


def agreement(approx: torch.Tensor, exact: torch.Tensor, top: float = 0.01) -> dict:
    """Max |difference|, Pearson r and the Jaccard overlap of the top ``top`` fraction."""
    m = max(1, int(top * len(exact)))
    a, b = set(torch.topk(approx, m).indices.tolist()), set(torch.topk(exact, m).indices.tolist())
    r = float(torch.corrcoef(torch.stack([approx, exact]))[0, 1])
    return {"max_abs": float((approx - exact).abs().max()), "pearson": r, "top1_jaccard": len(a & b) / len(a | b)}


def _spawn(path: str, n: int, d: int, t: int, k: int | None) -> dict:
    call = f"run_case({path!r}, {n}, {d}, {t}, {k})"
    code = f"import json; from benchmarks.query import run_case; print(json.dumps({call}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[768, 1152])
    ap.add_argument("--t", type=int, default=1000, help="bank slots")
    ap.add_argument("--k", type=int, nargs="+", default=[16], help="top-k sizes of the sparse path")
    ap.add_argument(
        "--direct-max", type=int, default=None, help="run the direct path only up to this many N x d elements"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; t = {args.t}, l = 16, canonical mode")
    print("| N | d | path | build s (cpu) | query s (cpu) | peak RAM MiB | agreement (max abs, r, top-1% Jaccard) |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for d in args.dims:
        for n in args.sizes:
            direct = args.direct_max is None or n * d <= args.direct_max
            cases = ([("direct", None)] if direct else []) + [("bank", None)] + [("top-k", k) for k in args.k]
            for path, k in cases:
                r = _spawn(path, n, d, args.t, k)
                results.append(r)
                name = f"top-{k}" if k else path + (f" (~{r['slots']:.1f} slots)" if "slots" in r else "")
                agree = f"{r['max_abs']:.3g}, {r['pearson']:.4f}, {r['top1_jaccard']:.3f}" if k else "exact"
                print(
                    f"| {n:,} | {d} | {name} | {r['build']:.2f} ({r['build_cpu']:.2f}) | "
                    f"{r['query']:.3f} ({r['query_cpu']:.3f}) | {r['ram_mb']:.0f} | {agree} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
