// gemm_tiled.comp: fp32 GEMM for GPUs, docs/kernels.md §1: classic shared-memory tiling. A workgroup of TX × TY
// threads computes a BM × BN tile of C (BM = TY·TM, BN = TX·TN); per step of BK along k it stages the
// BM × BK tile of op(A) and the BK × BN tile of op(B) in shared memory as fp32 (no fp16 staging), zero-filled
// outside the matrices, and each thread accumulates TM × TN outputs in registers. No subgroup operations,
// so it is correct at any subgroup size; tile sizes are specialization constants.
#version 450

layout(constant_id = 0) const uint TX = 16;
layout(constant_id = 1) const bool TRANS_A = false;
layout(constant_id = 2) const bool TRANS_B = false;
layout(constant_id = 3) const uint TY = 16;
layout(constant_id = 4) const uint TM = 4;
layout(constant_id = 5) const uint TN = 4;
layout(constant_id = 6) const uint BK = 16;
layout(local_size_x_id = 0, local_size_y_id = 3) in;

#include "gemm_common.glsl"

const uint BM = TY * TM;
const uint BN = TX * TN;
const uint WG = TX * TY;

shared float As[BK * BM];   // As[kk·BM + i] = op(A)[m0 + i, k + kk]
shared float Bs[BK * BN];   // Bs[kk·BN + j] = op(B)[k + kk, n0 + j]

void main() {
    uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
    uint tid = ty * TX + tx;
    uint n0 = gl_WorkGroupID.x * BN, m0 = gl_WorkGroupID.y * BM;
    uint z = gl_WorkGroupID.z;
    uint baseA = args.offA + z * args.strideA;
    uint baseB = args.offB + z * args.strideB;
    uint baseC = args.offC + z * args.strideC;

    float acc[TM][TN];
    for (uint i = 0u; i < TM; i++)
        for (uint j = 0u; j < TN; j++) acc[i][j] = 0.0;

    for (uint k = 0u; k < args.K; k += BK) {
        // Consecutive threads read consecutive addresses: along k for A [M,K], along m for Aᵀ storage.
        for (uint e = tid; e < BM * BK; e += WG) {
            uint i = TRANS_A ? e % BM : e / BK, kk = TRANS_A ? e / BM : e % BK;
            As[kk * BM + i] = loadA1(baseA, m0 + i, k + kk);
        }
        for (uint e = tid; e < BK * BN; e += WG) {
            uint j = TRANS_B ? e / BK : e % BN, kk = TRANS_B ? e % BK : e / BN;
            Bs[kk * BN + j] = loadB1(baseB, k + kk, n0 + j);
        }
        barrier();
        for (uint kk = 0u; kk < BK; kk++) {
            float a[TM], b[TN];
            for (uint i = 0u; i < TM; i++) a[i] = As[kk * BM + ty + i * TY];
            for (uint j = 0u; j < TN; j++) b[j] = Bs[kk * BN + tx + j * TX];
            for (uint i = 0u; i < TM; i++)
                for (uint j = 0u; j < TN; j++) acc[i][j] += a[i] * b[j];
        }
        barrier();
    }

    // Thread (tx, ty) owns rows m0 + ty + i·TY and columns n0 + tx + j·TX (strided: conflict-free shared reads).
    for (uint i = 0u; i < TM; i++) {
        uint m = m0 + ty + i * TY;
        if (m >= args.M) break;
        for (uint j = 0u; j < TN; j++) {
            uint n = n0 + tx + j * TX;
            if (n >= args.N) break;
            uint idx = baseC + m * args.ldc + n;
            float o = args.alpha * acc[i][j];
            if (args.beta != 0.0) o += args.beta * c1[idx];
            c1[idx] = o;
        }
    }
}
