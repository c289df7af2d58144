// gdn_recurrent_back.comp: token-recurrent gated delta rule, backward through time (docs/kernels.md §3.1).
// One workgroup per (b, h); invocation j < DV owns value column j of the state S and of its gradient dS
// (fp32 registers): the BPTT recurrences act on each column separately. States are recomputed, not stored
// per token: a forward sweep saves S at the start of every segment of `seg` tokens (work: checkpoints);
// the reverse sweep replays each segment into work (replay), then walks it backwards. Per token t, with
// S′ = e^{g_t}S_{t−1} and d = dS + scale·q dOᵀ (column j):
//   du_j = d·k;  r_j = v_j − S′·k;  u_j = β r_j;  dv_j = β du_j;  dS′ = d − β k du_j;  dS ← e^{g_t} dS′
// and the sums over columns  dq_i = scale·Σ_j S_t[i,j] dO_j = scale·(Σ_j S′_ij dO_j + k_i Σ_j u_j dO_j),
// dk_i = Σ_j (d_ij u_j − β S′_ij du_j), dg = Σ_ij S′ ⊙ dS′, dβ = Σ_j du_j r_j  are reduced in a fixed order:
// every invocation writes its column's partials to work (part), and after a barrier each invocation sums
// a few of the entries over all columns. With GDN_L2 the gradients are w.r.t. the normalised q, k; the
// L2-norm backward runs afterwards (gdn_l2_back.comp).
#version 450
#include "gdn_common.glsl"

layout(binding = 0) readonly buffer Q { float q[]; };         // (B, T, H, DK)
layout(binding = 1) readonly buffer K { float k[]; };         // (B, T, H, DK)
layout(binding = 2) readonly buffer Vb { float v[]; };        // (B, T, H, DV)
layout(binding = 3) readonly buffer Gates { float gb[]; };    // g (B, T, H), then β (B, T, H)
layout(binding = 4) readonly buffer DO { float dO[]; };       // (B, T, H, DV)
layout(binding = 5) readonly buffer States { float st[]; };   // h0 (B, H, DK, DV), then dht (same shape)
layout(binding = 6) coherent buffer Work { float work[]; };   // checkpoints (B·H, nSeg, DK, DV) at 0,
                                                              // replay (B·H, seg, DK, DV) at offRp,
                                                              // partials (B·H, WG, NP) at offPart
layout(binding = 7) writeonly buffer Grads { float gr[]; };   // dq (B, T, H, DK) at 0, dk at offDk,
                                                              // dv at offDv, dg at offDg, dβ at offDb, dh0 at offDh0

const uint NP = 2 * DK + 3;   // partials per column: dq (DK), dk (DK), dg, dβ, Σu·dO
shared float red[NP];

float S[DK];    // column j of the state (forward and replay)
float dS[DK];   // column j of dL/dS_t

uint b, h, bh, j;
bool live;

// rq, rk: the L2-norm scales of q_t, k_t (1 without GDN_L2)
void norms(uint ko, out float rq, out float rk) {
    rq = 1.0; rk = 1.0;
    if ((args.flags & GDN_L2) == 0u) return;
    float sq = 0.0, sk = 0.0;
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) { float a = q[ko + i], c = k[ko + i]; sq += a * a; sk += c * c; }
    }
    rq = inversesqrt(sq + 1e-6); rk = inversesqrt(sk + 1e-6);
}

// S ← state after token t (the forward recurrence on column j)
void advance(uint t) {
    uint ko = qkIndex(b, t, h), gi = gateIndex(b, t, h);
    float rq, rk;
    norms(ko, rq, rk);
    float decay = exp(gb[gi]), kS = 0.0;
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) { S[i] *= decay; kS += S[i] * k[ko + i]; }
    }
    float uk = gb[args.B * args.T * args.H + gi] * (v[vIndex(b, t, h) + j] - rk * kS) * rk;
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) S[i] += uk * k[ko + i];
    }
}

// S ↔ work[base + i·DV + j]
void saveState(uint base) {
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) work[base + i * DV + j] = S[i];
    }
}
void loadState(uint base) {
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) S[i] = work[base + i * DV + j];
    }
}

