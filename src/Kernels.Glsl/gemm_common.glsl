// gemm_common.glsl: arguments and bounds-checked operand access of the GEMM kernels (docs/kernels.md §1):
// C = α·op(A)·op(B) + β·C, batched over gl_WorkGroupID.z. op(A) is [M,K], op(B) is [K,N], C is [M,N],
// row-major with leading dimensions; TRANS_A / TRANS_B (specialization constants of the includer) say that
// A is stored [K,M] / B is stored [N,K]. Every load checks its indices (never rely on robust buffer access);
// vec4 loads are used only when the host proved 16-byte alignment (flags) and the 4 elements are in range.
// The includer declares TRANS_A and TRANS_B before including this file.
#ifndef GEMM_COMMON_GLSL
#define GEMM_COMMON_GLSL

// = C# GemmArgs (64 bytes). Offsets and strides are in elements, relative to the bound ranges.
layout(push_constant) uniform Args {
    uint M, N, K;
    uint lda, ldb, ldc;
    uint offA, offB, offC;
    uint strideA, strideB, strideC;
    float alpha, beta;
    uint flags;        // bit 0: A vec4-aligned; bit 1: B; bit 2: C
    uint pad;
} args;

layout(binding = 0) readonly buffer A1 { float a1[]; };
layout(binding = 0) readonly buffer A4 { vec4 a4[]; };
layout(binding = 1) readonly buffer B1 { float b1[]; };
layout(binding = 1) readonly buffer B4 { vec4 b4[]; };
layout(binding = 2) buffer C1 { float c1[]; };
layout(binding = 2) buffer C4 { vec4 c4[]; };

// op(A)[m, k] (0 outside).
float loadA1(uint base, uint m, uint k) {
    if (m >= args.M || k >= args.K) return 0.0;
    return TRANS_A ? a1[base + k * args.lda + m] : a1[base + m * args.lda + k];
}

// op(B)[k, n] (0 outside).
float loadB1(uint base, uint k, uint n) {
    if (k >= args.K || n >= args.N) return 0.0;
    return TRANS_B ? b1[base + n * args.ldb + k] : b1[base + k * args.ldb + n];
}

// op(A)[m, k..k+3]: contiguous in memory when A is not transposed.
vec4 loadA4k(uint base, uint m, uint k) {
    if (!TRANS_A && (args.flags & 1u) != 0u && m < args.M && k + 4u <= args.K)
        return a4[(base + m * args.lda + k) >> 2];
    return vec4(loadA1(base, m, k), loadA1(base, m, k + 1u), loadA1(base, m, k + 2u), loadA1(base, m, k + 3u));
}

// op(A)[m..m+3, k]: contiguous in memory when A is transposed.
vec4 loadA4m(uint base, uint m, uint k) {
    if (TRANS_A && (args.flags & 1u) != 0u && k < args.K && m + 4u <= args.M)
        return a4[(base + k * args.lda + m) >> 2];
    return vec4(loadA1(base, m, k), loadA1(base, m + 1u, k), loadA1(base, m + 2u, k), loadA1(base, m + 3u, k));
}

// op(B)[k, n..n+3]: contiguous when B is not transposed.
vec4 loadB4n(uint base, uint k, uint n) {
    if (!TRANS_B && (args.flags & 2u) != 0u && k < args.K && n + 4u <= args.N)
        return b4[(base + k * args.ldb + n) >> 2];
    return vec4(loadB1(base, k, n), loadB1(base, k, n + 1u), loadB1(base, k, n + 2u), loadB1(base, k, n + 3u));
}

// op(B)[k..k+3, n]: contiguous when B is transposed.
vec4 loadB4k(uint base, uint k, uint n) {
    if (TRANS_B && (args.flags & 2u) != 0u && n < args.N && k + 4u <= args.K)
        return b4[(base + n * args.ldb + k) >> 2];
    return vec4(loadB1(base, k, n), loadB1(base, k + 1u, n), loadB1(base, k + 2u, n), loadB1(base, k + 3u, n));
}

// C[m, n..n+3] = α·v + β·C (β = 0 never reads C: it may hold NaN).
void storeC4(uint base, uint m, uint n, vec4 v) {
    if (m >= args.M) return;
    uint idx = base + m * args.ldc + n;
    v *= args.alpha;
    if ((args.flags & 4u) != 0u && n + 4u <= args.N) {
        if (args.beta != 0.0) v += args.beta * c4[idx >> 2];
        c4[idx >> 2] = v;
        return;
    }
    for (uint c = 0u; c < 4u; c++) {
        if (n + c >= args.N) break;
        float o = v[c];
        if (args.beta != 0.0) o += args.beta * c1[idx + c];
        c1[idx + c] = o;
    }
}

#endif
