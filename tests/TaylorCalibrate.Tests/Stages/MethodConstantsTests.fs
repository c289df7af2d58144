/// Every constant of Phase 1 and Phase 2 (docs/method.md §4, §5.2, §5.3) pinned at its exact value on a
/// constructed input whose answer is known in closed form. The expected numbers are literals written here
/// (0.3, 0.7, 0.001, 5, 0.1, 10, 0.01, 1e-4, 1e-3, 300, ...), never read back from the options records, so
/// changing a default in the source fails a test.
///
/// Phase 1 runs on a one-token sequence (T = 1) with W_q = W_k: the delta rule from S_0 = 0 then reads out
/// O = β·v·(q̂·k̂) with q̂·k̂ = Σq²/(Σq² + 1e-6) (the kernel's L2 norm), so σ, the W_v scaling and the gate
/// scale α are computable by hand. Phase 2 runs one AdamW step, whose first update is lr·g/(|g| + ε) ≈ lr per
/// element (bias correction cancels β₁, β₂), so each group's learning rate is read off its update.
module TaylorCalibrate.Tests.Stages.MethodConstantsTests

open System
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

let private config (D: int) (H: int) (hd: int) : ModelConfig =
    { Family = ModelFamily.Llama; Dim = D; Hidden = 4 * D; Layers = 1; Heads = H; KvHeads = H; HeadDim = hd; Vocab = 8
      Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

let private silu (z: float) = z / (1.0 + exp -z)
let private sigmoid (z: float) = 1.0 / (1.0 + exp -z)
let private softplus (x: float) = max x 0.0 + log (1.0 + exp (-(abs x)))

/// Row r of an (out, in) matrix times x.
let private rowDot (w: float32[]) (inDim: int) (r: int) (x: float[]) = Seq.sum (seq { for i in 0 .. inDim - 1 -> float w[r * inDim + i] * x[i] })

/// Relative closeness in double.
let private near (tol: float) (expected: float) (actual: float) (what: string) =
    if not (abs (actual - expected) <= tol * max 1e-30 (abs expected)) then
        failtestf "%s: expected %.9g, got %.9g (relative tolerance %.1e)" what expected actual tol

// ---- Phase 1 -----------------------------------------------------------------------------------------

let private D1, H1, Hd1, B1 = 4, 4, 2, 3

/// A naive layer with positive W_q = W_k (so q, k are far from 0 and q̂ = k̂) and random W_v, W_b, W_a.
let private phase1Layer () : GdnWeights =
    let Q = H1 * Hd1
    let wqk = Rand.uniform 11 0.3 0.9 (Q * D1)
    { Wq = wqk; Wk = Array.copy wqk; Wv = Rand.normal 12 0.8 (Q * D1); Wg = Rand.normal 13 0.02 (Q * D1)
      Wa = Rand.normal 14 0.5 (H1 * D1); Wb = Rand.normal 15 0.5 (H1 * D1); ALog = Rand.uniform 16 0.5 2.0 H1
      DtBias = Rand.normal 17 1.0 H1; ONorm = Array.create Hd1 1f; Wo = Rand.normal 18 0.5 (D1 * Q) }

/// Chosen per head: mean distances (→ decay targets 5 (clamped), ln 2/2, 0.001 (clamped), ln 2/0.5),
/// entropies (→ concentration 1, 0.5, 0, 0.75 → β* 0.7, 0.5, 0.3, 0.6) and the least-squares gains the
/// context is built with (→ σ 10 (clamped), 2.5, 0.1 (clamped), 0.1 (clamped from a negative gain)).
let private meanDistance = [| 0.1; 2.0; 1e4; 0.5 |]
let private entropy = [| 1.0; 2.0; 3.0; 1.5 |]
let private gains = [| 20.0; 2.5; 0.05; -3.0 |]
let private expectedTarget = [| 5.0; log 2.0 / 2.0; 0.001; log 2.0 / 0.5 |]
let private expectedBeta = [| 0.7; 0.5; 0.3; 0.6 |]
let private expectedSigma = [| 10.0; 2.5; 0.1; 0.1 |]

/// x (B, 1, D) with positive entries, so silu(W_q x) is far from 0.
let private phase1X = Rand.uniform 19 0.5 1.5 (B1 * D1)
let private xOf (b: int) = Array.init D1 (fun i -> float phase1X[b * D1 + i])

/// W_b row h as Phase 1 must set it: (logit β*_h/√D)·row/mean|row|.
let private expectedWbRow (w: GdnWeights) (h: int) =
    let row = w.Wb[h * D1 .. (h + 1) * D1 - 1] |> Array.map float
    let meanAbs = row |> Array.averageBy abs
    let b = expectedBeta[h]
    row |> Array.map (fun v -> log (b / (1.0 - b)) / sqrt (float D1) * v / meanAbs)

/// The raw read-out O (B, 1, H, hd) of the T = 1 recurrence with the calibrated W_b: β·v·(q̂·k̂).
let private rawReadout (w: GdnWeights) =
    Array.init (B1 * H1 * Hd1) (fun idx ->
        let b, h, d = idx / (H1 * Hd1), (idx / Hd1) % H1, idx % Hd1
        let x = xOf b
        let wb = expectedWbRow w h
        let beta = sigmoid (Array.fold2 (fun acc a c -> acc + a * c) 0.0 wb x)
        let q = Array.init Hd1 (fun i -> silu (rowDot w.Wq D1 (h * Hd1 + i) x))
        let qq = q |> Array.sumBy (fun v -> v * v)
        beta * silu (rowDot w.Wv D1 (h * Hd1 + d) x) * (qq / (qq + 1e-6)))

let private phase1Trace (w: GdnWeights) : TeacherTrace.LayerTrace =
    let o = rawReadout w
    // C = gain_h · O per head, so the least-squares gain of head h is gain_h.
    let context = o |> Array.mapi (fun idx v -> float32 (gains[(idx / Hd1) % H1] * v))
    { Layer = 0; X = phase1X; Context = context; Output = Array.zeroCreate (B1 * D1)
      MeanDistance = meanDistance; Entropy = entropy }

let private runPhase1 () =
    let w = phase1Layer ()
    let trace = phase1Trace w
    let out, info = TaylorInit.apply TaylorInit.TaylorOptions.defaults (Backends.cpu.Get()) (config D1 H1 Hd1) trace B1 1 w
    w, trace, out, info

// ---- Phase 2 -----------------------------------------------------------------------------------------

let private D2, H2, Hd2, B2, T2 = 4, 2, 2, 2, 5

/// A random layer; column `zeroColumn` of every input projection holds `parked` (x is 0 there, so those
/// weights change nothing and get no gradient: only weight decay moves them).
let private phase2Layer (zeroColumn: int) (parked: float32) : GdnWeights =
    let Q = H2 * Hd2
    let park (a: float32[]) = a |> Array.mapi (fun i v -> if i % D2 = zeroColumn then parked else v)
    { Wq = park (Rand.normal 21 0.5 (Q * D2)); Wk = park (Rand.normal 22 0.5 (Q * D2)); Wv = park (Rand.normal 23 0.5 (Q * D2))
      Wg = park (Rand.normal 24 0.5 (Q * D2)); Wa = park (Rand.normal 25 0.5 (H2 * D2)); Wb = park (Rand.normal 26 0.5 (H2 * D2))
      ALog = Rand.normal 27 0.3 H2; DtBias = Rand.normal 28 0.5 H2; ONorm = Rand.uniform 29 0.5 1.5 Hd2
      Wo = Rand.normal 30 0.5 (D2 * Q) }

let private phase2Trace (x: float32[]) (target: float32[]) : TeacherTrace.LayerTrace =
    { Layer = 0; X = x; Context = Array.zeroCreate (B2 * T2 * H2 * Hd2); Output = target
      MeanDistance = Array.create H2 1.0; Entropy = Array.create H2 1.0 }

/// x (B, T, D) with column `zeroColumn` set to 0.
let private phase2X (zeroColumn: int) =
    Rand.normal 31 1.0 (B2 * T2 * D2) |> Array.mapi (fun i v -> if i % D2 = zeroColumn then 0f else v)

let private align (o: Align.AlignOptions) (w: GdnWeights) (trace: TeacherTrace.LayerTrace) =
    Align.alignLayer o (Backends.cpu.Get()) (config D2 H2 Hd2) trace B2 T2 w (fun _ _ -> ()) CancellationToken.None

/// (name, before, after, lr) of each trainable group, and the frozen ones.
let private groups (a: GdnWeights) (b: GdnWeights) =
    [ "q_proj", a.Wq, b.Wq, 1e-4; "k_proj", a.Wk, b.Wk, 1e-4; "v_proj", a.Wv, b.Wv, 1e-4
      "g_proj", a.Wg, b.Wg, 1e-3; "a_proj", a.Wa, b.Wa, 1e-3; "b_proj", a.Wb, b.Wb, 1e-3
      "A_log", a.ALog, b.ALog, 1e-3; "dt_bias", a.DtBias, b.DtBias, 1e-3 ]

[<Tests>]
let tests =
    testList "Stages.MethodConstants" [
        test "Phase 1 gates: A_log = 0, softplus(dt_bias) = clamp(ln 2/d̄, 0.001, 5), W_a untouched" {
            let w, _, out, info = runPhase1 ()
            Expect.equal out.ALog (Array.zeroCreate H1) "A_log ← 0"
            Expect.equal out.Wa w.Wa "W_a keeps its random values"
            for h in 0 .. H1 - 1 do
                near 1e-12 expectedTarget[h] info.TargetDecay[h] $"head {h}: target decay"
                // dt_bias is stored in fp32: softplus' ≤ 1, so |Δ softplus| ≤ |dt_bias|·2^-24 ≈ 4e-7 relative here.
                near 2e-6 expectedTarget[h] (softplus (float out.DtBias[h])) $"head {h}: softplus(dt_bias)"
        }

        test "Phase 1 write strength: β* = 0.3 + 0.4·concentration, W_b rows scaled to logit(β*)/√D" {
            let w, _, out, info = runPhase1 ()
            for h in 0 .. H1 - 1 do
                near 1e-12 expectedBeta[h] info.BetaTarget[h] $"head {h}: β*"
                let expected = expectedWbRow w h
                for i in 0 .. D1 - 1 do
                    // fp32 storage of a double product: 2^-24 relative, plus an absolute floor for the β* = 0.5 row (0).
                    if abs (float out.Wb[h * D1 + i] - expected[i]) > 1e-6 * abs expected[i] + 1e-7 then
                        failtestf "head %d, W_b[%d]: expected %.9g, got %.9g" h i expected[i] out.Wb[h * D1 + i]
            // The spread floor: entropies 1.0 and 1.0004 differ by less than 1e-3, so the second head's
            // concentration is 1 − 0.0004/0.001 = 0.6, not 0.
            let c = TaylorInit.concentration TaylorInit.TaylorOptions.defaults [| 1.0; 1.0004 |]
            near 1e-9 1.0 c[0] "most concentrated head"
            near 1e-9 0.6 c[1] "spread floored at 1e-3"
        }

        test "Phase 1 value scale: σ = least squares of C on O, clamped to [0.1, 10], multiplies W_v's head rows" {
            let w, _, out, info = runPhase1 ()
            for h in 0 .. H1 - 1 do
                // O from the fp32 kernel vs the double closed form: ~1e-7 relative per element.
                near 1e-5 gains[h] info.SigmaRaw[h] $"head {h}: unclamped gain"
                near 1e-5 expectedSigma[h] info.Sigma[h] $"head {h}: clamped σ"
                for r in h * Hd1 .. (h + 1) * Hd1 - 1 do
                    for i in 0 .. D1 - 1 do
                        near 1e-5 (expectedSigma[h] * float w.Wv[r * D1 + i]) (float out.Wv[r * D1 + i]) $"head {h}: W_v[{r},{i}]"
        }

        test "Phase 1 output gate: W_g = α·W_v with α = 0.01·rms_T/rms(silu(W_v x))" {
            let _, trace, out, info = runPhase1 ()
            let rmsT =
                trace.Context |> Array.chunkBySize Hd1
                |> Array.averageBy (fun v -> sqrt (v |> Array.averageBy (fun c -> float c * float c)))
            let values = [| for b in 0 .. B1 - 1 do for r in 0 .. H1 * Hd1 - 1 -> silu (rowDot out.Wv D1 r (xOf b)) |]
            let alpha = 0.01 * rmsT / sqrt (values |> Array.averageBy (fun v -> v * v))
            near 1e-5 alpha info.Alpha "α"
            for i in 0 .. out.Wg.Length - 1 do
                near 1e-5 (alpha * float out.Wv[i]) (float out.Wg[i]) $"W_g[{i}]"
        }

        test "naive init: dt = exp(U(ln 1e-3, ln 1e-1)), A ~ U(0, 16), fresh projections N(0, 0.02²)" {
            // 4000 heads: the extremes of 4000 uniform draws lie within 0.3 % of the range's ends (with this seed
            // and almost surely), and their means within 4 standard errors of the range's middle.
            let H, D = 4000, 2
            let c = { config D H 2 with KvHeads = H }
            let teacherLayer : LayerWeights =
                { AttnNorm = Array.create D 1f; Wq = Array.zeroCreate (c.QDim * D); Wk = Array.zeroCreate (c.KvDim * D)
                  Wv = Array.zeroCreate (c.KvDim * D); Wo = Array.zeroCreate (D * c.QDim); Bq = None; Bk = None; Bv = None
                  Bo = None; QNorm = None; KNorm = None; MlpNorm = Array.create D 1f; Gate = [||]; Up = [||]; Down = [||] }
            let g = Skeleton.gdnLayer GqaExpand.Heads 3 c 0 teacherLayer
            let logDt = g.DtBias |> Array.map (fun v -> log (softplus (float v)))
            near 3e-3 (log 1e-3) (Array.min logDt) "smallest ln dt"
            near 3e-3 (log 1e-1) (Array.max logDt) "largest ln dt"
            near 0.02 ((log 1e-3 + log 1e-1) / 2.0) (Array.average logDt) "mean ln dt (log-uniform)"
            let a = g.ALog |> Array.map (fun v -> exp (float v))
            Expect.isLessThan (Array.min a) 0.05 "A reaches down to 0"
            near 3e-3 16.0 (Array.max a) "largest A"
            near 0.04 8.0 (Array.average a) "mean A (uniform)"
            let std (x: float32[]) = sqrt (x |> Array.averageBy (fun v -> float v * float v))
            for name, x in [ "a_proj", g.Wa; "b_proj", g.Wb; "g_proj", g.Wg ] do
                near 0.05 0.02 (std x) $"{name} standard deviation"
            Expect.equal g.ONorm (Array.create 2 1f) "o_norm = 1"
        }

        test "Phase 2, one step: lr 1e-4 for q/k/v, 1e-3 for the gates, weight decay 0.01, o_proj and o_norm frozen" {
            let zeroColumn, parked = 3, 60f
            let w = phase2Layer zeroColumn parked
            let x = phase2X zeroColumn
            let trace = phase2Trace x (Rand.normal 32 1.0 (B2 * T2 * D2))
            let out, r = align { Align.AlignOptions.defaults with Steps = 1 } w trace
            Expect.isLessThan r.Losses[1] r.Losses[0] "precondition: the step lowered the loss, so θ₁ is kept"
            Expect.equal r.BestStep 1 "θ₁ restored"
            Expect.equal out.Wo w.Wo "o_proj frozen"
            Expect.equal out.ONorm w.ONorm "o_norm frozen"
            for name, before, after, lr in groups w out do
                let steps =
                    [| for i in 0 .. before.Length - 1 do
                         let isParked = before.Length > H2 && i % D2 = zeroColumn
                         if not isParked then
                             // AdamW: θ₁ = θ₀(1 − lr·wd) − lr·g/(|g| + ε); |g| ≫ ε makes the second term ±lr.
                             yield abs (float after[i] - float before[i] * (1.0 - lr * 0.01)) / lr |]
                // fp32: |θ| < 2 has an ulp ≤ 2.4e-7, i.e. ≤ 2.4e-3 of lr = 1e-4.
                Expect.isLessThanOrEqual (Array.max steps) 1.003 $"{name}: no element moves by more than lr = {lr}"
                let median = (Array.sort steps)[steps.Length / 2]
                near 3e-3 1.0 median $"{name}: the typical element moves by lr = {lr}"
                if before.Length > H2 then
                    for i in zeroColumn .. D2 .. before.Length - 1 do
                        // No gradient: only decoupled weight decay, θ₁ = 60·(1 − lr·0.01): 16 ulp (lr 1e-4) or
                        // 160 ulp (lr 1e-3) below 60, so a tolerance of 2 ulp (7.6e-6) pins wd = 0.01.
                        let expected = float parked * (1.0 - lr * 0.01)
                        if abs (float after[i] - expected) > 7.7e-6 then
                            failtestf "%s[%d] (no gradient): expected %.9g after weight decay 0.01 at lr %g, got %.9g" name i expected lr after[i]
        }

        test "Phase 2 clips the gradient norm at 1.0" {
            // Column 2 of x is 1e-7·column 1, so the gradients of every projection's column 2 are 1e-7 of
            // column 1's: near Adam's ε = 1e-8, where the first update lr·a/(a + ε) measures a = |g| itself.
            // The target is y₀ + S·R (y₀ the layer's own output), so the gradient is exactly S·g_R. Run A
            // (‖g‖ = 0.5, unclipped) measures a_A = 0.5·|g_R|/‖g_R‖ per element; run B (‖g‖ = 4) must see
            // a_B = 1.0·|g_R|/‖g_R‖ = a_A/0.5 when clipped at 1.0 (4·|g_R|/‖g_R‖ unclipped). A small ‖g‖ keeps
            // the loss small enough that one step of lr 1e-4 lowers it by more than fp32 resolves.
            let be = Backends.cpu.Get()
            let c = config D2 H2 Hd2
            let x = Rand.normal 41 1.0 (B2 * T2 * D2)
            for b in 0 .. B2 * T2 - 1 do x[b * D2 + 2] <- 1e-7f * x[b * D2 + 1]
            // Column 2 of every projection is 0: no weight decay there, and θ₁ = −update exactly.
            let w = phase2Layer 2 0f
            let y0 = Align.layerOutput be c (phase2Trace x (Array.zeroCreate (B2 * T2 * D2))) B2 T2 w
            let R = Rand.normal 43 1.0 y0.Length
            let lr = 1e-4f
            let o = { Align.AlignOptions.defaults with Steps = 1; LrProjections = lr; LrGates = lr }
            let run (s: float) =
                let target = Array.map2 (fun (a: float32) (r: float32) -> a + float32 (s * float r)) y0 R
                let out, r = align o w (phase2Trace x target)
                Expect.equal r.BestStep 1 $"precondition (S = {s}): the step lowered the loss"
                out, r.GradNorms[0]
            let _, g1 = run 1.0
            let outA, gA = run (0.5 / g1)
            let outB, gB = run (4.0 / g1)
            near 1e-4 0.5 gA "run A: gradient norm 0.5"
            near 1e-4 4.0 gB "run B: gradient norm 4"
            let lr = float lr
            let mutable checkedElements = 0
            for (name, _, a, _), (_, _, b, _) in List.zip (groups w outA) (groups w outB) do
                if a.Length > H2 then
                    for i in 2 .. D2 .. a.Length - 1 do
                        let uA, uB = abs (float a[i]), abs (float b[i])
                        if uA > 0.05 * lr && uA < 0.95 * lr then
                            let aA = 1e-8 * uA / (lr - uA)
                            let aB = 1.0 * aA / gA
                            near 0.02 (lr * aB / (aB + 1e-8)) uB $"{name}[{i}]: clipped update"
                            checkedElements <- checkedElements + 1
            Expect.isGreaterThanOrEqual checkedElements 4 "precondition: elements near ε to measure the clip"
        }

        test "Phase 2 runs 300 steps by default" {
            let w = phase2Layer 3 0.5f
            let trace = phase2Trace (phase2X 3) (Rand.normal 33 1.0 (B2 * T2 * D2))
            let _, r = align Align.AlignOptions.defaults w trace
            Expect.equal r.Losses.Length 301 "θ₀..θ₃₀₀ evaluated"
            Expect.equal r.GradNorms.Length 300 "300 updates"
        }
    ]
