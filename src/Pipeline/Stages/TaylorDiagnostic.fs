/// The per-layer Taylor diagnostic (docs/method.md §10, §11e): on the calibration batch, per head, the relative
/// error ‖o_T − o_soft‖_F/‖o_soft‖_F of the first-order (w = 1 + s) and second-order (w = 1 + s + s²/2)
/// Taylor linear attention o_T,i = Σ_{j≤i} w(s_ij)v_j / Σ_{j≤i} w(s_ij), on the teacher's exact scaled logits
/// s_ij (RoPE, q/k norm, biases), against the softmax context; plus the count of rows whose first-order
/// denominator is ≤ 0. Host-side, streamed over rows (no T×T matrix); q, k, v are recomputed from the
/// traced normed input with the teacher's weights.
module TaylorCalibrate.Pipeline.Stages.TaylorDiagnostic

open System.Threading.Tasks
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages.TeacherTrace

/// Per head of one layer.
type TaylorErrors =
    { FirstOrder: float[]
      SecondOrder: float[]
      /// Rows (b, i) whose first-order denominator Σ_j (1 + s_ij) is ≤ 0.
      NonPositiveFirstOrder: int[] }

/// y (N, out) = x (N, in)·wᵀ + b, in double.
let private project (x: float32[]) (N: int) (D: int) (w: float32[]) (b: float32[] option) =
    let out = w.Length / D
    let y = Array.zeroCreate<float> (N * out)
    Parallel.For(0, N, fun n ->
        for o in 0 .. out - 1 do
            let mutable s = match b with Some b -> float b[o] | None -> 0.0
            for i in 0 .. D - 1 do s <- s + float x[n * D + i] * float w[o * D + i]
            y[n * out + o] <- s) |> ignore
    y

/// Per-head RMSNorm (Qwen3 q/k norm) in place on (N, heads, hd).
let private headNorm (a: float[]) (hd: int) (w: float32[]) (eps: float) =
    for v in 0 .. a.Length / hd - 1 do
        let mutable s = 0.0
        for i in 0 .. hd - 1 do s <- s + a[v * hd + i] * a[v * hd + i]
        let r = 1.0 / sqrt (s / float hd + eps)
        for i in 0 .. hd - 1 do a[v * hd + i] <- a[v * hd + i] * r * float w[i]

/// RoPE in place on (B, T, heads, hd) with the teacher's tables and pairing.
let private rope (c: ModelConfig) (a: float[]) (B: int) (T: int) (heads: int) =
    let hd = c.HeadDim
    let half = hd / 2
    let struct (cos, sin) = RopeTables.Build(T, hd, c.RopeTheta, Option.toObj c.RopeScaling)
    for b in 0 .. B - 1 do
        for t in 0 .. T - 1 do
            for h in 0 .. heads - 1 do
                let baseIdx = ((b * T + t) * heads + h) * hd
                for i in 0 .. half - 1 do
                    let ia, ib = match c.RopeLayout with RopeLayout.Adjacent -> 2 * i, 2 * i + 1 | _ -> i, i + half
                    let x0, x1 = a[baseIdx + ia], a[baseIdx + ib]
                    let co, si = float cos[t * half + i], float sin[t * half + i]
                    a[baseIdx + ia] <- x0 * co - x1 * si
                    a[baseIdx + ib] <- x0 * si + x1 * co

/// The diagnostic of one layer from its trace and the teacher's weights of that layer.
let run (c: ModelConfig) (l: LayerWeights) (trace: LayerTrace) (B: int) (T: int) : TaylorErrors =
    let N, D, H, Hkv, hd = B * T, c.Dim, c.Heads, c.KvHeads, c.HeadDim
    let q = project trace.X N D l.Wq l.Bq
    let k = project trace.X N D l.Wk l.Bk
    let v = project trace.X N D l.Wv l.Bv
    l.QNorm |> Option.iter (fun w -> headNorm q hd w c.NormEps)
    l.KNorm |> Option.iter (fun w -> headNorm k hd w c.NormEps)
    rope c q B T H
    rope c k B T Hkv
    let g = H / Hkv
    let scale = c.AttentionScale
    // Per (b, h): squared errors of both orders, ‖o_soft‖², non-positive denominators.
    let parts =
        Array.Parallel.init (B * H) (fun bh ->
            let b, h = bh / H, bh % H
            let kvh = h / g
            let mutable e1, e2, ref2, bad = 0.0, 0.0, 0.0, 0
            let n1, n2 = Array.zeroCreate<float> hd, Array.zeroCreate<float> hd
            for i in 0 .. T - 1 do
                System.Array.Clear n1
                System.Array.Clear n2
                let mutable z1, z2 = 0.0, 0.0
                let qi = ((b * T + i) * H + h) * hd
                for j in 0 .. i do
                    let kj = ((b * T + j) * Hkv + kvh) * hd
                    let mutable s = 0.0
                    for d in 0 .. hd - 1 do s <- s + q[qi + d] * k[kj + d]
                    let s = s * scale
                    let w1 = 1.0 + s
                    let w2 = w1 + 0.5 * s * s
                    z1 <- z1 + w1
                    z2 <- z2 + w2
                    for d in 0 .. hd - 1 do
                        n1[d] <- n1[d] + w1 * v[kj + d]
                        n2[d] <- n2[d] + w2 * v[kj + d]
                if z1 <= 0.0 then bad <- bad + 1
                for d in 0 .. hd - 1 do
                    let soft = float trace.Context[qi + d]
                    e1 <- e1 + (n1[d] / z1 - soft) ** 2.0
                    e2 <- e2 + (n2[d] / z2 - soft) ** 2.0
                    ref2 <- ref2 + soft * soft
            e1, e2, ref2, bad)
    let perHead f = Array.init H (fun h -> Array.init B (fun b -> f parts[b * H + h]) |> Array.sum)
    let ref2 = perHead (fun (_, _, r, _) -> r)
    { FirstOrder = Array.map2 (fun e r -> sqrt (e / max r 1e-300)) (perHead (fun (e, _, _, _) -> e)) ref2
      SecondOrder = Array.map2 (fun e r -> sqrt (e / max r 1e-300)) (perHead (fun (_, e, _, _) -> e)) ref2
      NonPositiveFirstOrder = Array.init H (fun h -> Array.init B (fun b -> let (_, _, _, n) = parts[b * H + h] in n) |> Array.sum) }
