/// Phase 2 of Taylor-Calibrate (docs/method.md §5.3, §11c): per GDN layer, teacher-forced on its traced input x,
/// minimise mean((GDN(x) − Y)²) (after o_proj) with full-batch AdamW, fp32. lr 1e-4 for q/k/v_proj, 1e-3
/// for A_log, dt_bias, a/b/g_proj; o_proj and o_norm frozen; weight decay 0.01; gradient-norm clip 1.0;
/// 300 steps, on the shared optimizer (Training/AdamW.fs, ParameterGroups.Presets.phase2, Trainer.step).
/// The loss at step s is measured on θ_s before its update, and θ_s itself is snapshotted when
/// it is the best so far; θ after the last update is evaluated too; the exact best θ is restored.
module TaylorCalibrate.Pipeline.Stages.Align

open System
open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages.TeacherTrace
open TaylorCalibrate.Pipeline.Training

/// Every constant of Phase 2 (docs/method.md §5.3 defaults; betas/eps are PyTorch's).
type AlignOptions =
    { Steps: int
      /// q/k/v_proj.
      LrProjections: float32
      /// A_log, dt_bias, a/b/g_proj.
      LrGates: float32
      WeightDecay: float32
      Beta1: float32
      Beta2: float32
      Epsilon: float32
      ClipNorm: float32 }

module AlignOptions =
    let defaults =
        { Steps = 300; LrProjections = 1e-4f; LrGates = 1e-3f; WeightDecay = 0.01f; Beta1 = 0.9f; Beta2 = 0.999f
          Epsilon = 1e-8f; ClipNorm = 1.0f }

/// What aligning one layer did.
type AlignResult =
    { Layer: int
      /// Loss of θ_s for s = 0..Steps (the last entry is θ after the final update).
      Losses: float[]
      BestLoss: float
      /// Index into Losses of the restored parameters.
      BestStep: int
      /// Gradient norm before clipping, per step.
      GradNorms: float[]
      Seconds: float }

/// How well a layer's output matches the teacher's.
type LayerFit =
    { Mse: float
      /// Cosine similarity of the flattened (B·T·D) outputs: dominated by the tokens of largest norm.
      Cosine: float
      /// Mean over the B·T tokens of the cosine of each token's D-vector: the figure the reference reports,
      /// not comparable with Cosine (docs/method.md §11f).
      MeanTokenCosine: float }

/// Mean of the per-row cosines of two (rows, d) matrices, in f64.
let private meanRowCosine (d: int) (y: float32[]) (target: float32[]) =
    let rows = y.Length / d
    let mutable sum = 0.0
    for r in 0 .. rows - 1 do
        let mutable dot = 0.0
        let mutable yy = 0.0
        let mutable tt = 0.0
        for j in r * d .. r * d + d - 1 do
            let a, b = float y[j], float target[j]
            dot <- dot + a * b
            yy <- yy + a * a
            tt <- tt + b * b
        sum <- sum + dot / max (sqrt (yy * tt)) 1e-30
    sum / float (max rows 1)

/// MSE and both cosines between two (B·T, D) outputs.
let fitOf (d: int) (y: float32[]) (target: float32[]) =
    let mutable se = 0.0
    let mutable dot = 0.0
    let mutable yy = 0.0
    let mutable tt = 0.0
    for i in 0 .. y.Length - 1 do
        let a, b = float y[i], float target[i]
        se <- se + (a - b) * (a - b)
        dot <- dot + a * b
        yy <- yy + a * a
        tt <- tt + b * b
    { Mse = se / float y.Length; Cosine = dot / max (sqrt (yy * tt)) 1e-30; MeanTokenCosine = meanRowCosine d y target }

/// The layer's output (B, T, D) on its traced input.
let layerOutput (be: IBackend) (c: ModelConfig) (trace: LayerTrace) (B: int) (T: int) (w: GdnWeights) : float32[] =
    use owner = new TensorOwner(be)
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    let x = owner.Upload(trace.X, [| B; T; c.Dim |])
    let y = owner.Allocate [| B; T; c.Dim |]
    let p = Gdn.upload owner (Gdn.dimsOf c) w
    Gdn.forward be scratch arena p x y |> ignore
    y.ToArray()

