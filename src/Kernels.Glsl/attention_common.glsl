// attention_common.glsl: indexing and constants shared by the causal GQA softmax attention kernels
// (attention.comp forward, attention_back.comp backward). Maths: docs/kernels.md §2.
// Layouts: q, o, dO, dq (B, T, H, D); k, v, dk, dv (B, T, Hkv, D); lse, δ (B, H, T). Query head h reads
// kv head h / (H/Hkv). All indices fit 32 bits: every tensor is bound whole and a binding is ≤ 4 GiB.
#ifndef ATTENTION_COMMON_GLSL
#define ATTENTION_COMMON_GLSL
#include "common.glsl"

// Loops over the head size run in chunks of DCHUNK with an unrolled, bounds-checked chunk body:
//   for (d0 = 0; d0 < D; d0 += DCHUNK) [[unroll]] for (dc < DCHUNK) { d = d0 + dc; if (d < D) ... }
// Why: lavapipe's LLVM back end (gallivm) counts the back-edges of all loops of an invocation in ONE
// counter and silently stops every loop after 65535 of them (its infinite-loop guard), so a plain
// per-element loop over D inside a loop over T runs out near T·D = 65536. Chunking divides the count by
// DCHUNK; fully unrolling D instead makes LLVM compile for minutes (hundreds of live registers). The host
// rejects shapes beyond the budget on lavapipe (VulkanBackend.LoopBudget).
const uint DCHUNK = 16;

// = C# AttentionArgs (VulkanBackend.Attention.cs)
layout(push_constant) uniform Args {
    uint B; uint T; uint H; uint Hkv;
    float scale;
    uint flags;   // bit 0: write the per-row statistics (forward)
} args;

uint qIndex(uint b, uint t, uint h) { return ((b * args.T + t) * args.H + h) * D; }
uint kvIndex(uint b, uint t, uint hk) { return ((b * args.T + t) * args.Hkv + hk) * D; }
uint rowIndex(uint b, uint h, uint t) { return (b * args.H + h) * args.T + t; }

#endif
