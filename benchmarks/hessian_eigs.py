"""Top-10 Hessian eigenpairs: lsutils (Lanczos) against PyHessian (power iteration).

Both run in this process, on the same trained MNIST MLP 784-128-10 (trained with
lsutils.training.train defaults on 5,000 samples of the embedded MNIST test
split, train_test_split(ds, 5000, 1000, seed=0)), on the same m samples:

* lsutils: ``top_eigenpairs(model, X, y, d=10, dtype=float32, tol=1e-5,
  chunk_size=m)`` -- ARPACK Lanczos on float32 Hessian-vector products, one chunk
  so the gradient graph is built once (the memory is that of one chunk);
  the time includes building the operator and the 10 fresh residual products.
  The float64 default (``chunk_size=2048``) is timed beside it.
* PyHessian 0.1: ``hessian(model, criterion, data=(X, y), cuda=False)
  .eigenvalues(top_n=10)`` -- power iteration with deflation, stopping each
  eigenvalue when its relative change is below 1e-3 (or after 100 iterations).
  It runs unmodified; its Hessian-vector product function is wrapped only to
  count calls.

Every residual ||H v - lambda v|| / |lambda| in the tables is recomputed here
with float64 products (lsutils.hessian.hvp_operator), for both libraries.
Times are the best of --repeats interleaved runs (as timeit reports), with
one torch thread by default (--threads). The last line is
``speedup_vs_pyhessian=<PyHessian time / lsutils time at m=5000>
max_residual=<largest float64 residual of lsutils at m=5000>``.

Usage: python benchmarks/hessian_eigs.py [--quick] [--m 1000 2000 5000 10000]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lsutils.data import load_dataset, train_test_split
from lsutils.hessian import hvp_operator, top_eigenpairs
from lsutils.models import mlp
from lsutils.training import train

# the package re-exports the class under the module's name: fetch the module
pyhessian_hessian = importlib.import_module("pyhessian.hessian")

D = 10
HEADLINE_M = 5000


def residuals64(model: nn.Module, X: Tensor, y: Tensor, values, vectors) -> np.ndarray:
    """||H v - lambda v|| / |lambda| with float64 products, per column of vectors."""
    op = hvp_operator(model, X, y, dtype=torch.float64)
    out = []
    for lam, v in zip(values, vectors.T, strict=True):
        v = np.asarray(v, dtype=np.float64)
        out.append(np.linalg.norm(op @ v - lam * v) / abs(lam))
    return np.array(out)


def run_lsutils(model, X, y, dtype, chunk_size, tol):
    eig = top_eigenpairs(
        model, X, y, D, dtype=dtype, chunk_size=chunk_size, tol=tol, seed=0
    )
    return eig.seconds, eig.values.numpy(), eig.vectors.numpy(), eig.n_matvec


def run_pyhessian(model, X, y, seed):
    counter = [0]
    product = pyhessian_hessian.hessian_vector_product

    def counted(gradsH, params, v):
        counter[0] += 1
        return product(gradsH, params, v)

    net = copy.deepcopy(model)  # PyHessian leaves graph-carrying .grad behind
    torch.manual_seed(seed)  # its random starts use the global generator
    pyhessian_hessian.hessian_vector_product = counted
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # create_graph reference-cycle note
            t0 = time.perf_counter()
            h = pyhessian_hessian.hessian(
                net, nn.CrossEntropyLoss(), (X, y), cuda=False
            )
            values, vectors = h.eigenvalues(top_n=D)
            seconds = time.perf_counter() - t0
    finally:
        pyhessian_hessian.hessian_vector_product = product
    flat = np.stack(
        [torch.cat([t.reshape(-1) for t in v]).double().numpy() for v in vectors],
        axis=1,
    )
    order = np.argsort(-np.array(values))  # it does not return them sorted
    return seconds, np.array(values)[order], flat[:, order], counter[0]


def best_of(runs):
    """Shortest time of the runs (as timeit does), with the last run's results."""
    return (min(r[0] for r in runs), *runs[-1][1:])


