/// Naive double-precision reference of IBackend.Rope: rotary embedding of x (B, T, H, D) at positions
/// 0..T−1 from tables cos, sin (T, D/2) (pair i of position t turns by the angle whose cosine is cos[t,i]).
/// HalfSplit pairs coordinate i with i + D/2 (Hugging Face rotate-half), Adjacent pairs 2i with 2i+1
/// (llama2.c). The inverse turns by −angle; it is also the backward, since the rotation is orthogonal.
/// Maths: docs/kernels.md §4 (RoPE).
module TaylorCalibrate.Tests.Reference.Rope

open TaylorCalibrate.Backend

/// y = rotate(x): for each pair (p, q) with angle a, y_p = x_p cos a − x_q sin a, y_q = x_p sin a + x_q cos a.
let apply (layout: RopeLayout) (inverse: bool) (b: int, t: int, h: int, d: int) (x: float[]) (cos: float[]) (sin: float[]) =
    let half = d / 2
    let y = Array.zeroCreate x.Length
    for bi in 0 .. b - 1 do
        for ti in 0 .. t - 1 do
            for hi in 0 .. h - 1 do
                let start = ((bi * t + ti) * h + hi) * d
                for i in 0 .. half - 1 do
                    let c = cos[ti * half + i]
                    let s = if inverse then -sin[ti * half + i] else sin[ti * half + i]
                    let p, q =
                        match layout with
                        | RopeLayout.HalfSplit -> i, i + half
                        | RopeLayout.Adjacent -> 2 * i, 2 * i + 1
                        | other -> invalidArg "layout" $"unknown RopeLayout {other}"
                    let xp, xq = x[start + p], x[start + q]
                    y[start + p] <- xp * c - xq * s
                    y[start + q] <- xp * s + xq * c
    y

/// Reverse mode of `apply`: dx = Rᵀ·dy, i.e. the rotation the other way.
let backward (layout: RopeLayout) (inverse: bool) (shape: int * int * int * int) (dy: float[]) (cos: float[]) (sin: float[]) =
    apply layout (not inverse) shape dy cos sin
