/// The student skeleton (docs/method.md §4): kept layers copied; every converted layer gets W_q = teacher q_proj,
/// W_k/W_v = teacher k/v_proj expanded from n_kv to H heads (head-wise by default, row-wise as the
/// reference with GqaExpand.Rows, §11a), W_o = teacher o_proj, fresh W_a, W_b, W_g ~ N(0, 0.02²),
/// A_log = ln A with A ~ U(0,16] , dt_bias = softplus⁻¹(dt), dt = exp(U(ln 1e-3, ln 1e-1)) ≥ 1e-4,
/// o_norm = 1. Fresh draws are a pure function of (seed, layer) [project]. This is the `naive` student.
module TaylorCalibrate.Pipeline.Stages.Skeleton

open System
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student

/// Standard deviation of the fresh projections W_a, W_b, W_g.
let freshStd = 0.02

/// Expands (Hkv·hd, D) k/v rows to (H·hd, D). Heads: row m·hd+i ← kv row ⌊m/g⌋·hd+i.
/// Rows: row r ← kv row ⌊r/g⌋ (the reference's repeat_interleave over flattened rows).
let expandKv (expand: GqaExpand) (c: ModelConfig) (w: float32[]) : float32[] =
    let g = c.Heads / c.KvHeads
    let D, hd = c.Dim, c.HeadDim
    let source r =
        match expand with
        | GqaExpand.Heads -> (r / hd / g) * hd + r % hd
        | GqaExpand.Rows -> r / g
    Array.init (c.QDim * D) (fun idx -> w[source (idx / D) * D + idx % D])

/// softplus⁻¹(y) = y + ln(−expm1(−y)), y > 0.
let inverseSoftplus (y: float) = y + log (-(Math.Exp(-y) - 1.0))

/// The deterministic generator of one layer's fresh draws (HashCode.Combine is randomised per process, so
/// the seed is mixed by hand; Random(int) is a fixed algorithm across runs).
let rng (seed: int) (layer: int) = Random(int ((int64 seed * 1_000_003L + int64 layer * 7_919L + 12_345L) % 2_147_483_647L) |> abs)

let private normal (r: Random) (std: float) (n: int) =
    Array.init n (fun _ ->
        let u1 = 1.0 - r.NextDouble()
        let u2 = r.NextDouble()
        float32 (std * sqrt (-2.0 * log u1) * cos (2.0 * Math.PI * u2)))

/// The naive GDN layer for teacher layer `layer`.
let gdnLayer (expand: GqaExpand) (seed: int) (c: ModelConfig) (layer: int) (l: LayerWeights) : GdnWeights =
    let r = rng seed layer
    let H, D, Q = c.Heads, c.Dim, c.QDim
    let wa = normal r freshStd (H * D)
    let wb = normal r freshStd (H * D)
    let wg = normal r freshStd (Q * D)
    let aLog = Array.init H (fun _ -> float32 (log (16.0 * (1.0 - r.NextDouble()))))
    let dtBias =
        Array.init H (fun _ ->
            let dt = exp (log 1e-3 + r.NextDouble() * (log 1e-1 - log 1e-3)) |> max 1e-4
            float32 (inverseSoftplus dt))
    { Wq = Array.copy l.Wq; Wk = expandKv expand c l.Wk; Wv = expandKv expand c l.Wv; Wg = wg; Wa = wa; Wb = wb
      ALog = aLog; DtBias = dtBias; ONorm = Array.create c.HeadDim 1f; Wo = Array.copy l.Wo }

/// The naive student: `kept` (validated, sorted) keep softmax attention, all other layers become GDN.
let build (teacher: Teacher) (kept: int list) (expand: GqaExpand) (seed: int) : Student =
    let c = teacher.Config
    let keptSet = Set.ofList kept
    { Config = c
      Base = teacher.Weights
      Kept = kept
      Gdn = Map [ for i in 0 .. c.Layers - 1 do if not (keptSet.Contains i) then i, gdnLayer expand seed c i teacher.Weights.Layers[i] ]
      GqaExpand = expand
      Init = "naive" }
