/// The calibrate-plus initialisation of one GDN layer: a closed-form phase that is checked against held-out
/// calibration text before it is kept, then alignment on minibatches of a larger calibration set with the
/// best state chosen on that held-out text.
///   1. Guarded Phase 1: each Phase 1 component of method.md §5.2 (gates from attention distance/entropy, the
///      OLS value scale, the small output gate) is kept only if it lowers the layer's dev loss.
///   2. o_proj ridge refit: given everything before it, y = W_o·u is linear in W_o, with u the normed, gated
///      GDN read-out (B·T, H·hd); W_o solves the ridge normal equations on the fit set (Refit.fs).
///   3. Alignment: AdamW on minibatches of T-token chunks of the fit set, loss mean((y − Y)²) after o_proj as
///      in method.md §5.3, optionally training o_proj and o_norm too; the dev loss is measured every few steps,
///      the parameters with the lowest dev loss are restored, and training stops after `Patience` evaluations
///      without improvement.
///   4. A final o_proj refit, kept only if it lowers the dev loss.
/// The fit and dev sets are teacher traces of disjoint documents (Calibration.buildSplit); without a dev set
/// the fit set stands in for it (no held-out selection).
module TaylorCalibrate.Pipeline.Stages.CalibratePlus

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages.TeacherTrace

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
      /// Stop after this many dev evaluations without improvement (0: run all steps).
      Patience: int
      LrProjections: float32
      LrGates: float32
      /// o_proj and o_norm; 0 keeps them frozen as in method.md §5.3.
      LrOutput: float32
      WeightDecay: float32
      Beta1: float32
      Beta2: float32
      Epsilon: float32
      ClipNorm: float32 }

module PlusOptions =
    let defaults =
        { GuardedPhase1 = true; ExactGates = false; RefitOutput = true; Ridge = 1e-3; Steps = 600; MiniBatch = 4
          EvalEvery = 25; Patience = 6; LrProjections = 3e-4f; LrGates = 3e-3f; LrOutput = 1e-3f; WeightDecay = 0.01f
          Beta1 = 0.9f; Beta2 = 0.999f; Epsilon = 1e-8f; ClipNorm = 1.0f }

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
      /// Minibatch losses per step, best dev loss and its step, gradient norms (the report's alignment columns).
      Alignment: Align.AlignResult }

/// Chunks [b0, b0 + nb) of a (B, T, ...) array whose rows per chunk are `perChunk` floats.
let private chunkSlice (a: float32[]) (perChunk: int) (b0: int) (nb: int) = ReadOnlySpan<float32>(a, b0 * perChunk, nb * perChunk)

/// The first nb chunks of a layer trace (Phase 1 runs on a bounded batch).
let private headTrace (tr: LayerTrace) (T: int) (D: int) (Q: int) (nb: int) =
    { tr with X = tr.X[.. nb * T * D - 1]; Context = tr.Context[.. nb * T * Q - 1]; Output = tr.Output[.. nb * T * D - 1] }

/// Device buffers for windows of up to `window` chunks: a workspace, x, y, target and a scalar per size.
type private Windows(be: IBackend, dims: GdnLayer.GdnDims, T: int, window: int) =
    let cache = Dictionary<int, GdnLayer.GdnWorkspace * Tensor * Tensor * Tensor>()
    let scalar = be.Allocate [| 1 |]
    let gram = be.Allocate [| dims.Q; dims.Q |]
    let cross = be.Allocate [| dims.Q; dims.D |]
    member _.Window = window
    member _.Scalar = scalar
    member _.Gram = gram
    member _.Cross = cross
    member _.Get(nb: int) =
        match cache.TryGetValue nb with
        | true, v -> v
        | _ ->
            let v = new GdnLayer.GdnWorkspace(be, dims, nb, T), be.Allocate [| nb; T; dims.D |], be.Allocate [| nb; T; dims.D |], be.Allocate [| nb; T; dims.D |]
            cache[nb] <- v
            v
    /// Runs f on each window of the trace after uploading its x and target.
    member w.ForEach(tr: LayerTrace, B: int, f: int -> GdnLayer.GdnWorkspace -> Tensor -> Tensor -> Tensor -> unit) =
        let per = T * dims.D
        for b0 in 0 .. window .. B - 1 do
            let nb = min window (B - b0)
            let ws, x, y, target = w.Get nb
            be.Upload(x, chunkSlice tr.X per b0 nb)
            be.Upload(target, chunkSlice tr.Output per b0 nb)
            f nb ws x y target
    interface IDisposable with
        member _.Dispose() =
            for KeyValue(_, (ws, x, y, t)) in cache do
                (ws :> IDisposable).Dispose()
                x.Dispose()
                y.Dispose()
                t.Dispose()
            scalar.Dispose()
            gram.Dispose()
            cross.Dispose()

