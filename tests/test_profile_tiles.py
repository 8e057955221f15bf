import pytest

from fib.profile.tiles import parse_tile, short_kernel_name


@pytest.mark.parametrize("name, tile", [
    ("bmm_E4m3_E4m3E4m3_Fp32_t128x64x128u2_s6_et64x64_m128x64x32_cga1x1x1_16dp256b_TN_transOut_schedS_sm100a",
     "128x64x128"),
    ("bmm_Bfloat16_E4m3E4m3_Fp32_t128x8x128_s6_sm100a", "128x8x128"),
    ("cutlass3x_sm90_tensorop_gemm_f16_f16_f32_f16_f16_128x128x64_1x1x1_0_tnn_align8_warpspecialized", "128x128x64"),
    ("void cutlass::Kernel<cutlass::gemm::GemmShape<128, 256, 64>, X>(P)", "128x256x64"),
    ("void k<cute::tuple<cute::C<128>, cute::C<64>, cute::C<32>>>(P)", "128x64x32"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_kernel", "128x128x64"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "256x128"),
    ("fused_moe_kernel BLOCK_SIZE_N=128 BLOCK_SIZE_M=64", "BLOCK_SIZE_M=64,BLOCK_SIZE_N=128"),
    ("fused_moe_kernel", None),
    ("void at::native::elementwise_kernel<128, 4>(int, T3)", None),
    ("kernel_1x1x1_2x1x1", None),
    ("", None),
])
def test_parse_tile(name, tile):
    assert parse_tile(name) == tile


def test_short_kernel_name():
    assert short_kernel_name("void moe::dev::activation::activationDeepSeekKernel<KernelParams<int>>(Params)") \
        == "activationDeepSeekKernel"
    assert short_kernel_name("routingMainKernel") == "routingMainKernel"
    assert short_kernel_name("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x64_8x5_nn_align1>(T1::Params)") \
        == "Kernel2<cutlass_80_simt_sgemm_128x64_8x5_nn_align1>"
