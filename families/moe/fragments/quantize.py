# Fragment: FP8 E4M3 quantisation with 128-blocks, scale = amax / 448 (always positive).

FP8_MAX = 448.0
_INV_FP8_MAX = 1.0 / FP8_MAX
_TINY = 1e-12  # an all-zero block still gets a positive scale


def quantize_weight_blocks(weight):
    """fp32 [N, K] -> (float8_e4m3fn [N, K], fp32 scales [N/BLOCK, K/BLOCK]), per 128x128 block."""
    rows, cols = weight.shape
    blocks = weight.view(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=_TINY) * _INV_FP8_MAX
    values = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    return values.to(torch.float8_e4m3fn).view(rows, cols), scale


def quantize_token_groups(x):
    """fp32 [T, H] -> (float8_e4m3fn [T, H], fp32 scales [H/BLOCK, T]), per 1x128 token group.

    The scales are stored block-major (transposed), as the definitions declare them.
    """
    tokens, hidden = x.shape
    groups = x.view(tokens, hidden // BLOCK, BLOCK)
    scale = groups.abs().amax(dim=2).clamp(min=_TINY) * _INV_FP8_MAX
    values = (groups / scale[:, :, None]).clamp(-FP8_MAX, FP8_MAX)
    return values.to(torch.float8_e4m3fn).view(tokens, hidden), scale.t().contiguous()