/// One calibration set of a layer: its trace and number of chunks.
type LayerSet = { Trace: LayerTrace; B: int }

/// mean((GDN(x) − Y)²) over the set.
let private mse (be: IBackend) (win: Windows) (p: GdnLayer.DeviceGdn) (set: LayerSet) =
    let mutable sum = 0.0
    let mutable n = 0L
    win.ForEach(set.Trace, set.B, fun _ ws x y target ->
        GdnLayer.forward p ws x y
        be.Axpy(-1f, target, y)
        be.Reduce(ReduceOp.SumOfSquares, y, win.Scalar)
        sum <- sum + float (win.Scalar.ToArray()[0])
        n <- n + y.Count)
    sum / float n

/// Replaces p's o_proj by the ridge solution of Y ≈ W_o·u on the set.
let private refitOutput (be: IBackend) (win: Windows) (ridge: float) (p: GdnLayer.DeviceGdn) (set: LayerSet) =
    let dims = p.Dims
    let ne = Refit.NormalEquations(dims.Q, dims.D)
    win.ForEach(set.Trace, set.B, fun _ ws x y target ->
        GdnLayer.forward p ws x y
        let N = ws.N
        // (Q, Q) = uᵀu and (Q, D) = uᵀY; fp32 within one window, summed in double.
        be.Gemm(ws.U, ws.U, win.Gram, GemmSpec(dims.Q, dims.Q, N, TransA = true))
        be.Gemm(ws.U, target, win.Cross, GemmSpec(dims.Q, dims.D, N, TransA = true))
        ne.Add(win.Gram.ToArray(), win.Cross.ToArray(), N))
    let wo = ne.Solve ridge |> Array.map float32
    be.Upload(p.Wo, ReadOnlySpan<float32>(wo))

/// Dev loss of weights w after an optional o_proj refit on the fit set; returns the loss and the weights.
let private score (o: PlusOptions) (be: IBackend) (win: Windows) (dims: GdnLayer.GdnDims) (fit: LayerSet) (dev: LayerSet) (w: GdnWeights) =
    use p = new GdnLayer.DeviceGdn(be, dims, w)
    if o.RefitOutput then refitOutput be win o.Ridge p fit
    mse be win p dev, p.ToWeights()

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
    let dims : GdnLayer.GdnDims = { D = c.Dim; H = c.Heads; Hd = c.HeadDim }
    // The refit is itself guarded: the naive layer as it is competes with its refitted self.
    let asIs = score { o with RefitOutput = false } be win dims fit dev naive
    let start =
        let refit = score o be win dims fit dev naive
        if fst refit < fst asIs then refit else asIs
    if not o.GuardedPhase1 then fst asIs, start, [], None
    else
    // Phase 1 as published on a bounded head of the fit set (its batch size, method.md §5.1).
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

