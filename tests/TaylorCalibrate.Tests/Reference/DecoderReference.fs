/// The defining double-precision reference of a whole decoder (teacher or hybrid student), written from
/// the formulas of docs/training.md and docs/method.md §2–§3 and nothing of the Pipeline's code:
///   x₀ = E[ids];  h = x + Mixer(RMSNorm(x)·w_attn);  x' = h + W_down(silu(W_gate ĥ) ⊙ W_up ĥ), ĥ = RMSNorm(h)·w_mlp;
///   logits = W_head·RMSNorm(x_L)·w_final.
/// Softmax mixer: q/k/v projections (+ biases), per-head q/k RMSNorm, RoPE (either pairing), causal GQA
/// attention (AttentionReference), o_proj (+ bias). gdn_v4 mixer: silu projections, β = σ(W_b x),
/// g = −e^{A_log}·softplus(W_a x + dt_bias), the gated delta rule with L2-normed q, k and scale hd^−½
/// (GdnReference), RMSNorm(o)·w_onorm (eps 1e-5) ⊙ silu(W_g x), o_proj. Weights are looked up by their
/// student-directory names (StudentIo), so a test can perturb any one of them for finite differences.
module TaylorCalibrate.Tests.Reference.DecoderReference

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Reference

/// A decoder in double precision: its config, which layers are gdn_v4, and every weight by name.
type Model =
    { Config: ModelConfig
      Gdn: Set<int>
      Weights: Map<string, float[]> }

/// y (rows, out) = x (rows, in)·Wᵀ + b.
let linear (x: float[]) (w: float[]) (b: float[] option) (outDim: int) =
    let inDim = w.Length / outDim
    let rows = x.Length / inDim
    Array.init (rows * outDim) (fun i ->
        let r, o = i / outDim, i % outDim
        let mutable s = match b with Some b -> b[o] | None -> 0.0
        for j in 0 .. inDim - 1 do s <- s + x[r * inDim + j] * w[o * inDim + j]
        s)

let norm (x: float[]) (w: float[]) (eps: float) = fst (Norm.rmsNorm x w eps)

/// RoPE of x (B, T, heads, hd) at positions t.
let private rope (c: ModelConfig) (B: int) (T: int) (heads: int) (x: float[]) =
    let hd = c.HeadDim
    let inv = RopeTables.InverseFrequencies(hd, c.RopeTheta, Option.toObj c.RopeScaling)
    let y = Array.copy x
    for b in 0 .. B - 1 do
        for t in 0 .. T - 1 do
            for h in 0 .. heads - 1 do
                let o = ((b * T + t) * heads + h) * hd
                for i in 0 .. hd / 2 - 1 do
                    let a, e = match c.RopeLayout with RopeLayout.Adjacent -> 2 * i, 2 * i + 1 | _ -> i, i + hd / 2
                    let ang = float t * inv[i]
                    y[o + a] <- x[o + a] * cos ang - x[o + e] * sin ang
                    y[o + e] <- x[o + e] * cos ang + x[o + a] * sin ang
    y

/// The softmax-attention sublayer of the layer whose names start with p, on xn (B, T, D).
let softmaxMixer (m: Model) (p: string) (xn: float[]) (B: int) (T: int) =
    let c = m.Config
    let w n = m.Weights[p + n]
    let opt n = m.Weights.TryFind(p + n)
    let project (name: string) (normName: string) (outDim: int) (heads: int) =
        let y = linear xn (w (name + ".weight")) (opt (name + ".bias")) outDim
        match opt normName with
        | Some nw -> norm y nw c.NormEps
        | None -> y
        |> rope c B T heads
    let q = project "q_proj" "q_norm.weight" c.QDim c.Heads
    let k = project "k_proj" "k_norm.weight" c.KvDim c.KvHeads
    let v = linear xn (w "v_proj.weight") (opt "v_proj.bias") c.KvDim
    let o =
        AttentionReference.forward
            { B = B; T = T; H = c.Heads; Hkv = c.KvHeads; D = c.HeadDim; Q = q; K = k; V = v; Scale = c.AttentionScale }
    linear o.O (w "o_proj.weight") (opt "o_proj.bias") c.Dim

/// The gdn_v4 sublayer of the layer whose names start with p, on xn (B, T, D).
let gdnMixer (m: Model) (p: string) (xn: float[]) (B: int) (T: int) =
    let c = m.Config
    let H, hd = c.Heads, c.HeadDim
    let w n = m.Weights[p + n]
    let act f (a: float[]) = Array.map f a
    let q = linear xn (w "q_proj.weight") None (H * hd) |> act Elementwise.silu
    let k = linear xn (w "k_proj.weight") None (H * hd) |> act Elementwise.silu
    let v = linear xn (w "v_proj.weight") None (H * hd) |> act Elementwise.silu
    let beta = linear xn (w "b_proj.weight") None H |> act Elementwise.sigmoid
    let aLog, dtBias = w "A_log", w "dt_bias"
    let z = linear xn (w "a_proj.weight") (Some dtBias) H
    let g = z |> Array.mapi (fun i zi -> -(exp aLog[i % H]) * Elementwise.softplus zi)
    let o =
        GdnReference.forward
            { B = B; T = T; H = H; K = hd; V = hd; Q = q; Kx = k; Vx = v; G = g; Beta = beta; H0 = None
              Scale = 1.0 / sqrt (float hd); L2 = true }
    let on = norm o.O (w "o_norm.weight") 1e-5
    let gate = linear xn (w "g_proj.weight") None (H * hd) |> act Elementwise.silu
    linear (Array.map2 (*) on gate) (w "o_proj.weight") None c.Dim

/// Logits (B, T, V) of ids (B·T).
let forward (m: Model) (ids: int[]) (B: int) (T: int) : float[] =
    let c = m.Config
    let D = c.Dim
    let e = m.Weights["model.embeddings.weight"]
    let mutable x = Array.init (ids.Length * D) (fun i -> e[ids[i / D] * D + i % D])
    for l in 0 .. c.Layers - 1 do
        let p = $"model.layers.{l}."
        let xn = norm x m.Weights[p + "attn_norm.weight"] c.NormEps
        let mix = if m.Gdn.Contains l then gdnMixer m (p + "attn.") xn B T else softmaxMixer m (p + "attn.") xn B T
        let h = Array.map2 (+) x mix
        let hn = norm h m.Weights[p + "mlp_norm.weight"] c.NormEps
        let gate = linear hn m.Weights[p + "mlp.gate_proj.weight"] None c.Hidden
        let up = linear hn m.Weights[p + "mlp.up_proj.weight"] None c.Hidden
        let down = linear (Array.map2 (fun a b -> Elementwise.silu a * b) gate up) m.Weights[p + "mlp.down_proj.weight"] None D
        x <- Array.map2 (+) h down
    let head = m.Weights.TryFind "lm_head.weight" |> Option.defaultValue e
    linear (norm x m.Weights["model.norm.weight"] c.NormEps) head None c.Vocab

/// Mean cross-entropy over the positions with a target ≥ 0.
let meanCrossEntropy (logits: float[]) (targets: int[]) (V: int) =
    let counted = targets |> Array.filter (fun t -> t >= 0) |> Array.length
    let mutable s = 0.0
    targets |> Array.iteri (fun n t ->
        if t >= 0 then s <- s + Loss.logSumExp logits (n * V) V - logits[n * V + t])
    s / float counted
