/// Stage 2 of distillation (docs/method.md §7): end-to-end, the whole hybrid student against the teacher.
/// Loss = Σ over the B·T positions of KL(p_teacher ‖ p_student) over the whole vocabulary, temperature 1,
/// divided by B·T (no cross-entropy term). The teacher's logits come from its forward in the same step; the
/// backend's KlDivergence streams over the vocabulary per row and writes the gradient
/// (p_student − p_teacher)·weight/(B·T) over the student's logits in place, so no second student-sized
/// logits tensor exists. Every parameter trains: names containing "attn" at 1e-4, the rest at 7e-6
/// (ParameterGroups.Presets.stage2), constant rate, AdamW (β 0.9/0.95), weight decay 0.01, clip 1.0,
/// gradient accumulation over micro-batches (Trainer.step).
module TaylorCalibrate.Pipeline.Distill.Stage2

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Training

/// Trains every parameter of `student` against `teacher` (same backend and vocabulary). Dispose to free the
/// optimizer state.
type Stage2Trainer(teacher: DeviceDecoder, student: DeviceDecoder, settings: AdamWSettings,
                   rules: ParameterGroups.GroupRule list, recompute: bool) =
    let be = student.Backend
    do
        if not (obj.ReferenceEquals(teacher.Backend, be)) then invalidArg "teacher" "teacher and student must live on one backend"
        if teacher.Config.Vocab <> student.Config.Vocab then
            invalidArg "teacher" $"the teacher's vocabulary {teacher.Config.Vocab} differs from the student's {student.Config.Vocab}"
    let parameters = student.Parameters
    let grads = Grads parameters
    let optimizer = new AdamW(settings, rules, parameters)
    let mutable lossBuffer : Tensor option = None
    let sum = be.Allocate [| 1 |]
    // Time in the data-parallel gradient sum (download, rank-ordered sum over ranks, upload), after the
    // ranks met at a barrier.
    let syncWatch = Diagnostics.Stopwatch()
    let lossRows (n: int) =
        match lossBuffer with
        | Some t when t.Count = int64 n -> t
        | other ->
            other |> Option.iter (fun t -> t.Dispose())
            let t = be.Allocate [| n |]
            lossBuffer <- Some t
            t

    /// KL of one micro-batch (mean over its B·T positions); with `weight`, adds weight·∂KL/∂θ.
    let run (ids: int[]) (B: int) (T: int) (weight: float32 option) : float =
        use teacherLogits = (Decoder.forward teacher ids B T Decoder.ForwardOptions.none).Logits   // (B, T, V)
        let loss = lossRows (B * T)
        let n = float32 (B * T)
        match weight with
        | None ->
            use studentLogits = (Decoder.forward student ids B T Decoder.ForwardOptions.none).Logits
            be.KlDivergence(teacherLogits, studentLogits, loss, null, 1f)
            be.Reduce(ReduceOp.Sum, loss, sum)
        | Some w ->
            use pass = Decoder.trainForward student ids B T { Recompute = recompute }
            // The gradient overwrites the student's logits (B, T, V): dlogits = w·(p_S − p_T)/(B·T).
            be.KlDivergence(teacherLogits, pass.Logits, loss, pass.Logits, w / n)
            be.Reduce(ReduceOp.Sum, loss, sum)
            Decoder.backward student pass pass.Logits grads
        float (sum.ToArray()[0]) / float n

    member _.Optimizer = optimizer

    /// Seconds spent summing gradients over ranks so far (StepShard).
    member _.SyncSeconds = syncWatch.Elapsed.TotalSeconds

    /// Mean KL per position of the current student on (B, T) ids, without training.
    member _.Kl(ids: int[], B: int, T: int) : float = run ids B T None

    /// One optimizer step over the micro-batches (each (B, T) ids, equal weights).
    member _.Step(microBatches: int[] list, B: int, T: int) : Trainer.StepReport =
        let mbs = Array.ofList microBatches
        Trainer.step optimizer mbs.Length (fun mb -> run mbs[mb.Index] B T (Some mb.Weight))

    /// One data-parallel step (Parallel/DataParallel.fs): this rank's rows of each micro-batch (each (B, T)
    /// ids, B = the global rows / ranks), their gradients weighted by the rank's share and summed over ranks.
    member _.StepShard(ranks: Mpi.ICollectives, microBatches: int[] list, B: int, T: int) : Trainer.StepReport =
        let mbs = Array.ofList microBatches
        let share = 1.0 / float ranks.Size
        let combine = TaylorCalibrate.Pipeline.Parallel.DataParallel.combineStep ranks optimizer share
        let timed loss =
            // Waiting for a slower rank is not communication: wait at a barrier first, then time the sum.
            ranks.Barrier()
            syncWatch.Start()
            try combine loss finally syncWatch.Stop()
        Trainer.stepWeightedThen timed optimizer (Trainer.equalWeights mbs.Length)
            (fun mb -> run mbs[mb.Index] B T (Some(mb.Weight * float32 share)))

    interface IDisposable with
        member _.Dispose() =
            (optimizer :> IDisposable).Dispose()
            lossBuffer |> Option.iter (fun t -> t.Dispose())
            sum.Dispose()