/// Alignment on minibatches of the fit set with dev-loss selection; returns the best weights.
let private align (o: PlusOptions) (be: IBackend) (c: ModelConfig) (win: Windows) (fit: LayerSet) (dev: LayerSet) (T: int)
                  (layer: int) (seed: int) (w: GdnWeights) (onStep: int -> float -> unit) (ct: CancellationToken) =
    let watch = Stopwatch.StartNew()
    let dims : GdnLayer.GdnDims = { D = c.Dim; H = c.Heads; Hd = c.HeadDim }
    let mb = min o.MiniBatch fit.B
    use p = new GdnLayer.DeviceGdn(be, dims, w)
    use grads = new GdnLayer.GdnGrads(be, dims)
    use dWo = be.Allocate [| dims.D; dims.Q |]
    use dy = be.Allocate [| mb; T; dims.D |]
    let ws, x, y, target = win.Get mb
    let trainOutput = o.LrOutput > 0f
    let trainable = p.Trainable @ (if trainOutput then [ p.Wo; p.ONorm ] else [])
    let gradList = grads.Trainable @ (if trainOutput then [ dWo; grads.ONorm ] else [])
    let lrs =
        [ o.LrProjections; o.LrProjections; o.LrProjections; o.LrGates; o.LrGates; o.LrGates; o.LrGates; o.LrGates ]
        @ (if trainOutput then [ o.LrOutput; o.LrOutput ] else [])
    let moments = trainable |> List.map (fun t -> be.Allocate t.Shape, be.Allocate t.Shape)
    let snapshot = trainable |> List.map (fun t -> be.Allocate t.Shape)
    try
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
        while s < o.Steps && not stop do
            ct.ThrowIfCancellationRequested()
            if s % o.EvalEvery = 0 then
                evaluate s
                stop <- o.Patience > 0 && sinceBest >= o.Patience
            if not stop then
                nextChunks () |> Array.iteri (fun i b ->
                    Array.blit fit.Trace.X (b * per) xs (i * per) per
                    Array.blit fit.Trace.Output (b * per) ys (i * per) per)
                be.Upload(x, ReadOnlySpan<float32>(xs))
                be.Upload(target, ReadOnlySpan<float32>(ys))
                GdnLayer.forward p ws x y
                be.Copy(y, 0L, dy, 0L, y.Count)
                be.Axpy(-1f, target, dy)
                be.Reduce(ReduceOp.SumOfSquares, dy, win.Scalar)
                let loss = float (win.Scalar.ToArray()[0]) / float n
                losses.Add loss
                be.Scale(dy, 2f / n, dy)
                grads.Zero()
                GdnLayer.backward p ws x dy grads None
                // y = W_o u: dW_o (D, Q) = dyᵀ (D, N) · u (N, Q).
                if trainOutput then be.Gemm(dy, ws.U, dWo, GemmSpec(dims.D, dims.Q, ws.N, TransA = true))
                be.ClipGradNorm(gradList, o.ClipNorm, win.Scalar)
                gradNorms.Add(float (win.Scalar.ToArray()[0]))
                List.zip3 trainable gradList lrs
                |> List.iteri (fun i (param, g, lr) ->
                    let m, v = moments[i]
                    be.AdamW(param, g, m, v, AdamWSpec(lr, s + 1, o.WeightDecay, o.Beta1, o.Beta2, o.Epsilon)))
                onStep (s + 1) loss
                s <- s + 1
        if not stop then evaluate s
        copyTo false
        let result : Align.AlignResult =
            { Layer = layer; Losses = losses.ToArray(); BestLoss = best; BestStep = bestStep; GradNorms = gradNorms.ToArray()
              Seconds = watch.Elapsed.TotalSeconds }
        p.ToWeights(), result, List.ofSeq devLosses
    finally
        for m, v in moments do
            m.Dispose()
            v.Dispose()
        for t in snapshot do t.Dispose()

/// calibrate-plus on one naive layer with its fit and dev traces (B chunks of T tokens each).
let run (o: PlusOptions) (taylor: TaylorInit.TaylorOptions) (be: IBackend) (c: ModelConfig) (fit: LayerSet) (dev: LayerSet option)
        (T: int) (seed: int) (naive: GdnWeights) (onStep: int -> float -> unit) (ct: CancellationToken) : GdnWeights * PlusResult =
    let dims : GdnLayer.GdnDims = { D = c.Dim; H = c.Heads; Hd = c.HeadDim }
    let dev = defaultArg dev fit
    use win = new Windows(be, dims, T, max 1 (min o.MiniBatch fit.B))
    let devNaive, (devClosed, closed), kept, info = closedForm o taylor be c win fit dev T naive
    let aligned, result, devLosses =
        if o.Steps > 0 then align o be c win fit dev T fit.Trace.Layer seed closed onStep ct
        else
            closed,
            { Layer = fit.Trace.Layer; Losses = [||]; BestLoss = devClosed; BestStep = 0; GradNorms = [||]; Seconds = 0.0 },
            []
    let devAligned = if o.Steps > 0 then result.BestLoss else devClosed
    let final, devFinal, refitKept =
        if o.RefitOutput && o.Steps > 0 then
            let d, w = score o be win dims fit dev aligned
            if d < devAligned then w, d, true else aligned, devAligned, false
        else aligned, devAligned, false
    final,
    { Phase1Kept = kept; Phase1 = info; DevNaive = devNaive; DevClosedForm = devClosed; DevFinal = devFinal
      FinalRefitKept = refitKept; DevLosses = devLosses; Alignment = result }