def write_json(args, rows, headline, n_params, accuracy) -> None:
    """Write the settings and per-m rows, for chapter 3 to display."""
    out = {
        "command": "python benchmarks/hessian_eigs.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_end": os.getloadavg()[0],
        "model": f"MLP 784-128-10, N={n_params}, test accuracy {accuracy:.3f}",
        "top_n": D,
        "headline_m": headline,
        "rows": [
            {
                "m": r["m"],
                "lsutils_f32_seconds": r["lt"],
                "lsutils_f32_products": r["ln"],
                "lsutils_f32_max_residual": float(r["lr"].max()),
                "lsutils_f64_seconds": r["ft"],
                "lsutils_f64_max_residual": float(r["fr"].max()),
                "pyhessian_seconds": r["pt"],
                "pyhessian_products": r["pn"],
                "pyhessian_max_residual": float(r["pr"].max()),
                "speedup": r["pt"] / r["lt"],
                "lsutils_eigenvalues": [float(v) for v in r["lv"]],
                "pyhessian_eigenvalues": [float(v) for v in r["pv"]],
            }
            for r in rows
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (small m)")
    parser.add_argument("--m", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tol", type=float, default=1e-5, help="lsutils eigsh tol")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both libraries (default 1: on a shared machine "
        "two-thread timings of either library vary tenfold from run to run)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the tables to this JSON file (chapter 3 reads "
        "benchmarks/results/hessian_eigs.json)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ms = args.m or ([500, 1000] if args.quick else [1000, 2000, 5000, 10000])
    repeats = args.repeats or (1 if args.quick else 3)
    headline = HEADLINE_M if HEADLINE_M in ms else max(ms)

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"pyhessian 0.1, {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} (other processes slow both alike)"
    )
    ds = load_dataset("mnist", split="test")
    tr, te = train_test_split(ds, 5000, 1000, seed=0)
    model = mlp(seed=0)
    n_train = 1000 if args.quick else 5000
    res = train(model, tr.X[:n_train], tr.y[:n_train], te.X, te.y, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"MLP 784-128-10, N={n_params}, trained on {n_train} samples in "
        f"{res.seconds:.1f} s: train loss {res.train_loss:.4f}, "
        f"test accuracy {res.test_accuracy:.3f}, |grad L| {res.grad_norm:.2e}"
    )

    def data(m):  # the training samples, or the whole split beyond 5000
        src = tr if m <= len(tr) else ds
        if m > len(src):
            raise SystemExit(f"m={m} exceeds the {len(ds)} samples of the split")
        return src.X[:m], src.y[:m]

    rows = []
    for m in ms:
        X, y = data(m)
        ls_runs, ph_runs = [], []
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            ls_runs.append(run_lsutils(model, X, y, torch.float32, m, args.tol))
            ph_runs.append(run_pyhessian(model, X, y, seed=0))
        lt, lv, lV, ln = best_of(ls_runs)
        pt, pv, pV, pn = best_of(ph_runs)
        ft, fv, fV, fn = run_lsutils(model, X, y, torch.float64, 2048, 1e-6)
        rows.append(
            {
                "m": m, "lt": lt, "ln": ln, "lr": residuals64(model, X, y, lv, lV),
                "ft": ft, "fn": fn, "fr": residuals64(model, X, y, fv, fV),
                "pt": pt, "pn": pn, "pr": residuals64(model, X, y, pv, pV),
                "lv": lv, "pv": pv,
            }
        )  # fmt: skip
        print(f"m={m:>6}: lsutils {lt:.2f} s, PyHessian {pt:.2f} s", flush=True)

    r = next(r for r in rows if r["m"] == headline)
    lv, pv, lr, pr = r["lv"], r["pv"], r["lr"], r["pr"]
    print(f"\n## Top-{D} eigenpairs at m={headline}")
    print("| j | lsutils lambda_j | PyHessian lambda_j (sorted) | rel. diff | "
          "res. lsutils | res. PyHessian |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for j in range(D):
        diff = abs(pv[j] - lv[j]) / abs(lv[j])
        print(
            f"| {j + 1} | {lv[j]:.6f} | {pv[j]:.6f} | {diff:.1e} | {lr[j]:.1e} "
            f"| {pr[j]:.1e} |"
        )
    print(
        f"\nlsutils float32 (tol={args.tol:g}, one chunk): {r['lt']:.2f} s, "
        f"{r['ln']} products (incl. {D} residual), max residual {lr.max():.1e}"
    )
    print(
        f"lsutils float64 (tol=1e-6, chunk_size=2048): {r['ft']:.2f} s, "
        f"{r['fn']} products, max residual {r['fr'].max():.1e}"
    )
    print(
        f"PyHessian (power iteration, stop at 1e-3 relative change of lambda): "
        f"{r['pt']:.2f} s, {r['pn']} products, max residual {pr.max():.1e}"
    )
    print(
        "PyHessian's rule bounds the change of the eigenvalue estimate between two "
        "iterations, not the vector's error: a power-iteration vector converges at "
        "rate lambda_{j+1}/lambda_j, so where neighbours are close it stops with a "
        "residual orders of magnitude above its 1e-3 (and the eigenvalue can be "
        "low); hitting 100 iterations also stops it"
    )

    print(f"\n## Time against m (best of {repeats} s; residuals in float64)")
    print("| m | lsutils f32 s | products | max res. | lsutils f64 s | max res. "
          "| PyHessian s | products | max res. | speedup f32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['m']} | {r['lt']:.2f} | {r['ln']} | {r['lr'].max():.1e} "
            f"| {r['ft']:.2f} | {r['fr'].max():.1e} | {r['pt']:.2f} | {r['pn']} "
            f"| {r['pr'].max():.1e} | {r['pt'] / r['lt']:.1f}x |"
        )
    r = next(r for r in rows if r["m"] == headline)
    if args.json is not None:
        write_json(args, rows, headline, n_params, res.test_accuracy)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(
        f"speedup_vs_pyhessian={r['pt'] / r['lt']:.2f} max_residual={r['lr'].max():.2e}"
    )


if __name__ == "__main__":
    main()
