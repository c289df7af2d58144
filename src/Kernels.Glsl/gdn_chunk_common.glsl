// gdn_chunk_common.glsl: specialisation constants, push constants and indexing shared by the chunked (WY)
// gated-delta-rule kernels gdn_chunk_*.comp. Maths: docs/kernels.md §3.2 (forward), §3.3 (backward), §3.4.
// Layouts: q, k (B, T, H, DK); v, o, dO (B, T, H, DV); g, β, γ (B, T, H); states (B, H, DK, DV).
// Scratch "cw" (forward work, floats at the offsets below): γ (B, T, H) local cumsum of g per chunk;
// A (B, H, NT, BT, BT) = (I + L)⁻¹; w (B, T, H, DK); u, then v_new in place (B, T, H, DV).
// Scratch "bw" (backward work): dv2 (B, T, H, DV) local dv, then dL/dv_new; dw (B, T, H, DK); dγ of stage 3
// (B, T, H).
// The per-chunk states, the largest scratch (B·NT·H·DK·DV floats: 128 MiB at T = 8192, H = 16, DK = DV =
// 128), have bindings of their own so that no binding exceeds maxStorageBufferRange as soon as cw would
// (lavapipe: 128 MiB): h_c (B, H, NT, DK, DV) the state at the start of chunk c, and dh_c (same layout)
// the gradient w.r.t. the state at the END of chunk c.
// A chunk holds n ≤ BT valid rows; padded rows are skipped or masked BEFORE any exp, and every exponent is
// a difference γ_r − γ_j with r ≥ j (or γ_r, γ_last − γ_r), so it is ≤ 0 (§3.4). Loops over DK, DV and BT
// run in blocks of UN with an unrolled, bounds-checked body (lavapipe's 65535 back-edge guard, see
// VulkanBackend.LoopBudget). Reductions are done by one owner invocation in a fixed order, so results do
// not depend on the subgroup size.
#ifndef GDN_CHUNK_COMMON_GLSL
#define GDN_CHUNK_COMMON_GLSL
#extension GL_EXT_control_flow_attributes : require
#include "common.glsl"

layout(constant_id = 0) const uint DK = 64;   // key size K
layout(constant_id = 1) const uint DV = 64;   // value size V
layout(constant_id = 2) const uint BT = 64;   // chunk size (16, 32 or 64; ≤ WG)
layout(constant_id = 3) const uint WG = 64;   // invocations per workgroup
layout(local_size_x_id = 3) in;

// = C# GdnChunkArgs (VulkanBackend.GdnChunked.cs)
layout(push_constant) uniform Args {
    uint B; uint T; uint H; uint NT;            // NT = ⌈T/BT⌉
    uint flags;                                 // GC_H0 | GC_FINAL | GC_DH0
    float scale;
    uint offGam, offA, offW, offVn;             // regions of cw
    uint offDv2, offDw, offDgam;                // regions of bw
    uint offDk, offDv, offDg, offDb;            // regions of the gradient buffer (dq̂ at 0)
} args;

const uint GC_H0 = 1u;      // h0 is bound
const uint GC_FINAL = 2u;   // forward: write ht; backward: dht is bound
const uint GC_DH0 = 4u;     // backward: write dh0
const uint UN = 16;         // unrolled block of the inner loops

// Row (b, t, h) of the (B, T, H) layouts; × DK or × DV for q, k, w or v, o.
uint rowOf(uint b, uint t, uint h) { return (b * args.T + t) * args.H + h; }
// Element (r, j) of chunk c's A tile.
uint aIndex(uint bh, uint c, uint r, uint j) { return ((bh * args.NT + c) * BT + r) * BT + j; }
// Element (i, j) of chunk c's state in the h_c or dh_c binding.
uint hIndex(uint bh, uint c, uint i, uint j) { return ((bh * args.NT + c) * DK + i) * DV + j; }
// Element (i, j) of a (B, H, DK, DV) state.
uint stateIndex(uint bh, uint i, uint j) { return (bh * DK + i) * DV + j; }

#endif
