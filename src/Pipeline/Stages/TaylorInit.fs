/// Phase 1 of Taylor-Calibrate (Taylor-Init), closed form per GDN layer (docs/method.md §5.2, §10):
/// (a) decay from the mean attention distance (half-life d̄_h: softplus(dt_bias_h) = clamp(ln 2/d̄_h), A_log = 0)
///     and write strength from entropy concentration (β*_h ∈ [0.3, 0.7] by rescaling W_b's rows);
/// (b) per-head OLS value scale σ_h = ΣC·O/ΣO² (clamped) of the unscaled, un-normed, ungated GDN read-out
///     O against the teacher context C, applied to W_v's rows (before the SiLU, as the reference does);
/// (c) output gate W_g = α·W_v, α = damping·rms_T/rms(silu(W_v x)).
/// The pure maths is exposed for the property tests; `apply` runs the layer on the backend for O.
module TaylorCalibrate.Pipeline.Stages.TaylorInit

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages.TeacherTrace

/// Every constant of Phase 1 (docs/method.md §5.2 defaults).
type TaylorOptions =
    { DecayMin: float
      DecayMax: float
      BetaLow: float
      BetaHigh: float
      /// Floor of the entropy spread max H − min H.
      EntropySpreadFloor: float
      SigmaMin: float
      SigmaMax: float
      /// Output-gate damping (0.01).
      GateDamping: float }

module TaylorOptions =
    let defaults =
        { DecayMin = 0.001; DecayMax = 5.0; BetaLow = 0.3; BetaHigh = 0.7; EntropySpreadFloor = 1e-3
          SigmaMin = 0.1; SigmaMax = 10.0; GateDamping = 0.01 }

/// target_h = clamp(ln 2 / d̄_h, min, max): a half-life of d̄_h tokens.
let targetDecay (o: TaylorOptions) (meanDistance: float) = Math.Clamp(log 2.0 / meanDistance, o.DecayMin, o.DecayMax)

/// dt_bias = ln(e^target − 1), so softplus(dt_bias) = target.
let dtBiasFor (target: float) = log (Math.Exp target - 1.0)

/// concentration_h = 1 − (H_h − min H)/max(max H − min H, floor).
let concentration (o: TaylorOptions) (entropy: float[]) =
    let lo, hi = Array.min entropy, Array.max entropy
    entropy |> Array.map (fun e -> 1.0 - (e - lo) / max (hi - lo) o.EntropySpreadFloor)

/// β*_h = low + (high − low)·concentration_h.
let betaTarget (o: TaylorOptions) (c: float) = o.BetaLow + (o.BetaHigh - o.BetaLow) * c

/// logit(p).
let logit (p: float) = log (p / (1.0 - p))

/// W_b row ← (ℓ/√D)·row/mean|row|, ℓ = logit(β*).
let scaleBetaRow (target: float) (row: float32[]) : float32[] =
    let D = float row.Length
    let meanAbs = row |> Array.averageBy (fun v -> abs (float v)) |> max 1e-12
    let k = logit target / sqrt D / meanAbs
    row |> Array.map (fun v -> float32 (k * float v))

/// Unclamped least-squares gain σ minimising Σ(C − σ·O)²: ΣC·O / ΣO² (0 when O is 0).
let olsGain (c: float[]) (o: float[]) =
    let mutable num = 0.0
    let mutable den = 0.0
    for i in 0 .. c.Length - 1 do
        num <- num + c[i] * o[i]
        den <- den + o[i] * o[i]
    if den > 0.0 then num / den else 1.0

/// σ clamped to [SigmaMin, SigmaMax].
let valueScale (o: TaylorOptions) (c: float[]) (out: float[]) = Math.Clamp(olsGain c out, o.SigmaMin, o.SigmaMax)

