/// The calibrate-plus initialisation of one GDN layer: a closed-form phase that is checked against held-out
/// calibration text before it is kept, then alignment on minibatches of a larger calibration set with the
/// best state chosen on that held-out text (docs/method.md §5.5 states the recipe and its constants).
///   1. Guarded Phase 1: each Phase 1 component of docs/method.md §5.2 (gates from attention distance/entropy, the
///      OLS value scale, the small output gate) is kept only if it lowers the layer's dev loss.
///   2. o_proj ridge refit: given everything before it, y = W_o·u is linear in W_o, with u the normed, gated
///      GDN read-out (B·T, H·hd); W_o solves the ridge normal equations on the fit set (Refit.fs).
///   3. Alignment: AdamW (Training/AdamW.fs, Trainer.step, groups from `rules`) on minibatches of T-token chunks of the fit set, loss mean((y − Y)²) after o_proj as
///      in docs/method.md §5.3, optionally training o_proj and o_norm too; the dev loss is measured every few steps,
///      the parameters with the lowest dev loss are restored. After `Patience` evaluations without improvement
///      the learning rates back off: the best state is restored and training goes on from it with every rate
///      times `BackoffFactor` (fresh AdamW moments), at most `Backoffs` times; the next plateau stops it. All
///      of it within `Steps` steps. On a large fit set the dev loss falls to the last step and no backoff happens;
///      on a tiny one (a few chunks, the whole set in every minibatch) the first rates overfit within the first
///      evaluation interval and the backoff is what lets the alignment help at all.
///      If that alignment hit a plateau, the naive layer is aligned the same way as well and the start whose
///      alignment reached the lower dev loss is kept (the closed form can be a start the alignment cannot
///      improve on held-out text when the fit set is a few chunks).
///   4. A final o_proj refit, kept only if it lowers the dev loss.
/// The fit and dev sets are teacher traces of disjoint documents (Calibration.buildSplit); without a dev set
/// the fit set stands in for it (no held-out selection).
module TaylorCalibrate.Pipeline.Stages.CalibratePlus

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages.TeacherTrace
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Training.ParameterGroups

/// Every constant of calibrate-plus.
type PlusOptions =
    { /// Try the Phase 1 components and keep those that lower the dev loss.
      GuardedPhase1: bool
      /// Candidate gates with W_a = 0 (the decay target then holds exactly) and W_b along the mean input
      /// direction (so β's level follows the target although b_proj has no bias).
      ExactGates: bool
      /// Ridge refit of o_proj before and after alignment.
      RefitOutput: bool
      /// λ relative to the mean diagonal of the Gram matrix.
      Ridge: float
      Steps: int
      /// T-token chunks per alignment step.
      MiniBatch: int
      /// Dev loss every this many steps.
      EvalEvery: int
      /// A plateau is this many dev evaluations without improvement (0: never; run all steps).
      Patience: int
      /// Learning-rate reductions on a plateau before the next one stops the alignment (0: stop at the first).
      Backoffs: int
      /// Every learning rate is multiplied by this at each backoff.
      BackoffFactor: float32
      /// When the alignment from the closed form hit a plateau, also align the naive layer and keep the
      /// start with the lower dev loss.
      NaiveFallback: bool
      LrProjections: float32
      LrGates: float32
      /// o_proj and o_norm; 0 keeps them frozen as in docs/method.md §5.3.
      LrOutput: float32
      WeightDecay: float32
      Beta1: float32
      Beta2: float32
      Epsilon: float32
      ClipNorm: float32 }

module PlusOptions =
    let defaults =
        { GuardedPhase1 = true; ExactGates = false; RefitOutput = true; Ridge = 1e-3; Steps = 600; MiniBatch = 4
          EvalEvery = 25; Patience = 6; Backoffs = 2; BackoffFactor = 0.3f; NaiveFallback = true; LrProjections = 3e-4f; LrGates = 3e-3f; LrOutput = 1e-3f; WeightDecay = 0.01f
          Beta1 = 0.9f; Beta2 = 0.999f; Epsilon = 1e-8f; ClipNorm = 1.0f }

/// Where an alignment started: the guarded closed form, or the naive layer (the fallback).
[<RequireQualifiedAccess>]
type AlignmentStart =
    | ClosedForm
    | Naive

