// gemm_splitk.comp: the reduction of split-K GEMM (docs/kernels.md §1): the K range was cut into S slices, each
// slice's GEMM wrote its product into P[s] (α = 1, β = 0); here C = α·Σ_s P[s] + β·C, summed in slice order
// (deterministic). P: (S, batch, M, N) with slices `slice` elements apart; C as in gemm_common.glsl.
#version 450
layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

// = C# SplitKArgs
layout(push_constant) uniform Args {
    uint M, N, batch, splits, slice;
    uint ldc, offC, strideC;
    float alpha, beta;
} args;

layout(binding = 0) readonly buffer P { float p[]; };
layout(binding = 1) buffer C { float c[]; };

void main() {
    uint total = args.batch * args.M * args.N;
    uint stride = gl_NumWorkGroups.x * WG;
    for (uint e = gl_GlobalInvocationID.x; e < total; e += stride) {
        uint z = e / (args.M * args.N), mn = e % (args.M * args.N);
        uint m = mn / args.N, n = mn % args.N;
        float acc = 0.0;
        for (uint s = 0u; s < args.splits; s++) acc += p[s * args.slice + e];
        uint idx = args.offC + z * args.strideC + m * args.ldc + n;
        float o = args.alpha * acc;
        if (args.beta != 0.0) o += args.beta * c[idx];
        c[idx] = o;
    }
}