// One reverse step at token t; prevBase: where S_{t−1} (column j) lies in work.
void reverseStep(uint t, uint prevBase) {
    uint ko = qkIndex(b, t, h), gi = gateIndex(b, t, h), vo = vIndex(b, t, h);
    uint part = args.offPart + (bh * WG + gl_LocalInvocationID.x) * NP;
    float rq, rk;
    norms(ko, rq, rk);                            // the same for every invocation (uniform loads)
    if (live) {
        float decay = exp(gb[gi]), beta = gb[args.B * args.T * args.H + gi];
        float dOj = dO[vo + j], sdO = args.scale * rq * dOj;    // scale·q̂_i·dO_j = sdO·q_i
        float kS = 0.0, du = 0.0;
        for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
            uint i = i0 + ic;
            if (i < DK) {
                float ki = rk * k[ko + i];
                S[i] = decay * work[prevBase + i * DV + j];      // S′
                kS += S[i] * ki;
                du += (dS[i] + sdO * q[ko + i]) * ki;            // d·k
            }
        }
        float r = v[vo + j] - kS, u = beta * r;
        gr[args.offDv + vo + j] = beta * du;
        float dg = 0.0;
        for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
            uint i = i0 + ic;
            if (i < DK) {
                float ki = rk * k[ko + i];
                float d = dS[i] + sdO * q[ko + i];
                work[part + i] = S[i] * dOj;                     // → Σ_j S′_ij dO_j
                work[part + DK + i] = d * u - beta * S[i] * du;  // → dk_i
                float dsp = d - beta * ki * du;                  // dS′
                dg += S[i] * dsp;
                dS[i] = decay * dsp;
            }
        }
        work[part + 2 * DK] = dg;
        work[part + 2 * DK + 1] = du * r;
        work[part + 2 * DK + 2] = u * dOj;
    }
    memoryBarrierBuffer();
    barrier();
    // fixed-order sums over the DV columns
    uint base = args.offPart + bh * WG * NP;
    for (uint x = gl_LocalInvocationID.x; x < NP; x += WG) {
        float s = 0.0;
        for (uint c0 = 0; c0 < DV; c0 += KCHUNK) [[unroll]] for (uint cc = 0; cc < KCHUNK; cc++)
            if (c0 + cc < DV) s += work[base + (c0 + cc) * NP + x];
        red[x] = s;
    }
    barrier();   // red complete; also orders these reads of part before the next step's writes
    for (uint x = gl_LocalInvocationID.x; x < DK; x += WG) {
        gr[ko + x] = args.scale * (red[x] + rk * k[ko + x] * red[2 * DK + 2]);   // dq̂
        gr[args.offDk + ko + x] = red[DK + x];                                     // dk̂
    }
    if (gl_LocalInvocationID.x == 0) {
        gr[args.offDg + gi] = red[2 * DK];
        gr[args.offDb + gi] = red[2 * DK + 1];
    }
    barrier();   // red is rewritten by the next step
}

void main() {
    bh = groupIndex();
    if (bh >= args.B * args.H) return;           // uniform per workgroup
    b = bh / args.H; h = bh % args.H;
    j = gl_LocalInvocationID.x;
    live = j < DV;
    uint jj = min(j, DV - 1);                     // idle lanes shadow column DV−1 but never write it
    j = jj;
    uint KV = DK * DV;
    for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
        uint i = i0 + ic;
        if (i < DK) {
            S[i] = (args.flags & GDN_H0) != 0u ? st[stateIndex(bh, i, j)] : 0.0;
            dS[i] = (args.flags & GDN_FINAL) != 0u ? st[args.B * args.H * KV + stateIndex(bh, i, j)] : 0.0;
        }
    }
    // Step 0 is the forward sweep over all tokens, saving a checkpoint at every segment start; step
    // s ≥ 1 replays segment nSeg − s from its checkpoint, saving the state before each token, and walks it
    // backwards. One loop, so advance() and saveState() are inlined once (lavapipe compile time).
    for (uint step = 0; step <= args.nSeg; step++) {
        bool sweep = step == 0;
        uint sg = sweep ? 0 : args.nSeg - step;
        uint t0 = sg * args.seg, t1 = sweep ? args.T : min(args.T, t0 + args.seg);
        uint rp = args.offRp + bh * args.seg * KV;
        if (live) {
            if (!sweep) loadState((bh * args.nSeg + sg) * KV);
            for (uint t = t0; t < t1; t++) {
                if (!sweep || t % args.seg == 0)
                    saveState(sweep ? (bh * args.nSeg + t / args.seg) * KV : rp + (t - t0) * KV);
                advance(t);
            }
        }
        if (!sweep)
            for (uint t = t1; t-- > t0;) reverseStep(t, rp + (t - t0) * KV);
    }
    if (live && (args.flags & GDN_DH0) != 0u)
        for (uint i0 = 0; i0 < DK; i0 += KCHUNK) [[unroll]] for (uint ic = 0; ic < KCHUNK; ic++) {
            uint i = i0 + ic;
            if (i < DK) gr[args.offDh0 + stateIndex(bh, i, j)] = dS[i];
        }
}
