// reduce_common.glsl: deterministic workgroup reductions in a fixed binary-tree order over shared memory
// (docs/kernels.md §4, Reductions). No subgroup arithmetic: its order is implementation-defined, and a shared
// tree gives the same bits on every device for the same workgroup size. The includer declares
//   layout(constant_id = 0) const uint WG = 128;   // power of two, asserted by the host
// before including this file; the helpers must be called in uniform control flow.
#ifndef REDUCE_COMMON_GLSL
#define REDUCE_COMMON_GLSL

shared float redA[WG];
shared float redB[WG];

float wgSum(float v) {
    uint t = gl_LocalInvocationID.x;
    redA[t] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) redA[t] += redA[t + s];
        barrier();
    }
    float r = redA[0];
    barrier();                      // redA is reused by the next call
    return r;
}

float wgMax(float v) {
    uint t = gl_LocalInvocationID.x;
    redA[t] = v;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) redA[t] = max(redA[t], redA[t + s]);
        barrier();
    }
    float r = redA[0];
    barrier();
    return r;
}

// Merges running log-sum-exp states (m, l) = (max, Σ e^{x−m}) over the workgroup; returns m + ln l.
// Every thread must start from m ≥ NEG_BIG (never −inf) so that e^{m−m'} is never NaN.
float wgLogSumExp(float m, float l) {
    uint t = gl_LocalInvocationID.x;
    redA[t] = m;
    redB[t] = l;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (t < s) {
            float m1 = redA[t], m2 = redA[t + s];
            float mm = max(m1, m2);
            redB[t] = redB[t] * exp(m1 - mm) + redB[t + s] * exp(m2 - mm);
            redA[t] = mm;
        }
        barrier();
    }
    float r = redA[0] + log(redB[0]);
    barrier();
    return r;
}

#endif