/// rms_T: mean over vectors of the RMS of each hd-vector of the context (B·T·H vectors).
let contextRms (hd: int) (context: float32[]) =
    let n = context.Length / hd
    let mutable acc = 0.0
    for v in 0 .. n - 1 do
        let mutable s = 0.0
        for i in 0 .. hd - 1 do
            let x = float context[v * hd + i]
            s <- s + x * x
        acc <- acc + sqrt (s / float hd)
    acc / float n

/// RMS over all elements.
let rms (a: float32[]) = sqrt (a |> Array.averageBy (fun v -> float v * float v))

/// α = damping·rms_T / rms(silu(W_v x)).
let gateScale (o: TaylorOptions) (rmsTarget: float) (rmsValues: float) = o.GateDamping * rmsTarget / max rmsValues 1e-12

/// What Phase 1 set, per head (the report's columns).
type Phase1Info =
    { TargetDecay: float[]
      Concentration: float[]
      BetaTarget: float[]
      /// Unclamped and clamped OLS gains.
      SigmaRaw: float[]
      Sigma: float[]
      Alpha: float }

/// Per head h, the flattened (B·T·hd) slices of a (B, T, H, hd) array, as doubles.
let headSlices (H: int) (hd: int) (a: float32[]) =
    let n = a.Length / (H * hd)
    Array.init H (fun h -> Array.init (n * hd) (fun i -> float a[((i / hd) * H + h) * hd + i % hd]))

/// Applies Phase 1 to one naive GDN layer with its teacher trace.
let apply (o: TaylorOptions) (be: IBackend) (c: ModelConfig) (trace: LayerTrace) (B: int) (T: int) (w: GdnWeights) : GdnWeights * Phase1Info =
    let H, hd, D = c.Heads, c.HeadDim, c.Dim
    let dims = Gdn.dimsOf c
    // (a) gates.
    let targets = trace.MeanDistance |> Array.map (targetDecay o)
    let conc = concentration o trace.Entropy
    let betas = conc |> Array.map (betaTarget o)
    let wb = Array.init H (fun h -> scaleBetaRow betas[h] w.Wb[h * D .. (h + 1) * D - 1]) |> Array.concat
    let gated = { w with ALog = Array.zeroCreate H; DtBias = targets |> Array.map (dtBiasFor >> float32); Wb = wb }
    // (b) OLS on the raw read-out: GDN recurrence with scale 1, no o_norm, no gate.
    use x = be.FromArray(trace.X, B, T, D)
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    let rawOut =
        use owner = new TensorOwner(be)
        let p = Gdn.upload owner dims gated
        let i = Gdn.mixerInputs be scratch arena p x
        let o = owner.Allocate [| B; T; H; hd |]
        be.GdnForward(i.Qa, i.Ka, i.Va, i.G, i.Beta, null, o, null, GdnSpec(1f, L2NormQK = true, Mode = GdnMode.Chunked))
        o.ToArray()
    let cs, os = headSlices H hd trace.Context, headSlices H hd rawOut
    let sigmaRaw = Array.init H (fun h -> olsGain cs[h] os[h])
    let sigma = sigmaRaw |> Array.map (fun s -> Math.Clamp(s, o.SigmaMin, o.SigmaMax))
    let wv = Array.init (H * hd * D) (fun i -> float32 (sigma[i / D / hd] * float w.Wv[i]))
    // (c) output gate from the scaled W_v.
    let scaled = { gated with Wv = wv }
    let values =
        use owner = new TensorOwner(be)
        arena.Reset()
        let i = Gdn.mixerInputs be scratch arena (Gdn.upload owner dims scaled) x
        i.Va.ToArray()
    let alpha = gateScale o (contextRms hd trace.Context) (rms values)
    { scaled with Wg = wv |> Array.map (fun v -> float32 alpha * v) },
    { TargetDecay = targets; Concentration = conc; BetaTarget = betas; SigmaRaw = sigmaRaw; Sigma = sigma; Alpha = alpha }
