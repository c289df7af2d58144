// common.glsl: helpers shared by the kernels of this folder: the linear workgroup index of a wrapped 2-D
// grid (the host splits more than 65535 groups into rows, VulkanBackend.Grid) and numerically careful
// scalar functions used by several families (docs/kernels.md §4).
#ifndef COMMON_GLSL
#define COMMON_GLSL

// Linear index of this workgroup in a grid of gl_NumWorkGroups.x × gl_NumWorkGroups.y groups.
uint groupIndex() { return gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x; }

// Most negative finite start for running maxima: −FLT_MAX/2, so that m − m' never becomes inf − inf = NaN.
const float NEG_BIG = -1.7014117e38;

// σ(x) without overflow: e^{−|x|} ≤ 1 on both branches.
float sigmoid(float x) {
    float e = exp(-abs(x));
    return x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

// log(1 + u) for 0 ≤ u ≤ 1, accurate when u is tiny (fp32 1 + u would round to 1): Goldberg's trick.
float log1pSmall(float u) {
    float w = 1.0 + u;
    return w == 1.0 ? u : log(w) * u / (w - 1.0);
}

// softplus(x) = max(x, 0) + log1p(e^{−|x|}).
float softplus(float x) { return max(x, 0.0) + log1pSmall(exp(-abs(x))); }

#endif