/// What calibrate-plus did to one layer.
type PlusResult =
    { /// Phase 1 components kept by the guard ("gates", "value-scale", "output-gate").
      Phase1Kept: string list
      Phase1: TaylorInit.Phase1Info option
      /// Dev loss of the naive layer, after the guarded Phase 1 and refit, and of the final layer.
      DevNaive: float
      DevClosedForm: float
      DevFinal: float
      /// Whether the final refit was kept.
      FinalRefitKept: bool
      /// (step, dev loss) of every evaluation.
      DevLosses: (int * float) list
      /// Learning-rate backoffs the alignment took.
      Backoffs: int
      /// Where the returned alignment started.
      Start: AlignmentStart
      /// Minibatch losses per step, best dev loss and its step, gradient norms (the report's alignment columns).
      Alignment: Align.AlignResult }

/// Chunks [b0, b0 + nb) of a (B, T, ...) array whose rows per chunk are `perChunk` floats.
let private chunkSlice (a: float32[]) (perChunk: int) (b0: int) (nb: int) = ReadOnlySpan<float32>(a, b0 * perChunk, nb * perChunk)

/// The first nb chunks of a layer trace (Phase 1 runs on a bounded batch).
let private headTrace (tr: LayerTrace) (T: int) (D: int) (Q: int) (nb: int) =
    { tr with X = tr.X[.. nb * T * D - 1]; Context = tr.Context[.. nb * T * Q - 1]; Output = tr.Output[.. nb * T * D - 1] }

/// Device buffers for windows of up to `window` chunks: x, y, target and the read-out u per window size,
/// the layer's scratch and saved-activation arena, and the refit's Gram blocks.
type private Windows(be: IBackend, dims: GdnDims, T: int, window: int) =
    let owner = new TensorOwner(be)
    let scratch = new Scratch(be)
    let arena = new Arena(be)
    let cache = Dictionary<int, Tensor * Tensor * Tensor * Tensor>()
    let scalar = owner.Allocate [| 1 |]
    let gram = owner.Allocate [| dims.Q; dims.Q |]
    let cross = owner.Allocate [| dims.Q; dims.D |]
    member _.Window = window
    member _.Scalar = scalar
    member _.Gram = gram
    member _.Cross = cross
    member _.Scratch = scratch
    /// (x, y, target) (nb, T, D) and u (nb, T, H, Hd).
    member _.Get(nb: int) =
        match cache.TryGetValue nb with
        | true, v -> v
        | _ ->
            let v = owner.Allocate [| nb; T; dims.D |], owner.Allocate [| nb; T; dims.D |], owner.Allocate [| nb; T; dims.D |],
                    owner.Allocate [| nb; T; dims.H; dims.Hd |]
            cache[nb] <- v
            v
    /// y = the layer on x; the arena is reset first, so the saved activations live until the next call.
    member _.Forward(p: GdnParams, x: Tensor, y: Tensor) : GdnSaved =
        arena.Reset()
        Gdn.forward be scratch arena p x y
    /// Runs f on each window of the trace after uploading its x and target.
    member w.ForEach(tr: LayerTrace, B: int, f: int -> Tensor -> Tensor -> Tensor -> Tensor -> unit) =
        let per = T * dims.D
        for b0 in 0 .. window .. B - 1 do
            let nb = min window (B - b0)
            let x, y, target, u = w.Get nb
            be.Upload(x, chunkSlice tr.X per b0 nb)
            be.Upload(target, chunkSlice tr.Output per b0 nb)
            f nb x y target u
    interface IDisposable with
        member _.Dispose() =
            (arena :> IDisposable).Dispose()
            (scratch :> IDisposable).Dispose()
            (owner :> IDisposable).Dispose()

/// One calibration set of a layer: its trace and number of chunks.
type LayerSet = { Trace: LayerTrace; B: int }

/// mean((GDN(x) − Y)²) over the set.
let private mse (be: IBackend) (win: Windows) (p: GdnParams) (set: LayerSet) =
    let mutable sum = 0.0
    let mutable n = 0L
    win.ForEach(set.Trace, set.B, fun _ x y target _ ->
        win.Forward(p, x, y) |> ignore
        be.Axpy(-1f, target, y)
        be.Reduce(ReduceOp.SumOfSquares, y, win.Scalar)
        sum <- sum + float (win.Scalar.ToArray()[0])
        n <- n + y.Count)
    sum / float n

