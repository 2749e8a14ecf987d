"""Training and inference cost of Extralonger (arXiv:2411.00844) against grid attention (STAEformer-like)
as the window grows: T = 12, 288 and 2016 steps (an hour, a day and a week at 5 minutes).

For each T and model: seconds per training step (forward, Huber loss, backward, Adam) and per inference
batch, the median of ``--repeats`` after one warm-up, and peak memory above the level before the step
(the CUDA allocator's peak on a GPU, sampled resident memory on CPU). On CPU grid attention is skipped where
its attention maps alone (B x N x heads x T x T floats for the temporal half) would exceed ``--grid-max-gb``
(default 4); on a GPU PyTorch's fused attention kernels never hold those maps, so there is no limit by
default and a model that runs out of GPU memory is reported as such.
Ratios grid / Extralonger are printed for every T where both ran, measured in the same run.

Usage::

    .venv/bin/python benchmarks/forecast_scaling.py --nodes 20 --batch 2 --threads 2
    python3 benchmarks/forecast_scaling.py --nodes 170 --batch 16 --device cuda   # PEMS08's N, on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from veil.models.forecasting.baselines import GridAttention, GridAttentionConfig
from veil.models.forecasting.memory import PeakMemory
from veil.models.forecasting.model import Extralonger, ExtralongerConfig


def _models(name: str, nodes: int, steps: int) -> torch.nn.Module:
    ring = torch.eye(nodes, dtype=torch.bool) | torch.roll(torch.eye(nodes, dtype=torch.bool), 1, 0)
    if name == "extralonger":  # PEMS08's released widths
        return Extralonger(ExtralongerConfig(nodes=nodes, in_steps=steps, out_steps=steps), ring)
    return GridAttention(GridAttentionConfig(nodes=nodes, in_steps=steps, out_steps=steps))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, nodes: int, steps: int, batch: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = _models(name, nodes, steps).to(device)
    x = torch.zeros(batch, steps, nodes, 3, device=device)
    x[..., 0] = torch.randn(batch, steps, nodes, device=device)
    x[..., 1] = (torch.arange(steps, device=device) % 288 / 288)[None, :, None]
    y = torch.randn(batch, steps, nodes, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        loss = torch.nn.functional.huber_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad():
            model(x)

    out = {"model": name, "T": steps, "N": nodes, "batch": batch,
           "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    for label, fn in (("train", train_step), ("infer", infer)):
        model.train(label == "train")
        with PeakMemory(device) as mem:
            fn()  # warm-up, and the peak
            _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        out[f"{label}_s"] = statistics.median(times)
        out[f"{label}_peak_mb"] = mem.peak_mb
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[12, 288, 2016])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--grid-max-gb",
        type=float,
        default=None,
        help="skip grid attention above this size of its T x T maps (default: 4 on CPU, none on GPU)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="Append one JSON line per measurement here.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    grid_max_gb = (
        args.grid_max_gb if args.grid_max_gb is not None else (4.0 if device.type == "cpu" else float("inf"))
    )
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(f"machine: {machine}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for steps in args.steps:
        for name in ("extralonger", "grid-attention"):
            maps_gb = args.batch * args.nodes * 4 * steps * steps * 4 / 2**30
            reason = None
            if name == "grid-attention" and maps_gb > grid_max_gb:
                reason = f"temporal attention maps alone {maps_gb:.3g} GiB > --grid-max-gb {grid_max_gb}"
            else:
                try:
                    row = measure(name, args.nodes, steps, args.batch, args.repeats, device) | {
                        "machine": machine
                    }
                    rows.append(row)
                except torch.OutOfMemoryError as exc:
                    reason = f"out of {device.type} memory: {str(exc).splitlines()[0][:200]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            if reason is not None:
                print(f"T={steps} {name}: skipped ({reason})")
                row = {"model": name, "N": args.nodes, "T": steps, "batch": args.batch, "skipped": reason,
                       "machine": machine}  # fmt: skip
            print(json.dumps(row))
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    by = {(r["model"], r["T"]): r for r in rows}
    for steps in args.steps:
        ours, grid = by.get(("extralonger", steps)), by.get(("grid-attention", steps))
        if ours and grid:
            print(
                f"T={steps}: grid / Extralonger: train {grid['train_s'] / ours['train_s']:.2f}x, "
                f"infer {grid['infer_s'] / ours['infer_s']:.2f}x, train memory "
                f"{grid['train_peak_mb'] / max(ours['train_peak_mb'], 1e-9):.2f}x"
            )


if __name__ == "__main__":
    main()
