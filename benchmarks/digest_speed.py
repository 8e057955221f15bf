"""How fast fib's inputs digest runs on a GPU, against variants that give the same two sums (issue #14: the
worker digests its ~1.4 GB of DeepSeek inputs twice per pair). Prints ms per variant (CUDA events, median of
5) and whether each variant's (total, weighted) equal the current implementation's.

    python benchmarks/digest_speed.py [--gb 1.4]
"""
import argparse

import torch

from fib.harness import inputs as fib_inputs

P = fib_inputs._DIGEST_PERIOD


def current(data):
    return fib_inputs._byte_sums(data)


def int32_cols(data, chunk=1 << 26):
    """As _byte_sums, the column sums accumulated in int32 (a chunk's 1024 rows of bytes fit)."""
    total = torch.zeros((), dtype=torch.int64, device=data.device)
    weighted = torch.zeros((), dtype=torch.int64, device=data.device)
    w = torch.arange(1, P + 1, device=data.device, dtype=torch.int64)
    for start in range(0, data.numel(), chunk):
        piece = data[start:start + chunk]
        full = (piece.numel() // P) * P
        cols = piece[:full].view(-1, P).sum(0, dtype=torch.int32)
        total += cols.sum(dtype=torch.int64)
        weighted += (cols.to(torch.int64) * w).sum()
        if piece.numel() > full:
            tail = piece[full:].to(torch.int64)
            total += tail.sum()
            weighted += (tail * torch.arange(1, tail.numel() + 1, device=data.device, dtype=torch.int64)).sum()
    return int(total), int(weighted)


def timed(fn, data, reps=5):
    out = fn(data)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(data)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2], out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.4)
    args = ap.parse_args()
    n = int(args.gb * 1e9)
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda")
    ref_ms, ref = timed(current, data)
    print(f"current: {ref_ms:.2f} ms for {n / 1e9:.2f} GB ({n / ref_ms / 1e6:.0f} GB/s)")
    for name, fn in (("int32_cols", int32_cols),
                     ("int32_cols_256MiB", lambda d: int32_cols(d, chunk=1 << 28))):
        ms, got = timed(fn, data)
        print(f"{name}: {ms:.2f} ms ({n / ms / 1e6:.0f} GB/s), same sums: {got == ref}")
    ms, _ = timed(lambda d: int(d.sum(dtype=torch.int64)), data)
    print(f"plain byte sum alone: {ms:.2f} ms ({n / ms / 1e6:.0f} GB/s)")


if __name__ == "__main__":
    main()