/// Replaces p's o_proj by the ridge solution of Y ≈ W_o·u on the set.
let private refitOutput (be: IBackend) (win: Windows) (ridge: float) (p: GdnParams) (set: LayerSet) =
    let dims = p.Dims
    let ne = Refit.NormalEquations(dims.Q, dims.D)
    win.ForEach(set.Trace, set.B, fun _ x y target u ->
        let saved = win.Forward(p, x, y)
        // u = RMSNorm(o)·w ⊙ silu(W_g x) (N, Q), the input of o_proj.
        be.Mul(saved.On, saved.Ga, u)
        let N = x.Shape[0] * x.Shape[1]
        // (Q, Q) = uᵀu and (Q, D) = uᵀY; fp32 within one window, summed in double.
        be.Gemm(u, u, win.Gram, GemmSpec(dims.Q, dims.Q, N, TransA = true))
        be.Gemm(u, target, win.Cross, GemmSpec(dims.Q, dims.D, N, TransA = true))
        ne.Add(win.Gram.ToArray(), win.Cross.ToArray(), N))
    let wo = ne.Solve ridge |> Array.map float32
    be.Upload(p.Wo, ReadOnlySpan<float32>(wo))

/// Dev loss of weights w after an optional o_proj refit on the fit set; returns the loss and the weights.
let private score (o: PlusOptions) (be: IBackend) (win: Windows) (dims: GdnDims) (fit: LayerSet) (dev: LayerSet) (w: GdnWeights) =
    use owner = new TensorOwner(be)
    let p = Gdn.upload owner dims w
    if o.RefitOutput then refitOutput be win o.Ridge p fit
    mse be win p dev, Gdn.download p

/// Gates that hold their targets: W_a = 0 (softplus(dt_bias) is then the decay exactly) and each W_b row
/// along the mean input x̄ scaled so W_b·x̄ = logit(β*) (b_proj has no bias; x̄ stands in for one).
let private exactGates (c: ModelConfig) (tr: LayerTrace) (betaTargets: float[]) (w: GdnWeights) =
    let D = c.Dim
    let n = tr.X.Length / D
    let mean = Array.init D (fun i -> (Seq.init n (fun r -> float tr.X[r * D + i]) |> Seq.sum) / float n)
    let norm2 = mean |> Array.sumBy (fun v -> v * v) |> max 1e-12
    { w with
        Wa = Array.zeroCreate w.Wa.Length
        Wb = Array.init (c.Heads * D) (fun k -> float32 (TaylorInit.logit betaTargets[k / D] * mean[k % D] / norm2)) }

/// Guarded Phase 1 followed by the o_proj refit: the naive layer's dev loss, the (dev loss, weights) kept,
/// the kept component names and Phase 1's info.
let private closedForm (o: PlusOptions) (taylor: TaylorInit.TaylorOptions) (be: IBackend) (c: ModelConfig) (win: Windows)
                       (fit: LayerSet) (dev: LayerSet) (T: int) (naive: GdnWeights) =
    let dims = Gdn.dimsOf c
    // The refit is itself guarded: the naive layer as it is competes with its refitted self.
    let asIs = score { o with RefitOutput = false } be win dims fit dev naive
    let start =
        let refit = score o be win dims fit dev naive
        if fst refit < fst asIs then refit else asIs
    if not o.GuardedPhase1 then fst asIs, start, [], None
    else
    // Phase 1 as published on a bounded head of the fit set (its batch size, docs/method.md §5.1).
    let nb = min fit.B 16
    let full, info = TaylorInit.apply taylor be c (headTrace fit.Trace T c.Dim dims.Q nb) nb T naive
    let gates =
        let g = { naive with ALog = full.ALog; DtBias = full.DtBias; Wb = full.Wb }
        if o.ExactGates then exactGates c fit.Trace info.BetaTarget g else g
    let components : (string * (GdnWeights -> GdnWeights)) list =
        [ "gates", (fun w -> { w with ALog = gates.ALog; DtBias = gates.DtBias; Wa = gates.Wa; Wb = gates.Wb })
          "value-scale", (fun w -> { w with Wv = full.Wv })
          "output-gate", (fun w -> { w with Wg = full.Wg }) ]
    let (best, kept) =
        components |> List.fold (fun ((loss, w), kept) (name, applyTo) ->
            let candLoss, candW = score o be win dims fit dev (applyTo w)
            if candLoss < loss then (candLoss, candW), kept @ [ name ] else (loss, w), kept) (start, [])
    fst asIs, best, kept, (if kept.IsEmpty then None else Some info)