/// MSE and cosine of the layer against the teacher output.
let fit (be: IBackend) (c: ModelConfig) (trace: LayerTrace) (B: int) (T: int) (w: GdnWeights) =
    fitOf c.Dim (layerOutput be c trace B T w) trace.Output

/// The GDN layer's tensors as named parameters of layer `layer` (their saved names), with gradients on `owner`.
let layerParameters (owner: TensorOwner) (layer: int) (p: GdnParams) : Parameter list =
    Gdn.named p |> List.map (fun (n, t) ->
        { Parameter.Name = $"model.layers.{layer}.attn.{n}"; Value = t; Grad = owner.Allocate t.Shape })

/// Aligns one layer; `onStep step loss` reports progress. Cancellation stops between steps (throws).
let alignLayer (o: AlignOptions) (be: IBackend) (c: ModelConfig) (trace: LayerTrace) (B: int) (T: int) (w: GdnWeights)
               (onStep: int -> float -> unit) (ct: CancellationToken) : GdnWeights * AlignResult =
    let watch = Stopwatch.StartNew()
    use owner = new TensorOwner(be)
    use scratch = new Scratch(be)
    use arena = new Arena(be)
    let x = owner.Upload(trace.X, [| B; T; c.Dim |])
    let target = owner.Upload(trace.Output, [| B; T; c.Dim |])
    let y = owner.Allocate [| B; T; c.Dim |]
    let dy = owner.Allocate [| B; T; c.Dim |]
    let scalar = owner.Allocate [| 1 |]
    let p = Gdn.upload owner (Gdn.dimsOf c) w
    let parameters = layerParameters owner trace.Layer p
    let settings =
        { Beta1 = o.Beta1; Beta2 = o.Beta2; Epsilon = o.Epsilon; ClipNorm = Some o.ClipNorm; Schedule = Schedule.Constant }
    use optimizer = new AdamW(settings, ParameterGroups.Presets.phase2 o.LrProjections o.LrGates o.WeightDecay, parameters)
    // Only the trained tensors get gradients: o_proj and o_norm (frozen) cost no weight-gradient work.
    let trained = optimizer.Trained |> List.map (fun t -> t.Parameter)
    let grads = Grads trained
    let trainable = trained |> List.map (fun q -> q.Value)
    let snapshot = trainable |> List.map (fun t -> owner.Allocate t.Shape)
    let n = float32 (B * T * c.Dim)
    // loss = mean (y − Y)²; leaves dy = 2(y − Y)/n·weight.
    let lossAndGrad (weight: float32) =
        arena.Reset()
        let saved = Gdn.forward be scratch arena p x y
        be.Copy(y, 0L, dy, 0L, y.Count)
        be.Axpy(-1f, target, dy)
        be.Reduce(ReduceOp.SumOfSquares, dy, scalar)
        let loss = float (scalar.ToArray()[0]) / float n
        be.Scale(dy, 2f / n * weight, dy)
        loss, saved
    let takeSnapshot () = List.iter2 (fun (src: Tensor) dst -> be.Copy(src, 0L, dst, 0L, src.Count)) trainable snapshot
    let losses = Array.zeroCreate (o.Steps + 1)
    let gradNorms = Array.zeroCreate o.Steps
    let mutable best = Double.PositiveInfinity
    let mutable bestStep = -1
    for s in 0 .. o.Steps - 1 do
        ct.ThrowIfCancellationRequested()
        // The loss of θ_s is measured (and θ_s snapshotted when best) before the update; one micro-batch.
        let report =
            Trainer.step optimizer 1 (fun mb ->
                let loss, saved = lossAndGrad mb.Weight
                losses[s] <- loss
                if loss < best then
                    best <- loss
                    bestStep <- s
                    takeSnapshot ()
                Gdn.backward be scratch grads p saved dy None
                loss)
        gradNorms[s] <- report.GradNorm
        onStep (s + 1) report.Loss
    let final, _ = lossAndGrad 1f
    losses[o.Steps] <- final
    if final < best then
        best <- final
        bestStep <- o.Steps
        takeSnapshot ()
    List.iter2 (fun (src: Tensor) dst -> be.Copy(src, 0L, dst, 0L, src.Count)) snapshot trainable
    Gdn.download p,
    { Layer = trace.Layer; Losses = losses; BestLoss = best; BestStep = bestStep; GradNorms = gradNorms
      Seconds = watch.Elapsed.TotalSeconds }
