"""Benchmark of the S x m per-sample loss matrix (issue 4).

What it measures
----------------
For the MLP 784-128-10 and the CNN of :mod:`lsutils.models`, each trained with
:func:`lsutils.training.train` defaults on ``train_test_split(mnist, 5000, 1000,
seed=0)``, the per-sample cross-entropy ``l_i(w* + P^T theta_s)`` of all 10,000
samples of the embedded MNIST test split at points ``theta_s ~ N(0, 0.5^2 I_d)``
of a ``d = 10`` Hessian subspace (top eigenvectors of the Hessian on 2,000
training samples for the MLP, 250 for the CNN), ``S = 512`` points for the MLP
and 256 for the CNN, three ways:

(a) loop:  per point, load the parameters, forward in batches of 128 (the
    pattern of loss-landscape tools);
(b) dense: per point, load the parameters, one forward over all 10,000 samples
    (the floor of any per-point method);
(c) ``lsutils.engine.loss_matrix`` with ``method="auto"`` (the fast path).

It prints the three times, the peak resident memory of (c), the differences of
the outputs (and of (a) and (c) from a float64 reference), a table of (c)'s time
against S and m (MLP), and one result line per model; the first is the
acceptance line::

    speedup_vs_dense=<(b)/(c)> speedup_vs_loop=<(a)/(c)> peak_rss_mib=<(c)>
    cnn: speedup_vs_dense=... speedup_vs_loop=... peak_rss_mib=...

How it measures
---------------
* Threads: all three methods run with the same number of intra-op threads, one
  by default (``--threads N`` to change). On this shared 2-core machine two
  threads that wait for each other at every operation make timings erratic.
* Times are CPU seconds of the measuring process (``time.process_time``), which
  with one thread is the work done and is not inflated when other jobs share
  the cores; wall-clock seconds are printed next to them, with the wall-clock
  speedups.
* (c) runs first, in a fresh child process (this script with ``--child``) that
  loads the data, the trained weights and the points, so that its peak RSS
  (``ru_maxrss``) is that of computing (c) plus the Python, torch and data
  baseline (printed too, from psutil), not of training or of the baselines.
* The CNN's per-point baselines take 0.5-1 CPU s per point, so they run on the
  first 16 points only and their times are scaled to all points (they are
  loops over points, linear in S); outputs are compared on those points.

Usage
-----
``python benchmarks/delta_engine.py`` (about 3 CPU minutes; 4-10 minutes of
wall-clock time depending on the load); ``--quick`` (S=64, m=2000; about one
minute); ``--threads N``; ``--no-cnn``.
Acceptance: ``bash /work/shared/checks/delta-engine`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsutils.data import load_dataset, train_test_split
from lsutils.engine import LOOP_BATCH, loss_matrix
from lsutils.models import cnn, mlp
from lsutils.params import ParamSpec
from lsutils.projection import Subspace, hessian_subspace
from lsutils.training import train

D = 10
SIGMA = 0.5
SEED = 0
HESSIAN_SAMPLES = {"mlp": 2000, "cnn": 250}
BUILD = {"mlp": lambda: mlp(hidden=(128,), seed=SEED), "cnn": lambda: cnn(seed=SEED)}


def load_points(path: Path) -> tuple[nn.Module, Subspace, Tensor]:
    state = torch.load(path, weights_only=True)
    model = BUILD[state["name"]]()
    model.load_state_dict(state["weights"])
    model.eval()
    sub = Subspace(state["origin"], state["basis"], "hessian", state["eigenvalues"])
    return model, sub, state["theta"]


def child(args: argparse.Namespace) -> None:
    """Run (c) in a fresh process; print a JSON line with time and peak RSS."""
    torch.set_num_threads(args.threads)
    model, sub, theta = load_points(Path(args.child) / "setup.pt")
    test = load_dataset("mnist", split="test")
    X, y = test.X[: args.m], test.y[: args.m]
    rss0 = psutil.Process().memory_info().rss
    t0, c0 = time.perf_counter(), time.process_time()
    out = loss_matrix(model, sub, theta, X, y)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    torch.save(out, Path(args.child) / "fast.pt")
    table = {}
    if args.table:
        for s in (128, 256, 512):
            for m in (2500, 5000, 10000):
                if s > len(theta) or m > args.m:
                    continue
                c1 = time.process_time()
                loss_matrix(model, sub, theta[:s], X[:m], y[:m])
                table[f"{s},{m}"] = time.process_time() - c1
    result = dict(seconds=seconds, cpu=cpu, peak=peak, rss0=rss0, table=table)
    print(json.dumps(result), flush=True)


def per_point(
    model: nn.Module, sub: Subspace, theta: Tensor, X: Tensor, y: Tensor, batch: int
) -> tuple[Tensor, float, float]:
    """Per-point baseline: load w_s into the model, forward in batches of ``batch``.

    Returns the losses, the CPU seconds and the wall-clock seconds.
    """
    params = [p for p in model.parameters()]
    out = torch.empty(len(theta), len(X), dtype=torch.float64)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for s, w in enumerate(sub.to_params(theta).float()):
            torch.nn.utils.vector_to_parameters(w, params)
            for b in range(0, len(X), batch):
                logits = model(X[b : b + batch])
                loss = F.cross_entropy(logits, y[b : b + batch], reduction="none")
                out[s, b : b + batch] = loss
    return out, time.process_time() - c0, time.perf_counter() - t0


def diff(a: Tensor, b: Tensor) -> str:
    """Largest absolute and relative difference (relative to max(|b|, 1e-3)).

    In float32 a loss is resolved to about 1e-7 absolutely (the rounding of
    log(1 + 1e-8)), so the relative difference of near-zero losses of confidently
    classified samples is meaningless; hence the floor of the denominator.
    """
    err = (a - b).abs()
    rel = err / b.abs().clamp_min(1e-3)
    return f"{float(err.max()):.1e} abs / {float(rel.max()):.1e} rel"


def run_model(name: str, args: argparse.Namespace, tmp: Path) -> str:
    torch.manual_seed(SEED)
    ds = load_dataset("mnist", split="test")
    tr, te = train_test_split(ds, 5000, 1000, seed=SEED)
    model = BUILD[name]()
    t0 = time.perf_counter()
    res = train(model, tr.X, tr.y, te.X, te.y)
    model.eval()
    n_params = ParamSpec.from_module(model).num_params
    print(
        f"== {name}: N={n_params:,} parameters, trained in "
        f"{time.perf_counter() - t0:.0f} s, test accuracy {res.test_accuracy:.3f}",
        flush=True,
    )
    n_h = HESSIAN_SAMPLES[name]
    t0 = time.perf_counter()
    sub = hessian_subspace(model, tr.X[:n_h], tr.y[:n_h], D, tol=1e-4)
    eig = ", ".join(f"{v:.3g}" for v in sub.eigenvalues[:3])
    print(
        f"   hessian subspace d={D} from {n_h} training samples in "
        f"{time.perf_counter() - t0:.0f} s (top eigenvalues {eig}, ...)",
        flush=True,
    )
    gen = torch.Generator().manual_seed(SEED)
    n_points = args.S if name == "mlp" else args.cnn_S
    theta = SIGMA * torch.randn(n_points, D, generator=gen, dtype=torch.float64)
    torch.save(
        dict(
            name=name,
            weights=model.state_dict(),
            origin=sub.origin,
            basis=sub.basis,
            eigenvalues=sub.eigenvalues,
            theta=theta,
        ),
        tmp / "setup.pt",
    )
    X, y = ds.X[: args.m], ds.y[: args.m]
    print(
        f"   S={len(theta)} points (sigma={SIGMA}) x m={len(X):,} samples, float32, "
        f"{args.threads} thread(s)",
        flush=True,
    )

    # (c) first, in a child process of its own
    cmd = [sys.executable, __file__, "--child", str(tmp), "--threads"]
    cmd += [str(args.threads), "--m", str(args.m)]
    if name == "mlp" and not args.quick:
        cmd.append("--table")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child run of (c) failed:\n{proc.stderr}")
    fast_res = json.loads(proc.stdout.strip().splitlines()[-1])
    fast = torch.load(tmp / "fast.pt", weights_only=True)
    t_fast, w_fast = fast_res["cpu"], fast_res["seconds"]
    peak_mib = fast_res["peak"] / 2**20

    n_base = len(theta) if name == "mlp" else min(len(theta), args.cnn_points)
    scale = len(theta) / n_base
    th = theta[:n_base]
    dense, t_dense, w_dense = per_point(model, sub, th, X, y, batch=len(X))
    loop, t_loop, w_loop = per_point(model, sub, th, X, y, batch=LOOP_BATCH)
    t_dense, t_loop, w_dense, w_loop = (
        v * scale for v in (t_dense, t_loop, w_dense, w_loop)
    )
    note = "" if scale == 1 else f"  (timed on {n_base} points, x{scale:g})"
    print("   times: CPU seconds (wall-clock seconds)")
    print(f"   (a) loop, batches of {LOOP_BATCH}: {t_loop:8.2f} ({w_loop:.2f}){note}")
    print(f"   (b) dense per point:      {t_dense:8.2f} ({w_dense:.2f}){note}")
    print(
        f"   (c) loss_matrix (auto):   {t_fast:8.2f} ({w_fast:.2f})  peak RSS "
        f"{peak_mib:.0f} MiB (process RSS before the call "
        f"{fast_res['rss0'] / 2**20:.0f} MiB)"
    )
    print(
        f"   max diff: (c) vs (a) {diff(fast[:n_base], loop)}, "
        f"(c) vs (b) {diff(fast[:n_base], dense)}"
    )
    # both float32 results against a float64 reference by the independent
    # functional_call + vmap path: the differences above are float32 rounding
    ref = loss_matrix(model, sub, th[:2], X, y, method="vmap", dtype=torch.float64)
    print(
        f"   float32 error against float64 (vmap) on 2 points: "
        f"(a) {diff(loop[:2], ref)}, (c) {diff(fast[:2], ref)}"
    )
    print(
        f"   wall-clock speedups: vs dense {w_dense / w_fast:.2f}, "
        f"vs loop {w_loop / w_fast:.2f}"
    )
    if fast_res["table"]:
        print("   CPU seconds of (c), rows S, columns m:")
        ms = sorted({int(k.split(",")[1]) for k in fast_res["table"]})
        print("   " + "S \\ m".rjust(8) + "".join(f"{m:>9}" for m in ms))
        for s in sorted({int(k.split(",")[0]) for k in fast_res["table"]}):
            row = "".join(f"{fast_res['table'][f'{s},{m}']:9.2f}" for m in ms)
            print(f"   {s:>8}{row}")
    return (
        f"speedup_vs_dense={t_dense / t_fast:.2f} speedup_vs_loop={t_loop / t_fast:.2f}"
        f" peak_rss_mib={peak_mib:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="S=64, m=2000")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--no-cnn", action="store_true", help="MLP only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, default=10000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    torch.set_num_threads(args.threads)
    args.S, args.m = (64, 2000) if args.quick else (512, 10000)
    args.cnn_S = 64 if args.quick else 256
    args.cnn_points = 4 if args.quick else 16
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        line = run_model("mlp", args, Path(tmp))
        print(line, flush=True)
        if not args.no_cnn:
            print("cnn: " + run_model("cnn", args, Path(tmp)), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
