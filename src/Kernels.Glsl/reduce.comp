// reduce.comp: deterministic reductions (docs/kernels.md §4, Reductions) in three modes:
//   MODE 0: partial[outBase + g] = OP over x[g·chunk .. min(n, (g+1)·chunk)), one workgroup per chunk;
//   MODE 1: out[0] = post(scale · combine over partial[0 .. n)), one workgroup (post = √ when post ≠ 0);
//   MODE 2: dw[c] += Σ_b partial[b·cols + c] in order of b (column sums of block partials, RMSNorm dw).
// OP: 0 sum, 1 sum of squares, 2 max |x|. The partition depends only on n and every tree has a fixed
// shape, so results are bitwise reproducible.
#version 450
layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint MODE = 0;
layout(constant_id = 2) const uint OP = 0;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"

// = C# ReduceArgs
layout(push_constant) uniform Args { uint n; uint chunk; uint outBase; float scale; uint post; uint cols; } args;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) buffer Out { float outv[]; };

float mapValue(float v) { return OP == 1u ? v * v : (OP == 2u ? abs(v) : v); }
float combine(float a, float b) { return OP == 2u ? max(a, b) : a + b; }
float wgCombine(float v) { return OP == 2u ? wgMax(v) : wgSum(v); }

void main() {
    uint t = gl_LocalInvocationID.x;
    if (MODE == 0u) {
        uint g = groupIndex();
        uint first = g * args.chunk;
        if (first >= args.n) return;
        uint last = min(args.n, first + args.chunk);
        float v = 0.0;
        for (uint i = first + t; i < last; i += WG) v = combine(v, mapValue(x[i]));
        v = wgCombine(v);
        if (t == 0u) outv[args.outBase + g] = v;
    } else if (MODE == 1u) {
        float v = 0.0;
        for (uint i = t; i < args.n; i += WG) v = combine(v, x[i]);
        v = wgCombine(v) * args.scale;
        if (t == 0u) outv[0] = args.post != 0u ? sqrt(v) : v;
    } else {
        uint c = gl_GlobalInvocationID.x;
        if (c >= args.cols) return;
        float acc = outv[c];
        for (uint b = 0u; b < args.n; b++) acc += x[b * args.cols + c];
        outv[c] = acc;
    }
}
