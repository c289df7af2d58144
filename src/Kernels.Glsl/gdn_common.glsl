// gdn_common.glsl: indexing, gates and constants shared by the gated-delta-rule kernels (gdn_recurrent.comp,
// gdn_recurrent_back.comp). The column-wise token step itself is written in each of the two kernels: the
// backward one interleaves it with its gradient bookkeeping. Maths: docs/kernels.md §3.1 and §3.4.
// Layouts: q, k (B, T, H, DK); v, o (B, T, H, DV); g, β (B, T, H); states h0, ht, dht, dh0 (B, H, DK, DV).
// The state update S ← e^g S; u = β(v − Sᵀk); S ← S + k uᵀ acts on each value column of S on its own, so
// one invocation owns one column S[:, j] (DK floats in registers) and needs no other invocation's data.
// Loops over DK run in chunks of KCHUNK with an unrolled, bounds-checked body: lavapipe stops every loop of
// an invocation after 65535 back-edges in total (see attention_common.glsl), and the host checks the
// budget (VulkanBackend.LoopBudget).
#ifndef GDN_COMMON_GLSL
#define GDN_COMMON_GLSL
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

layout(constant_id = 0) const uint DK = 64;   // key size K (register arrays are sized by it)
layout(constant_id = 1) const uint DV = 64;   // value size V
layout(constant_id = 2) const uint WG = 64;   // invocations per workgroup
layout(local_size_x_id = 2) in;

// = C# GdnArgs (VulkanBackend.Gdn.cs)
layout(push_constant) uniform Args {
    uint B; uint T; uint H;
    uint flags;        // GDN_H0 | GDN_FINAL | GDN_DH0 | GDN_L2
    uint seg;          // backward: tokens per checkpoint segment
    uint nSeg;         // backward: ⌈T/seg⌉
    float scale;
    uint offRp, offPart;                        // backward: regions of the work buffer (floats)
    uint offDk, offDv, offDg, offDb, offDh0;    // backward: regions of the gradient buffer (floats)
} args;

const uint GDN_H0 = 1u;      // h0 is bound
const uint GDN_FINAL = 2u;   // forward: write ht; backward: dht is bound
const uint GDN_DH0 = 4u;     // backward: write dh0
const uint GDN_L2 = 8u;      // q and k are L2-normalised in the kernel (rstd = (Σx² + 1e-6)^−½)
const uint KCHUNK = 16;

uint qkIndex(uint b, uint t, uint h) { return ((b * args.T + t) * args.H + h) * DK; }
uint vIndex(uint b, uint t, uint h) { return ((b * args.T + t) * args.H + h) * DV; }
uint gateIndex(uint b, uint t, uint h) { return (b * args.T + t) * args.H + h; }
uint stateIndex(uint bh, uint i, uint j) { return (bh * DK + i) * DV + j; }

#endif
