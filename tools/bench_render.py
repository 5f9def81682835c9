#!/usr/bin/env python
"""Benchmark the defocus renderer's backends (forward and forward+backward).

Every (backend, size, N, defocus) case runs in its own subprocess so that its
peak memory is its own: ``peak_mb`` is the peak resident set size above the
worker's baseline (torch imported, extension loaded, scene built). Times are
medians over ``--repeats`` runs after a warm-up. Ratios compare backends
measured in the same invocation.

    python tools/bench_render.py                # full grid
    python tools/bench_render.py --quick        # 256x256, 50k, defocused only
    python tools/bench_render.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def build_scene(n: int, width: int, height: int, defocus: bool, seed: int = 0):
    """Random Gaussians of 0.5-3 px filling the frustum at 1-4 m; defocused: CoC up to 15 px."""
    import torch
    from gs_dfd.optics.thin_lens import ThinLens
    from gs_dfd.render import PinholeCamera

    g = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    cam = PinholeCamera(width=width, height=height, fx=f, fy=f, cx=width / 2, cy=height / 2)
    z = 1.0 + 3.0 * torch.rand(n, generator=g)
    u = (torch.rand(n, generator=g) * 1.1 - 0.05) * width
    v = (torch.rand(n, generator=g) * 1.1 - 0.05) * height
    means = torch.stack([(u - cam.cx) * z / f, (v - cam.cy) * z / f, z], -1)
    s_px = torch.exp(math.log(0.5) + (math.log(3.0) - math.log(0.5)) * torch.rand(n, 3, generator=g))
    scales = s_px * z[:, None] / f
    quats = torch.randn(n, 4, generator=g)
    opac = 0.2 + 0.8 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    focal, fnum, focus = 0.05, 2.0, 2.0
    if defocus:
        cmax = ThinLens(focal, fnum, focus, pixel_pitch_m=1.0).coc_px_range(1.0, 4.0)[1]  # CoC in metres
        pitch = cmax / 15.0
    else:
        fnum, pitch = 1e6, 1e-5  # pinhole-like: CoC ~ 0
    lens = ThinLens(focal_length_m=focal, f_number=fnum, focus_distance_m=focus, pixel_pitch_m=pitch)
    return (means, quats, scales, opac, colors), cam, [lens]


def worker(args) -> None:
    import torch
    from gs_dfd.render import render_defocus

    torch.set_num_threads(args.threads)
    params, cam, lenses = build_scene(args.n, args.width, args.height, args.defocus)
    weights = torch.rand(1, args.height, args.width, 3, generator=torch.Generator().manual_seed(1))
    if args.backend == "cpu":
        from gs_dfd.render import raster_cpu
        raster_cpu.load_extension()
    cuda = args.backend == "gsplat"
    if cuda:
        params = tuple(p.cuda() for p in params)
        weights = weights.cuda()

    def run(mode: str) -> None:
        if mode == "fwd":
            with torch.no_grad():
                out = render_defocus(*params, cam, lenses, backend=args.backend)
        else:
            ps = [p.detach().requires_grad_(True) for p in params]
            out = render_defocus(*ps, cam, lenses, backend=args.backend)
            loss = (out.rgb * weights).sum() + out.depth_accum.mean()
            loss.backward()
        if cuda:
            torch.cuda.synchronize()

    records = []
    for mode in args.modes.split(","):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            _reset_peak()
            base = _status_kb("VmRSS")
        for _ in range(args.warmup):
            run(mode)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run(mode)
            times.append((time.perf_counter() - t0) * 1e3)
        if cuda:
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak_mb = max(0, _status_kb("VmHWM") - base) / 1024
        records.append(dict(backend=args.backend, width=args.width, height=args.height, n_gaussians=args.n,
                            defocus=bool(args.defocus), mode=mode, median_ms=statistics.median(times),
                            peak_mb=peak_mb, runs=len(times)))
    print("RECORDS " + json.dumps(records), flush=True)


def available_backends() -> list[str]:
    import torch
    out = ["torch"]
    try:
        from gs_dfd.render import raster_cpu
        raster_cpu.load_extension()
        out.append("cpu")
    except Exception as exc:  # noqa: BLE001
        print(f"# cpu backend unavailable: {exc}", file=sys.stderr)
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401
            out.append("gsplat")
        except ImportError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only 256x256, 50k Gaussians, defocused")
    ap.add_argument("--json", help="write the records (a JSON list) here")
    ap.add_argument("--backends", default=None, help="comma list (default: all available)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per case (torch backend: min(3, this))")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--height", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--defocus", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--modes", default="fwd,fwdbwd", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    backends = args.backends.split(",") if args.backends else available_backends()
    if args.quick:
        cases = [(256, 256, 50_000, 1)]
    else:
        cases = [(w, h, n, d) for (w, h) in ((256, 256), (512, 384)) for n in (20_000, 50_000) for d in (0, 1)]
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "17179869184")
    env.setdefault("MALLOC_TOP_PAD_", "268435456")
    env["OMP_NUM_THREADS"] = str(args.threads)
    records = []
    for (w, h, n, d) in cases:
        for be in backends:
            reps = min(3, args.repeats) if be == "torch" else args.repeats
            warm = 1 if be == "torch" else 2
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--backend", be, "--width", str(w),
                   "--height", str(h), "--n", str(n), "--defocus", str(d), "--repeats", str(reps),
                   "--warmup", str(warm), "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("RECORDS ")]
            if res.returncode != 0 or not line:
                print(f"# {be} {w}x{h} n={n} defocus={d} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            recs = json.loads(line[0][len("RECORDS "):])
            records.extend(recs)
            for r in recs:
                print(f"# {r['backend']:6s} {w}x{h} n={n:6d} defocus={d} {r['mode']:6s} "
                      f"{r['median_ms']:9.1f} ms {r['peak_mb']:8.1f} MB", file=sys.stderr, flush=True)

    import platform

    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"machine: {cpu}, {os.cpu_count()} logical CPUs, threads={args.threads}, torch {torch.__version__}, "
          f"load average after run: {load}")
    hdr = f"{'backend':8s} {'size':>8s} {'N':>6s} {'defocus':>7s} {'mode':>6s} {'median ms':>10s} {'peak MB':>8s}"
    print(hdr)
    print("-" * len(hdr))
    for r in records:
        print(f"{r['backend']:8s} {r['width']:>4d}x{r['height']:<3d} {r['n_gaussians']:>6d} "
              f"{str(r['defocus']):>7s} {r['mode']:>6s} {r['median_ms']:>10.1f} {r['peak_mb']:>8.1f}")
    key = lambda r: (r["width"], r["height"], r["n_gaussians"], r["defocus"], r["mode"])  # noqa: E731
    by = {}
    for r in records:
        by.setdefault(key(r), {})[r["backend"]] = r["median_ms"]
    pairs = [(a, b) for a, b in (("torch", "cpu"), ("torch", "gsplat"), ("cpu", "gsplat"))
             if a in backends and b in backends]
    if pairs:
        print("\nspeed-up (same run): " + ", ".join(f"{a}/{b}" for a, b in pairs))
        for k, v in by.items():
            ratios = [f"{a}/{b} = {v[a] / v[b]:.1f}x" for a, b in pairs if a in v and b in v]
            if ratios:
                print(f"  {k[0]}x{k[1]} N={k[2]} defocus={k[3]} {k[4]}: " + ", ".join(ratios))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: r[k] for k in ("backend", "width", "height", "n_gaussians", "defocus", "mode",
                                          "median_ms", "peak_mb")} for r in records], fh, indent=1)


if __name__ == "__main__":
    main()
