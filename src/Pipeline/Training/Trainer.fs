/// One training step with gradient accumulation: zero every gradient once, run the caller's loss-and-gradient
/// closure on each micro-batch, then clip and apply AdamW (AdamW.Step). Micro-batch i carries a weight w_i
/// with Σ w_i = 1 (n_i/N for n_i of the step's N rows); the closure must ADD w_i·∂loss_i/∂θ to the gradients,
/// where loss_i is the micro-batch's own mean loss (the backend's loss ops take the weight as their gradient
/// scale). The accumulated gradient is then Σ_i (n_i/N)·mean_i = the full-batch mean gradient, up to fp32
/// summation order, and the reported loss is Σ_i w_i·loss_i, the full-batch mean.
module TaylorCalibrate.Pipeline.Training.Trainer

open System

/// One micro-batch of a step.
type MicroBatch =
    { /// 0-based index within the step.
      Index: int
      /// Number of micro-batches in the step.
      Count: int
      /// The weight the closure multiplies its loss gradient by.
      Weight: float32 }

/// What a training step did.
type StepReport =
    { /// The AdamW step counter just applied (1 for the first step).
      Step: int
      /// Full-batch mean loss Σ w_i·loss_i of the parameters before the update.
      Loss: float
      /// Global gradient norm before clipping.
      GradNorm: float
      /// Schedule factor that multiplied each group's peak learning rate.
      LrFactor: float
      /// The learning rate each trained group used (group name, rate).
      LearningRates: (string * float32) list }

/// One step over micro-batches with the given weights (each > 0, summing to 1 within 1e-6), where
/// `combine` runs between the accumulation and the update: it gets the accumulated loss, may change the
/// gradients (data parallel: sum them over ranks, Parallel/DataParallel.fs) and returns the step's loss.
let stepWeightedThen (combine: float -> float) (optimizer: AdamW) (weights: float32[]) (lossAndGrad: MicroBatch -> float) : StepReport =
    if weights.Length = 0 then invalidArg "weights" "a step needs at least one micro-batch"
    if weights |> Array.exists (fun w -> not (Single.IsFinite w && w > 0f)) then
        invalidArg "weights" "micro-batch weights must be finite and > 0"
    let total = weights |> Array.sumBy float
    if abs (total - 1.0) > 1e-6 then invalidArg "weights" $"micro-batch weights sum to {total}, not 1"
    optimizer.ZeroGrads()
    let mutable loss = 0.0
    for i in 0 .. weights.Length - 1 do
        let l = lossAndGrad { Index = i; Count = weights.Length; Weight = weights[i] }
        loss <- loss + float weights[i] * l
    let loss = combine loss
    let s = optimizer.Step()
    { Step = s.Step; Loss = loss; GradNorm = s.GradNorm; LrFactor = s.LrFactor; LearningRates = s.LearningRates }

/// One step over micro-batches with the given weights (each > 0, summing to 1 within 1e-6).
/// `lossAndGrad` returns the micro-batch's mean loss and accumulates Weight·gradient into the parameters' Grad.
let stepWeighted (optimizer: AdamW) (weights: float32[]) (lossAndGrad: MicroBatch -> float) : StepReport =
    stepWeightedThen id optimizer weights lossAndGrad

/// Weights of `count` equal micro-batches (1/count each; exactly 1 for a single batch).
let equalWeights (count: int) : float32[] =
    if count < 1 then invalidArg "count" $"micro-batch count {count} must be ≥ 1"
    Array.create count (1f / float32 count)

/// One step over `microBatches` equal micro-batches (see stepWeighted).
let step (optimizer: AdamW) (microBatches: int) (lossAndGrad: MicroBatch -> float) : StepReport =
    stepWeighted optimizer (equalWeights microBatches) lossAndGrad
