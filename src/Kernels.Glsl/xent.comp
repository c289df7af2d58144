// xent.comp: losses over a vocabulary, one workgroup per row, streamed with an online log-sum-exp
// (docs/kernels.md §4): no [N, V] temporary, so the gradient may overwrite the logits in place.
//   MODE 0, cross-entropy: loss = lse(z) − z[target]; dz = gradScale·(softmax(z) − onehot(target));
//           target < 0 or ≥ V: loss 0 and a zero gradient row.
//   MODE 1, KL(p_T‖p_S) = Σ p_T (ln p_T − ln p_S); dz_S = gradScale·(p_S − p_T).
// z (logits / teacher), s (student): (rows, V); targets: I32 (rows); loss: (rows).
// Aliasing: dout may be z (MODE 0) or s (MODE 1): every value a thread needs from the whole row is read
// before the reduction barrier, and after it each element is read and then written by the same thread.
#version 450
layout(constant_id = 0) const uint WG = 128;
layout(constant_id = 1) const uint MODE = 0;
layout(local_size_x_id = 0) in;
#include "common.glsl"
#include "reduce_common.glsl"

// = C# LossArgs
layout(push_constant) uniform Args { uint rows; uint V; float gradScale; uint hasGrad; } args;

layout(binding = 0) readonly buffer Z { float z[]; };
layout(binding = 1) readonly buffer S { float s[]; };
layout(binding = 2) readonly buffer Targets { int targets[]; };
layout(binding = 3) buffer DOut { float dout[]; };
layout(binding = 4) writeonly buffer Loss { float loss[]; };

// Online log-sum-exp update of (m, l) with value v: l = Σ e^{x − m} over the values seen.
void lseAdd(inout float m, inout float l, float v) {
    if (v > m) { l = l * exp(m - v) + 1.0; m = v; }
    else l += exp(v - m);
}

void main() {
    uint row = groupIndex();
    if (row >= args.rows) return;
    uint t = gl_LocalInvocationID.x, base = row * args.V;
    if (MODE == 0u) {
        int target = targets[row];
        bool valid = target >= 0 && uint(target) < args.V;
        float zt = valid ? z[base + uint(target)] : 0.0;     // read before any thread may overwrite it
        float m = NEG_BIG, l = 0.0;
        for (uint c = t; c < args.V; c += WG) lseAdd(m, l, z[base + c]);
        float lse = wgLogSumExp(m, l);
        if (t == 0u) loss[row] = valid ? lse - zt : 0.0;
        if (args.hasGrad != 0u)
            for (uint c = t; c < args.V; c += WG)
                dout[base + c] = valid ? args.gradScale * (exp(z[base + c] - lse) - (c == uint(target) ? 1.0 : 0.0)) : 0.0;
    } else {
        float mt = NEG_BIG, lt = 0.0, ms = NEG_BIG, ls = 0.0;
        for (uint c = t; c < args.V; c += WG) { lseAdd(mt, lt, z[base + c]); lseAdd(ms, ls, s[base + c]); }
        float lseT = wgLogSumExp(mt, lt);
        float lseS = wgLogSumExp(ms, ls);
        float acc = 0.0;
        for (uint c = t; c < args.V; c += WG) {
            float logT = z[base + c] - lseT, logS = s[base + c] - lseS;
            float pt = exp(logT);
            if (pt > 0.0) acc += pt * (logT - logS);
            if (args.hasGrad != 0u) dout[base + c] = args.gradScale * (exp(logS) - pt);
        }
        acc = wgSum(acc);
        if (t == 0u) loss[row] = acc;
    }
}
