"""The inputs digest's byte sums (fib.harness.inputs._byte_sums) equal the plain formula they fold
(sum of bytes; sum of byte i x ((i mod 65521) + 1) within each chunk), so digests recorded in the
reference cache by earlier fib versions stay valid, and they change when one byte does."""
from __future__ import annotations

import pytest
import torch

from fib.harness.inputs import _byte_sums, inputs_digest


def _plain(data: torch.Tensor, chunk: int) -> tuple[int, int]:
    total = weighted = 0
    for start in range(0, data.numel(), chunk):
        piece = data[start:start + chunk].to(torch.int64)
        weights = torch.arange(piece.numel(), dtype=torch.int64) % 65521 + 1
        total += int(piece.sum())
        weighted += int((piece * weights).sum())
    return total, weighted


@pytest.mark.parametrize("n", [0, 1, 65520, 65521, 65522, 3 * 65521 + 17, 400_000])
@pytest.mark.parametrize("chunk", [65521 * 2 + 3, 1 << 26])
def test_byte_sums_equal_the_plain_formula(n, chunk):
    data = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    assert _byte_sums(data, chunk=chunk) == _plain(data, chunk)


def test_digest_sees_one_changed_or_moved_byte():
    x = torch.randint(0, 256, (300_000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x[10], x[70_000] = 1, 2
    base = inputs_digest({"x": x, "k": 3})
    y = x.clone()
    y[123_456] ^= 1
    assert inputs_digest({"x": y, "k": 3}) != base
    z = x.clone()
    z[[10, 70_000]] = z[[70_000, 10]]  # same bytes, two of them swapped: the weighted sum differs
    assert inputs_digest({"x": z, "k": 3}) != base
    assert inputs_digest({"x": x, "k": 4}) != base
    assert inputs_digest({"x": x.clone(), "k": 3}) == base
