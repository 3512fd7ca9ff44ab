"""Benchmark: per-Gaussian query relevance from the bank vs decoding every Gaussian's feature.

Not a test: run it by hand (about 15 min on 2 idle cores, most of it the reference at 1M and the
top-16 selection at 10M)::

    .venv/bin/python -m benchmarks.query --direct-max 0 --dims 768 --sparse-sizes 10000000
    .venv/bin/python -m benchmarks.query --sizes 100000 --dims 768 --k 8 16 32
    .venv/bin/python -m benchmarks.query                          # + the direct path (10 GB at 1M x 768)

Paths (one query in canonical mode: the text plus 4 negatives), each in its own process so
that its peak memory is its own:

* ``direct``: the path before the bank, every Gaussian's feature ``f = softmax(cos(q W, PSC)/tau)
  PSC [N, d]`` (the head's chunked forward), then the relevance of those features;
* ``dense``: :class:`pipeline.query.relevance.GaussianRelevance` exact without its cache
  (``cache_mb=0``): ``build`` is the query-independent ``|f|`` of every Gaussian, ``query`` the
  cost of each further query (median of 3 different queries): N t exponentials each;
* ``bank``: the same with the attention cache (``build``: ``|f|`` and the cache, once per
  memory; ``query``: one pass over the cache, plus the Gaussians recomputed because the bound on
  the cache's rounding exceeded the tolerance: their share is given);
* ``top-k``: sparse attention (k largest weights per Gaussian): ``build`` selects them and their
  norms once, ``query`` is O(N k).

Errors are against the reference ``direct_relevance`` (computed in its own process, chunked, up to
``--reference-max`` Gaussians): the largest absolute difference of the relevance and, for top-k,
Pearson r and the Jaccard overlap of the top-1% Gaussians.

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
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from pipeline.core.runtime import peak_ram_mb
from pipeline.query.encode import QueryVector
from pipeline.query.relevance import CACHE_MB, CHUNK, GaussianRelevance, direct_relevance
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


def _reference_file(n: int, d: int, t: int) -> Path:
    return Path(tempfile.gettempdir()) / f"m3-bench-query-reference-{n}-{d}-{t}.pt"


def run_case(path: str, n: int, d: int, t: int, k: int | None) -> dict:
    """One path in this process: seconds (build, query) and peak RAM above the inputs (MiB)."""
    head, q = synthetic_memory(n, d, t)
    qvs = queries(d, 3)
    if path == "reference":  # the first query's relevance, chunked: kept on disk for the other paths
        torch.save(torch.cat([direct_relevance(head, q[s : s + CHUNK], qvs[0]) for s in range(0, n, CHUNK)]),
                   _reference_file(n, d, t))  # fmt: skip
        return {"path": path}
    base = _rss_mb()
    out: dict = {"path": path, "n": n, "d": d, "t": t, "k": k}
    if path == "direct":
        t0, c0 = time.perf_counter(), time.process_time()
        rels = [direct_relevance(head, q, qvs[0])]
        out.update(build=0.0, build_cpu=0.0, query=time.perf_counter() - t0, query_cpu=time.process_time() - c0)
        out["ram_mb"] = peak_ram_mb() - base
    else:
        engine = GaussianRelevance(head, q, attention_k=k, cache_mb=0 if path == "dense" else CACHE_MB)
        t0, c0 = time.perf_counter(), time.process_time()
        if k:
            engine.sparse()
        else:
            engine.norms()
        out.update(build=time.perf_counter() - t0, build_cpu=time.process_time() - c0)
        times, cpus, rels, redo = [], [], [], []
        for qv in qvs:
            t0, c0 = time.perf_counter(), time.process_time()
            rels.append(engine(qv))
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            redo.append(engine.recomputed / max(n, 1))
        out.update(query=float(np.median(times)), query_cpu=float(np.median(cpus)), ram_mb=peak_ram_mb() - base)
        if path == "bank":
            out["recomputed"] = max(redo)
        if not k:
            e = engine._attention(slice(0, CHUNK))
            a = e / e.sum(-1, keepdim=True)
            out["slots"] = float(torch.exp(-(a * torch.log(a.clamp_min(1e-30))).sum(-1)).mean())
    if _reference_file(n, d, t).is_file():
        out.update(agreement(rels[0], torch.load(_reference_file(n, d, t))))
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
    ap.add_argument("--sparse-sizes", type=int, nargs="*", default=[], help="more sizes, top-k paths only")
    ap.add_argument("--dims", type=int, nargs="+", default=[768, 1152])
    ap.add_argument("--t", type=int, default=1000, help="bank slots")
    ap.add_argument("--k", type=int, nargs="+", default=[16], help="top-k sizes of the sparse path")
    ap.add_argument(
        "--direct-max", type=int, default=None, help="run the direct path only up to this many N x d elements"
    )
    ap.add_argument("--paths", nargs="+", default=["direct", "bank", "dense", "top-k"], help="the paths to run")
    ap.add_argument("--reference-max", type=int, default=1_000_000, help="errors against the reference up to this N")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; t = {args.t}, l = 16, canonical mode")
    print(
        "| N | d | path | build s (cpu) | query s (cpu) | peak RAM MiB | recomputed | "
        "vs reference (max abs, r, top-1% Jaccard) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for d in args.dims:
        for n in args.sizes + args.sparse_sizes:
            direct = n in args.sizes and (args.direct_max is None or n * d <= args.direct_max)
            exact = [("bank", None), ("dense", None)] if n in args.sizes else []
            cases = ([("direct", None)] if direct else []) + exact + [("top-k", k) for k in args.k]
            cases = [(path, k) for path, k in cases if path in args.paths]
            if n <= args.reference_max:
                _spawn("reference", n, d, args.t, None)
            for path, k in cases:
                r = _spawn(path, n, d, args.t, k)
                results.append(r)
                name = f"top-{k}" if k else path + (f" (~{r['slots']:.1f} slots)" if "slots" in r else "")
                redo = f"{100 * r['recomputed']:.2f}%" if "recomputed" in r else "-"
                agree = f"{r['max_abs']:.2g}" if "max_abs" in r else "-"
                if k and "max_abs" in r:
                    agree += f", {r['pearson']:.4f}, {r['top1_jaccard']:.3f}"
                print(
                    f"| {n:,} | {d} | {name} | {r['build']:.2f} ({r['build_cpu']:.2f}) | "
                    f"{r['query']:.3f} ({r['query_cpu']:.3f}) | {r['ram_mb']:.0f} | {redo} | {agree} |",
                    flush=True,
                )
            _reference_file(n, d, args.t).unlink(missing_ok=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
