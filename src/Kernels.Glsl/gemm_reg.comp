// gemm_reg.comp: fp32 GEMM for CPU-type Vulkan devices (lavapipe/llvmpipe), docs/kernels.md §1 and §6: register
// blocking + vec4 loads + subgroupBroadcast, no shared memory (lavapipe scalarises shared-memory loads and
// barriers are costly there). A workgroup is ONE subgroup of SG lanes and computes a BM × (SG·TN) tile of C:
// lane l owns columns n0 + l·TN .. +TN of all BM rows (BM·TN accumulators). Per step of 4 along k, lane l
// loads rows l, l+SG, … of the A tile (BM/SG vec4 of op(A)[m, k..k+3]) and the 4 × TN block of op(B) it
// needs; the A rows reach every lane by subgroupBroadcast, so each A element is loaded once per workgroup.
// When A is stored transposed ([K,M]), lane l instead loads vec4 runs along m (rows 4l..4l+3, 4(l+SG).., of
// each of the 4 k) and broadcasts 4 rows at a time, so both layouts use 16-byte loads.
// Host contract (VulkanBackend.Gemm.cs): SG = the device's fixed subgroup size, BM % SG == 0, BM % 4 == 0, products
// and sums in fp32. Any M, N, K: every load and store is bounds-checked.
#version 450
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_ballot : require

layout(constant_id = 0) const uint SG = 8;          // lanes per workgroup = subgroup size
layout(constant_id = 1) const bool TRANS_A = false;
layout(constant_id = 2) const bool TRANS_B = false;
layout(constant_id = 3) const uint BM = 32;         // rows of C per workgroup (multiple of SG)
layout(constant_id = 4) const uint TN4 = 2;         // vec4 columns per lane: TN = 4·TN4
layout(local_size_x_id = 0) in;

#include "gemm_common.glsl"

const uint AR = BM / SG;                            // A rows loaded per lane (A not transposed)
const uint AT = (BM + 4u * SG - 1u) / (4u * SG);    // vec4 row runs per lane and k (A transposed)

void main() {
    uint lane = gl_SubgroupInvocationID;
    uint n0 = gl_WorkGroupID.x * (SG * 4u * TN4) + lane * (4u * TN4);
    uint m0 = gl_WorkGroupID.y * BM;
    uint z = gl_WorkGroupID.z;
    uint baseA = args.offA + z * args.strideA;
    uint baseB = args.offB + z * args.strideB;
    uint baseC = args.offC + z * args.strideC;

    vec4 acc[BM][TN4];
    for (uint i = 0u; i < BM; i++)
        for (uint j = 0u; j < TN4; j++) acc[i][j] = vec4(0.0);

    for (uint k = 0u; k < args.K; k += 4u) {
        vec4 ar[AR];                                 // ar[r] = op(A)[m0 + lane + r·SG, k..k+3]
        vec4 at[4][AT];                              // at[kk][r] = op(A)[m0 + 4(lane + r·SG) .. +3, k + kk]
        if (TRANS_A) {
            for (uint kk = 0u; kk < 4u; kk++)
                for (uint r = 0u; r < AT; r++) at[kk][r] = loadA4m(baseA, m0 + 4u * (lane + r * SG), k + kk);
        } else {
            for (uint r = 0u; r < AR; r++) ar[r] = loadA4k(baseA, m0 + lane + r * SG, k);
        }
        vec4 bk[4][TN4];                             // bk[kk][j] = op(B)[k+kk, n0 + 4j .. +3]
        if (TRANS_B) {
            for (uint j = 0u; j < TN4; j++) {
                vec4 c0 = loadB4k(baseB, k, n0 + 4u * j), c1_ = loadB4k(baseB, k, n0 + 4u * j + 1u);
                vec4 c2 = loadB4k(baseB, k, n0 + 4u * j + 2u), c3 = loadB4k(baseB, k, n0 + 4u * j + 3u);
                for (uint kk = 0u; kk < 4u; kk++) bk[kk][j] = vec4(c0[kk], c1_[kk], c2[kk], c3[kk]);
            }
        } else {
            for (uint kk = 0u; kk < 4u; kk++)
                for (uint j = 0u; j < TN4; j++) bk[kk][j] = loadB4n(baseB, k + kk, n0 + 4u * j);
        }
        if (TRANS_A) {
            // Rows over k first (register transpose of the broadcast 4-row runs), then the same FMA loop as
            // below: keeping that loop's body small lets the driver unroll it and keep acc in registers.
            vec4 arow[BM];                                              // arow[i] = op(A)[m0 + i, k..k+3]
            for (uint q = 0u; q < BM / 4u; q++) {
                vec4 v0 = subgroupBroadcast(at[0][q / SG], q % SG), v1 = subgroupBroadcast(at[1][q / SG], q % SG);
                vec4 v2 = subgroupBroadcast(at[2][q / SG], q % SG), v3 = subgroupBroadcast(at[3][q / SG], q % SG);
                for (uint c = 0u; c < 4u; c++) arow[4u * q + c] = vec4(v0[c], v1[c], v2[c], v3[c]);
            }
            for (uint i = 0u; i < BM; i++)
                for (uint kk = 0u; kk < 4u; kk++)
                    for (uint j = 0u; j < TN4; j++) acc[i][j] += arow[i][kk] * bk[kk][j];
        } else {
            for (uint i = 0u; i < BM; i++) {
                vec4 av = subgroupBroadcast(ar[i / SG], i % SG);   // op(A)[m0 + i, k..k+3]
                for (uint kk = 0u; kk < 4u; kk++)
                    for (uint j = 0u; j < TN4; j++) acc[i][j] += av[kk] * bk[kk][j];
            }
        }
    }

    for (uint i = 0u; i < BM; i++)
        for (uint j = 0u; j < TN4; j++) storeC4(baseC, m0 + i, n0 + 4u * j, acc[i][j]);
}
