// embedding_back.comp: dtable[id,:] += Σ_{n: ids[n] = id} dy[n,:], deterministic without float atomics
// (docs/kernels.md §4). The host groups positions by id (CSR, stable in n): segment s has id segId[s] and the
// positions perm[start[s] .. start[s+1]). One invocation per (segment, column) adds them in order of n,
// exactly like a sequential loop over n would. dy: (N, D); dtable: (V, D).
#version 450
layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

// = C# EmbeddingArgs (N = segments)
layout(push_constant) uniform Args { uint S; uint D; uint V; } args;

layout(binding = 0) readonly buffer Perm { int perm[]; };
layout(binding = 1) readonly buffer Start { int start[]; };   // (S + 1)
layout(binding = 2) readonly buffer SegId { int segId[]; };   // (S), each in [0, V)
layout(binding = 3) readonly buffer DY { float dy[]; };
layout(binding = 4) buffer Table { float dtable[]; };

void main() {
    uint stride = gl_NumWorkGroups.x * WG;
    for (uint e = gl_GlobalInvocationID.x; e < args.S * args.D; e += stride) {
        uint s = e / args.D, d = e % args.D;
        uint dst = uint(segId[s]) * args.D + d;
        float acc = dtable[dst];
        for (int j = start[s]; j < start[s + 1u]; j++) acc += dy[uint(perm[j]) * args.D + d];
        dtable[dst] = acc;
    }
}