/// The parameter groups of calibrate-plus alignment: q/k/v_proj at LrProjections; A_log, dt_bias, a/b/g_proj
/// at LrGates; o_proj and o_norm at LrOutput, or frozen as in docs/method.md §5.3 when it is 0; every rate
/// times `scale` (1 at first, BackoffFactor^k after k backoffs).
let rulesScaled (o: PlusOptions) (scale: float32) : GroupRule list =
    let train lr = Train { LearningRate = lr * scale; WeightDecay = o.WeightDecay }
    [ { Group = "projections"
        Pattern = AnyOf [ EndsWith "q_proj.weight"; EndsWith "k_proj.weight"; EndsWith "v_proj.weight" ]
        Treatment = train o.LrProjections }
      { Group = "gates"
        Pattern =
          AnyOf [ EndsWith "A_log"; EndsWith "dt_bias"; EndsWith "a_proj.weight"; EndsWith "b_proj.weight"
                  EndsWith "g_proj.weight" ]
        Treatment = train o.LrGates }
      { Group = "output"
        Pattern = AnyOf [ EndsWith "o_proj.weight"; EndsWith "o_norm.weight" ]
        Treatment = if o.LrOutput > 0f then train o.LrOutput else Freeze } ]

/// The groups at the configured rates.
let rules (o: PlusOptions) : GroupRule list = rulesScaled o 1f

/// Alignment on minibatches of the fit set with dev-loss selection; returns the best weights.
let private align (o: PlusOptions) (be: IBackend) (c: ModelConfig) (win: Windows) (fit: LayerSet) (dev: LayerSet) (T: int)
                  (layer: int) (seed: int) (w: GdnWeights) (onStep: int -> float -> unit) (ct: CancellationToken) =
    let watch = Stopwatch.StartNew()
    let dims = Gdn.dimsOf c
    let mb = min o.MiniBatch fit.B
    use owner = new TensorOwner(be)
    let p = Gdn.upload owner dims w
    let dy = owner.Allocate [| mb; T; dims.D |]
    let x, y, target, _ = win.Get mb
    let parameters = Align.layerParameters owner layer p
    let settings =
        { Beta1 = o.Beta1; Beta2 = o.Beta2; Epsilon = o.Epsilon; ClipNorm = Some o.ClipNorm; Schedule = Schedule.Constant }
    let mutable optimizer = new AdamW(settings, rules o, parameters)
    use _ = { new IDisposable with member _.Dispose() = (optimizer :> IDisposable).Dispose() }
    let trained = optimizer.Trained |> List.map (fun t -> t.Parameter)
    let grads = Grads trained
    let trainable = trained |> List.map (fun q -> q.Value)
    let snapshot = trainable |> List.map (fun t -> owner.Allocate t.Shape)
    let n = float32 (mb * T * dims.D)
    let per = T * dims.D
    // Chunk order: a fresh permutation of the fit chunks per epoch, fixed by (seed, layer).
    let rng = Random(seed * 7_919 + layer * 104_729 + 17)
    let order = Queue<int>()
    let nextChunks () =
        Array.init mb (fun _ ->
            if order.Count = 0 then
                let perm = Array.init fit.B id
                rng.Shuffle perm
                for b in perm do order.Enqueue b
            order.Dequeue())
    let xs = Array.zeroCreate<float32> (mb * per)
    let ys = Array.zeroCreate<float32> (mb * per)
    let copyTo (snap: bool) = List.iter2 (fun (a: Tensor) (b: Tensor) -> if snap then be.Copy(a, 0L, b, 0L, a.Count) else be.Copy(b, 0L, a, 0L, b.Count)) trainable snapshot
    let losses = List<float>()
    let gradNorms = List<float>()
    let devLosses = List<int * float>()
    let mutable best = Double.PositiveInfinity
    let mutable bestStep = 0
    let mutable sinceBest = 0
    let evaluate step =
        let d = mse be win p dev
        devLosses.Add((step, d))
        if d < best then
            best <- d
            bestStep <- step
            sinceBest <- 0
            copyTo true
        else sinceBest <- sinceBest + 1
    let mutable s = 0
    let mutable stop = false
    let mutable backoffs = 0
    while s < o.Steps && not stop do
        ct.ThrowIfCancellationRequested()
        if s % o.EvalEvery = 0 then
            evaluate s
            if o.Patience > 0 && sinceBest >= o.Patience then
                if backoffs < o.Backoffs then
                    // Plateau: go on from the best state at lower rates; the old moments belong to the old rates.
                    backoffs <- backoffs + 1
                    copyTo false
                    (optimizer :> IDisposable).Dispose()
                    optimizer <- new AdamW(settings, rulesScaled o (pown o.BackoffFactor backoffs), parameters)
                    sinceBest <- 0
                else stop <- true
        if not stop then
            nextChunks () |> Array.iteri (fun i b ->
                Array.blit fit.Trace.X (b * per) xs (i * per) per
                Array.blit fit.Trace.Output (b * per) ys (i * per) per)
            be.Upload(x, ReadOnlySpan<float32>(xs))
            be.Upload(target, ReadOnlySpan<float32>(ys))
            // loss = mean (y − Y)² over the minibatch; dy = 2(y − Y)/n·weight.
            let report =
                Trainer.step optimizer 1 (fun micro ->
                    let saved = win.Forward(p, x, y)
                    be.Copy(y, 0L, dy, 0L, y.Count)
                    be.Axpy(-1f, target, dy)
                    be.Reduce(ReduceOp.SumOfSquares, dy, win.Scalar)
                    let loss = float (win.Scalar.ToArray()[0]) / float n
                    be.Scale(dy, 2f / n * micro.Weight, dy)
                    Gdn.backward be win.Scratch grads p saved dy None
                    loss)
            losses.Add report.Loss
            gradNorms.Add report.GradNorm
            onStep (s + 1) report.Loss
            s <- s + 1
    if not stop then evaluate s
    copyTo false
    let result : Align.AlignResult =
        { Layer = layer; Losses = losses.ToArray(); BestLoss = best; BestStep = bestStep; GradNorms = gradNorms.ToArray()
          Seconds = watch.Elapsed.TotalSeconds }
    Gdn.download p, result, List.ofSeq devLosses, backoffs

