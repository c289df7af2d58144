/// calibrate-plus's pieces: the ridge normal equations recover a known linear map; the o_proj refit recovers
/// the o_proj of a GDN layer that produced the target (the layer's output is linear in W_o); the whole
/// per-layer procedure never ends above the naive layer's held-out loss and the weights it returns reproduce
/// the held-out loss it reports (the best state is restored exactly); a plateau of the held-out loss backs the
/// learning rates off instead of ending a hopeless alignment at its start, and after a plateau the naive start
/// competes; the calibration split holds out whole
/// trailing documents and leaves the fit part's leading tokens as the published batch.
module TaylorCalibrate.Tests.Stages.CalibratePlusTests

open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

let private config : ModelConfig =
    { Family = ModelFamily.Llama; Dim = 16; Hidden = 32; Layers = 2; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 32
      Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

/// A random GDN layer (gates in a sensible range) from `seed`.
let private randomLayer (seed: int) : GdnWeights =
    let D, H, hd = config.Dim, config.Heads, config.HeadDim
    let Q = H * hd
    { Wq = Rand.normal seed 0.3 (Q * D); Wk = Rand.normal (seed + 1) 0.3 (Q * D); Wv = Rand.normal (seed + 2) 0.3 (Q * D)
      Wg = Rand.normal (seed + 3) 0.3 (Q * D); Wa = Rand.normal (seed + 4) 0.1 (H * D); Wb = Rand.normal (seed + 5) 0.3 (H * D)
      ALog = Rand.uniform (seed + 6) -1.0 0.5 H; DtBias = Rand.uniform (seed + 7) -2.0 0.0 H; ONorm = Array.create hd 1f
      Wo = Rand.normal (seed + 8) 0.3 (D * Q) }

/// A layer set whose target is `teacher`'s own output on random inputs: B chunks of T tokens.
let private setFrom (be: IBackend) (teacher: GdnWeights) (seed: int) (B: int) (T: int) : CalibratePlus.LayerSet =
    let x = Rand.normal seed 1.0 (B * T * config.Dim)
    let trace : TeacherTrace.LayerTrace =
        { Layer = 1; X = x; Context = Array.zeroCreate (B * T * config.QDim); Output = [||]
          MeanDistance = Array.create config.Heads 4.0; Entropy = Array.init config.Heads float }
    let trace = { trace with Output = Align.layerOutput be config trace B T teacher }
    { Trace = trace; B = B }

/// One id per whitespace-separated word "w{i}", after a document-start id 0.
let private wordTokenizer =
    { new ITokenizer with
        member _.VocabSize = 201
        member _.DocumentStart = Some 0
        member _.Encode(s, start) =
            let ids = s.Split(' ', System.StringSplitOptions.RemoveEmptyEntries) |> Array.map (fun w -> 1 + int (w.Substring 1))
            if start then Array.append [| 0 |] ids else ids
        member _.Decode ids = ""
        member _.Piece id = ""
        member _.Description = "words" }

let private ignore2 _ _ = ()

let private mse (a: float32[]) (b: float32[]) = Array.fold2 (fun s (x: float32) (y: float32) -> s + float (x - y) ** 2.0) 0.0 a b / float a.Length

[<Tests>]
let tests =
    testList "Stages.CalibratePlus" [
        test "ridge normal equations recover a known map (blocks and rows agree)" {
            // Y = X Wᵀ exactly; with λ = 1e-12·mean diag the solution is W up to rounding of a
            // well-conditioned 6×6 double solve (≈1e-10), far below the 1e-8 bound.
            let n, inputs, outputs = 200, 6, 3
            let x = Rand.normal 1 1.0 (n * inputs) |> Array.map float
            let w = Rand.normal 2 1.0 (outputs * inputs) |> Array.map float
            let y = Array.init (n * outputs) (fun k -> let r, o = k / outputs, k % outputs in Array.init inputs (fun i -> x[r * inputs + i] * w[o * inputs + i]) |> Array.sum)
            let byRows = Refit.NormalEquations(inputs, outputs)
            byRows.AddRows(x, y, n)
            let solved = byRows.Solve 1e-12
            for k in 0 .. w.Length - 1 do Expect.floatClose { absolute = 1e-8; relative = 1e-8 } solved[k] w[k] $"W[{k}]"
            // A large ridge shrinks the solution towards 0.
            let shrunk = byRows.Solve 10.0
            Expect.isLessThan (Array.sumBy (fun v -> v * v) shrunk) (Array.sumBy (fun v -> v * v) w) "ridge shrinks"
        }

        test "the o_proj refit recovers the o_proj that produced the target" {
            let be = Backends.cpu.Get()
            let teacher = randomLayer 10
            let fit = setFrom be teacher 20 4 24
            let dev = setFrom be teacher 30 2 24
            // The student is the teacher with a random o_proj: only the refit can fix it.
            let student = { teacher with Wo = Rand.normal 40 0.3 teacher.Wo.Length }
            let o = { CalibratePlus.PlusOptions.defaults with GuardedPhase1 = false; Steps = 0; Ridge = 1e-9 }
            let w, r = CalibratePlus.run o TaylorInit.TaylorOptions.defaults be config fit (Some dev) 24 0 student ignore2 CancellationToken.None
            // fp32 forward and per-window fp32 Gram (≤ 96 rows) against an exact target: the residual is
            // rounding, ~1e-6 relative to the target's mean square, not the O(1) error of a random W_o.
            let targetMs = dev.Trace.Output |> Array.averageBy (fun v -> float v * float v)
            Expect.isLessThan r.DevClosedForm (1e-4 * targetMs) "refit fits the teacher's output"
            Expect.isGreaterThan r.DevNaive (0.1 * targetMs) "the random o_proj was far off"
            for k in 0 .. w.Wo.Length - 1 do Expect.floatClose { absolute = 1e-3; relative = 1e-2 } (float w.Wo[k]) (float teacher.Wo[k]) $"W_o[{k}]"
        }

        test "calibrate-plus never ends above the naive layer's dev loss and returns the state it reports" {
            let be = Backends.cpu.Get()
            let teacher = randomLayer 50
            let fit = setFrom be teacher 60 6 24
            let dev = setFrom be teacher 70 2 24
            let naive = randomLayer 80
            let o = { CalibratePlus.PlusOptions.defaults with Steps = 30; MiniBatch = 2; EvalEvery = 5; Patience = 0 }
            let w, r = CalibratePlus.run o TaylorInit.TaylorOptions.defaults be config fit (Some dev) 24 0 naive ignore2 CancellationToken.None
            Expect.isLessThanOrEqual r.DevClosedForm r.DevNaive "closed form is guarded"
            Expect.isLessThanOrEqual r.DevFinal r.DevClosedForm "alignment and final refit are guarded"
            Expect.isLessThan r.DevFinal r.DevNaive "it learned something"
            // Recomputing the dev loss of the returned weights gives the reported one: fp32 windowed sums
            // vs one pass, a few ulps of a ~1e-1 quantity.
            let again = mse (Align.layerOutput be config dev.Trace dev.B 24 w) dev.Trace.Output
            Expect.floatClose { absolute = 1e-7; relative = 1e-4 } again r.DevFinal "reported dev loss is the returned state's"
        }

        test "a plateau backs the learning rates off and the alignment then improves on its start" {
            let be = Backends.cpu.Get()
            let teacher = randomLayer 90
            let fit = setFrom be teacher 100 2 24
            let dev = setFrom be teacher 110 2 24
            // The start is the teacher with its projections nudged by 0.01: close to the dev minimum (0). Rates of
            // 0.5 move every weight by ~0.5 per AdamW step (the step is lr·m̂/√v̂ ≈ lr), far past that minimum, so no
            // evaluation after the start can beat it; a factor of 1e-3 brings the rates to 5e-4, where AdamW descends.
            let nudge seed (w: float32[]) = Array.map2 (+) w (Rand.normal seed 0.01 w.Length)
            let naive = { teacher with Wq = nudge 121 teacher.Wq; Wk = nudge 122 teacher.Wk; Wv = nudge 123 teacher.Wv; Wo = nudge 124 teacher.Wo }
            let o = { CalibratePlus.PlusOptions.defaults with
                        GuardedPhase1 = false; RefitOutput = false; Steps = 60; MiniBatch = 2; EvalEvery = 5; Patience = 2
                        LrProjections = 0.5f; LrGates = 0.5f; LrOutput = 0.5f; BackoffFactor = 1e-3f }
            let _, stopped = CalibratePlus.run { o with Backoffs = 0 } TaylorInit.TaylorOptions.defaults be config fit (Some dev) 24 0 naive ignore2 CancellationToken.None
            Expect.equal stopped.Backoffs 0 "no backoff allowed"
            Expect.equal stopped.Alignment.BestStep 0 "the huge rates never beat the start"
            Expect.equal stopped.Alignment.Losses.Length 10 "stopped at the first plateau: 2 evaluations after step 0"
            let w, r = CalibratePlus.run o TaylorInit.TaylorOptions.defaults be config fit (Some dev) 24 0 naive ignore2 CancellationToken.None
            Expect.isGreaterThanOrEqual r.Backoffs 1 "backed off"
            Expect.isGreaterThan r.Alignment.BestStep 0 "a state after the start was chosen"
            Expect.isLessThan r.DevFinal r.DevClosedForm "the backed-off alignment lowered the dev loss"
            Expect.isLessThanOrEqual r.Alignment.Losses.Length o.Steps "all within the step budget"
            // fp32 windowed sums vs one pass, a few ulps of a ~1e-1 quantity.
            let again = mse (Align.layerOutput be config dev.Trace dev.B 24 w) dev.Trace.Output
            Expect.floatClose { absolute = 1e-7; relative = 1e-4 } again r.DevFinal "the best state is the one returned"
        }

        test "after a plateau the naive start competes and the lower held-out loss wins" {
            let be = Backends.cpu.Get()
            let teacher = randomLayer 130
            let fit = setFrom be teacher 140 6 24
            let dev = setFrom be teacher 150 2 24
            // As above: a nudged teacher (W_o nudged by 0.1) and rates that overshoot until the backoff. The o_proj
            // refit on 6 × 24 rows undoes most of W_o's nudge, so the closed form differs from the naive layer and
            // both starts are aligned.
            let nudge seed (w: float32[]) = Array.map2 (+) w (Rand.normal seed 0.01 w.Length)
            let naive = { teacher with Wq = nudge 161 teacher.Wq; Wk = nudge 162 teacher.Wk; Wv = nudge 163 teacher.Wv; Wo = Array.map2 (+) teacher.Wo (Rand.normal 164 0.1 teacher.Wo.Length) }
            let o = { CalibratePlus.PlusOptions.defaults with
                        GuardedPhase1 = false; Steps = 60; MiniBatch = 2; EvalEvery = 5; Patience = 2
                        LrProjections = 0.5f; LrGates = 0.5f; LrOutput = 0.5f; BackoffFactor = 1e-3f }
            let run o = CalibratePlus.run o TaylorInit.TaylorOptions.defaults be config fit (Some dev) 24 0 naive ignore2 CancellationToken.None
            let _, closedOnly = run { o with NaiveFallback = false }
            Expect.isLessThan closedOnly.DevClosedForm closedOnly.DevNaive "the refit changed the start"
            Expect.isGreaterThan closedOnly.Backoffs 0 "the closed-form alignment hit a plateau"
            // The same alignment from the naive layer (the refit flag only changes the closed form and the final refit).
            let _, naiveOnly = run { o with RefitOutput = false; NaiveFallback = false }
            Expect.equal naiveOnly.DevClosedForm naiveOnly.DevNaive "no closed form"
            let w, r = run o
            let expected = min closedOnly.Alignment.BestLoss naiveOnly.Alignment.BestLoss
            Expect.equal r.Alignment.BestLoss expected "the better of the two alignments (same chunk order, same backend)"
            let expectedStart =
                if naiveOnly.Alignment.BestLoss < closedOnly.Alignment.BestLoss then CalibratePlus.AlignmentStart.Naive
                else CalibratePlus.AlignmentStart.ClosedForm
            Expect.equal r.Start expectedStart "the start is named"
            // fp32 windowed sums vs one pass, a few ulps of a ~1e-3 quantity.
            let again = mse (Align.layerOutput be config dev.Trace dev.B 24 w) dev.Trace.Output
            Expect.floatClose { absolute = 1e-8; relative = 1e-4 } again r.DevFinal "the returned state is the reported one"
        }

        test "the calibration split holds out trailing documents and keeps the published fit batch" {
            let tok = wordTokenizer
            let docs = [ for d in 0 .. 39 -> String.concat " " [ for k in 0 .. 30 -> $"w{(d * 7 + k) % 200}" ] ]
            let opts = { Calibration.CalibrationOptions.defaults with Batch = 2; Length = 32 }
            let published = Calibration.build opts tok "docs" docs None |> Result.defaultWith (fun e -> failtestf "%A" e)
            let split = Calibration.buildSplit opts 100 tok "docs" docs None |> Result.defaultWith (fun e -> failtestf "%A" e)
            Expect.equal split.Fit.Tokens published.Tokens "fit batch = published batch"
            let dev = Expect.wantSome split.Dev "dev part"
            Expect.equal dev.B 4 "ceil(100/32) chunks"
            Expect.equal (split.Fit.Documents + dev.Documents) docs.Length "documents partitioned"
            let devStream = Corpus.tokenStream tok (docs |> List.skip split.Fit.Documents)
            Expect.equal dev.Tokens devStream[.. dev.Tokens.Length - 1] "dev = tokens of the trailing documents"
        }
    ]
