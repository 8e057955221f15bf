# Fragment: a counter-based hash RNG.
#
# Every value is a pure function of (key, element index) computed with integer tensor ops, so the
# same seed gives bit-identical tensors on CPU and CUDA, and bulk data costs a few elementwise
# kernels on the GPU instead of a long CPU random stream. Only the seed (and small things like the
# expert popularity order) come from the caller's torch.Generator.
#
# Float ops on hashed values are kept to single-rounding IEEE operations (one mul or one add per
# kernel, no division by scalars, no transcendental functions), so they agree across devices too.

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd multiplier < 2**27: products of 32-bit values stay below 2**63
_CHUNK = 1 << 24  # elements hashed per step, bounding the int64 temporaries to ~128 MiB


def _mix32(x):
    """A 32-bit integer mixing function; works on Python ints and int64 tensors alike."""
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    return (x >> 16) ^ x


def draw_seed(generator):
    """The 31-bit seed of all hashed streams, drawn from the caller's (CPU) torch.Generator."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def stream_key(seed, *labels):
    """A 32-bit key for one named stream (labels are small ints) of one seed."""
    key = _mix32(seed & _MASK32)
    for label in labels:
        key = _mix32(key ^ ((label * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    return key


def hash_bits(count, key, device):
    """Uniform 32-bit values (int64 tensors) for elements 0..count-1, yielded in chunks as
    (start, bits)."""
    for start in range(0, count, _CHUNK):
        index = torch.arange(start, min(count, start + _CHUNK), dtype=torch.int64, device=device)
        yield start, _mix32(_mix32(index & _MASK32) ^ key)


_BYTE_SUM_MEAN = 510  # sum of four uniform bytes: mean 4 * 127.5
_BYTE_SUM_INV_STD = 1.0 / math.sqrt(4 * (256**2 - 1) / 12)


def normal(shape, key, device):
    """Approximately standard normal fp32 values (Irwin-Hall sum of the four bytes of a hash;
    1021 levels, tails cut at 3.45 sigma: ample for synthetic weights and activations)."""
    count = math.prod(shape)
    out = torch.empty(count, dtype=torch.float32, device=device)
    for start, bits in hash_bits(count, key, device):
        total = (bits & 255) + ((bits >> 8) & 255) + ((bits >> 16) & 255) + (bits >> 24)
        out[start:start + bits.numel()] = (total - _BYTE_SUM_MEAN).to(torch.float32) * _BYTE_SUM_INV_STD
    return out.view(shape)


# 2**((k - 8) / 4) for k = 0..15, exact fp32 table values
_LOG_LEVELS = [2.0 ** ((k - 8) / 4.0) for k in range(16)]


def lognormal_factors(count, key, device):
    """[count] positive fp32 factors, roughly log-normal (median 1, x/÷ ~1.5 per sigma): the
    level index is a sum of five 2-bit fields, a bell shape over 16 quarter-octave levels."""
    table = torch.tensor(_LOG_LEVELS, dtype=torch.float32, device=device)
    out = torch.empty(count, dtype=torch.float32, device=device)
    for start, bits in hash_bits(count, key, device):
        level = (bits & 3) + ((bits >> 2) & 3) + ((bits >> 4) & 3) + ((bits >> 6) & 3) + ((bits >> 8) & 3)
        out[start:start + bits.numel()] = table[level]
    return out