/// calibrate-plus on one naive layer with its fit and dev traces (B chunks of T tokens each).
let run (o: PlusOptions) (taylor: TaylorInit.TaylorOptions) (be: IBackend) (c: ModelConfig) (fit: LayerSet) (dev: LayerSet option)
        (T: int) (seed: int) (naive: GdnWeights) (onStep: int -> float -> unit) (ct: CancellationToken) : GdnWeights * PlusResult =
    let dims = Gdn.dimsOf c
    let dev = defaultArg dev fit
    use win = new Windows(be, dims, T, max 1 (min o.MiniBatch fit.B))
    let devNaive, (devClosed, closed), kept, info = closedForm o taylor be c win fit dev T naive
    let fromClosed =
        if o.Steps > 0 then align o be c win fit dev T fit.Trace.Layer seed closed onStep ct
        else
            closed,
            { Layer = fit.Trace.Layer; Losses = [||]; BestLoss = devClosed; BestStep = 0; GradNorms = [||]; Seconds = 0.0 },
            [], 0
    let (aligned, result, devLosses, backoffs), start =
        let _, r, _, b = fromClosed
        // A plateau from the closed-form start can mean that start is hard to train from (on a few fit chunks
        // Phase 1's small output gate and a refitted o_proj leave the alignment nothing to gain on held-out
        // text); then the naive layer, alignment-only's start, competes on the dev loss.
        if o.NaiveFallback && b > 0 && devClosed < devNaive then
            let (_, rn, _, _) as fromNaive = align o be c win fit dev T fit.Trace.Layer seed naive onStep ct
            if rn.BestLoss < r.BestLoss then fromNaive, AlignmentStart.Naive else fromClosed, AlignmentStart.ClosedForm
        else fromClosed, AlignmentStart.ClosedForm
    let kept, info = if start = AlignmentStart.Naive then [], None else kept, info
    let devAligned = if o.Steps > 0 then result.BestLoss else devClosed
    let final, devFinal, refitKept =
        if o.RefitOutput && o.Steps > 0 then
            let d, w = score o be win dims fit dev aligned
            if d < devAligned then w, d, true else aligned, devAligned, false
        else aligned, devAligned, false
    final,
    { Phase1Kept = kept; Phase1 = info; DevNaive = devNaive; DevClosedForm = devClosed; DevFinal = devFinal
      FinalRefitKept = refitKept; DevLosses = devLosses; Backoffs = backoffs; Start = start; Alignment = result }
