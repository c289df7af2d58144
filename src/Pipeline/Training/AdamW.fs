/// AdamW over named parameters (docs/kernels.md §4 for the update and the clip): per parameter group a peak
/// learning rate and a weight decay (ParameterGroups), a schedule factor per step (Schedule), global-norm
/// clipping over every trained gradient, and first/second moments allocated on the parameter's backend.
/// One optimizer step is: N = ‖g‖ over the trained gradients in parameter order (IBackend.ClipGradNorm, which
/// also scales them when N exceeds the clip), then IBackend.AdamW on each trained parameter with step
/// counter t = steps taken + 1. That is exactly the order Phase-2 alignment has always used, so a run moved
/// onto this optimizer reproduces its parameters bit for bit.
namespace TaylorCalibrate.Pipeline.Training

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Training.ParameterGroups

/// Settings shared by every group.
type AdamWSettings =
    { Beta1: float32
      Beta2: float32
      Epsilon: float32
      /// Global gradient-norm clip; None measures the norm without clipping.
      ClipNorm: float32 option
      Schedule: Schedule.Schedule }

module AdamWSettings =
    /// PyTorch's defaults (β 0.9/0.999, ε 1e-8), clip 1.0, constant rate: Phase-2 alignment.
    let defaults =
        { Beta1 = 0.9f; Beta2 = 0.999f; Epsilon = 1e-8f; ClipNorm = Some 1.0f; Schedule = Schedule.Constant }

    /// Settings as a string map (for checkpoint settings and reports).
    let describe (s: AdamWSettings) : Map<string, string> =
        let f (v: float32) = v.ToString("R", Globalization.CultureInfo.InvariantCulture)
        Map [ "adamw.beta1", f s.Beta1
              "adamw.beta2", f s.Beta2
              "adamw.eps", f s.Epsilon
              "adamw.clip", (match s.ClipNorm with Some c -> f c | None -> "none")
              "adamw.schedule", Schedule.describe s.Schedule ]

/// A trained parameter with its group's settings and its AdamW moments (same shape, same backend).
type TrainedParameter =
    { Parameter: Parameter
      Group: string
      Hyper: GroupHyper
      /// First moment m.
      M: Tensor
      /// Second moment v.
      V: Tensor }

/// What one optimizer step did.
type StepStats =
    { /// The AdamW step counter t just applied (1 for the first step).
      Step: int
      /// Global gradient norm before clipping.
      GradNorm: float
      /// Schedule factor applied to every group's peak learning rate.
      LrFactor: float
      /// The learning rate each trained group used, in the order groups first appear among the parameters.
      LearningRates: (string * float32) list }

/// The global gradient norm was NaN or infinite; no parameter was changed. Names the trained parameters whose
/// gradients hold non-finite values, in parameter order (empty when only the sum of squares overflowed).
type NonFiniteGradientException(step: int, parameters: string list) =
    inherit Exception(
        let where =
            if parameters.IsEmpty then "the sum of squared gradients overflowed"
            else "non-finite gradient in " + String.concat ", " parameters
        $"step {step}: gradient norm is not finite ({where}); parameters left unchanged")
    /// The step that was refused (1-based).
    member _.Step = step
    /// The parameters whose gradients hold NaN or ±Inf.
    member _.Parameters = parameters

/// AdamW over the given parameters, grouped by `rules` (ParameterGroups.assign: every parameter must match a
/// rule). Every parameter must live on one backend. Owns the moments and a scalar; dispose it after training.
/// Not thread-safe (neither is a backend).
type AdamW(settings: AdamWSettings, rules: GroupRule list, parameters: Parameter list) =
    do
        match Schedule.validate settings.Schedule with
        | Some why -> invalidArg "settings" why
        | None -> ()
        let ok01 (v: float32) = Single.IsFinite v && v >= 0f && v < 1f
        if not (ok01 settings.Beta1) then invalidArg "settings" $"beta1 {settings.Beta1} must be in [0, 1)"
        if not (ok01 settings.Beta2) then invalidArg "settings" $"beta2 {settings.Beta2} must be in [0, 1)"
        if not (Single.IsFinite settings.Epsilon && settings.Epsilon > 0f) then
            invalidArg "settings" $"epsilon {settings.Epsilon} must be finite and > 0"
        match settings.ClipNorm with
        | Some c when not (Single.IsFinite c && c > 0f) -> invalidArg "settings" $"clip norm {c} must be finite and > 0"
        | _ -> ()
    let assigned = ParameterGroups.assign rules parameters
    let backend =
        match parameters with
        | [] -> invalidArg "parameters" "no parameters to optimise"
        | p0 :: _ -> p0.Value.Backend
    do
        for p in parameters do
            if not (obj.ReferenceEquals(p.Value.Backend, backend) && obj.ReferenceEquals(p.Grad.Backend, backend)) then
                invalidArg "parameters" $"parameter '{p.Name}' lives on {p.Value.Backend.Name}, not on {backend.Name} like '{parameters.Head.Name}'"
            if p.Value.DType <> DType.F32 || p.Grad.DType <> DType.F32 then
                invalidArg "parameters" $"parameter '{p.Name}' must be F32 (value {p.Value.DType}, gradient {p.Grad.DType})"
            if p.Value.Shape <> p.Grad.Shape then
                invalidArg "parameters" $"parameter '{p.Name}': gradient shape {p.Grad.ShapeText} differs from value shape {p.Value.ShapeText}"
    let trained =
        assigned |> List.choose (fun a ->
            match a.Treatment with
            | Freeze -> None
            | Train h ->
                let shape = a.Parameter.Value.Shape
                Some { Parameter = a.Parameter; Group = a.Group; Hyper = h; M = backend.Allocate shape; V = backend.Allocate shape })
    do if trained.IsEmpty then invalidArg "rules" "every parameter is frozen: nothing to train"
    let frozen = assigned |> List.filter (fun a -> a.Treatment = Freeze)
    let trainedGrads = trained |> List.map (fun t -> t.Parameter.Grad) |> ResizeArray :> Collections.Generic.IReadOnlyList<Tensor>
    let norm = backend.Allocate [| 1 |]
    let scratch = backend.Allocate [| 1 |]
    let mutable stepsTaken = 0
    let mutable disposed = false

    let nonFiniteGradients () =
        trained |> List.filter (fun t ->
            backend.Reduce(ReduceOp.SumOfSquares, t.Parameter.Grad, scratch)
            let s = scratch.ToArray()[0]
            Single.IsNaN s || Single.IsInfinity s)
        |> List.map (fun t -> t.Parameter.Name)

    /// The backend every parameter lives on.
    member _.Backend = backend
    /// The settings this optimizer was built with.
    member _.Settings = settings
    /// Every parameter, in the order given.
    member _.Parameters = parameters
    /// The trained parameters with their moments, in parameter order.
    member _.Trained = trained
    /// The frozen parameters, in parameter order.
    member _.Frozen = frozen |> List.map (fun a -> a.Parameter)
    /// Optimizer steps taken so far (the next step's AdamW counter is this + 1).
    member _.StepsTaken = stepsTaken

    /// Zeroes every gradient, trained and frozen (backward passes accumulate), once before a step's first
    /// micro-batch.
    member _.ZeroGrads() =
        for p in parameters do backend.Fill(p.Grad, 0f)

    /// Clips the trained gradients by their global norm, then applies AdamW with the scheduled learning rates.
    /// Throws NonFiniteGradientException (before changing anything) when the norm is NaN or infinite.
    member _.Step() : StepStats =
        if disposed then raise (ObjectDisposedException "AdamW")
        let s = stepsTaken
        backend.ClipGradNorm(trainedGrads, defaultArg settings.ClipNorm Single.PositiveInfinity, norm)
        let n = norm.ToArray()[0]
        if Single.IsNaN n || Single.IsInfinity n then raise (NonFiniteGradientException(s + 1, nonFiniteGradients ()))
        let f = Schedule.factor settings.Schedule s
        for t in trained do
            let lr = float32 (float t.Hyper.LearningRate * f)
            backend.AdamW(t.Parameter.Value, t.Parameter.Grad, t.M, t.V,
                          AdamWSpec(lr, s + 1, t.Hyper.WeightDecay, settings.Beta1, settings.Beta2, settings.Epsilon))
        stepsTaken <- s + 1
        let rates = trained |> List.map (fun t -> t.Group, float32 (float t.Hyper.LearningRate * f)) |> List.distinct
        { Step = s + 1; GradNorm = float n; LrFactor = f; LearningRates = rates }

    /// Puts the optimizer back at `steps` steps taken with the given moments (by parameter name; each pair is
    /// (m, v) with the parameter's element count), as a checkpoint recorded them. Every trained parameter must
    /// be present; throws ArgumentException naming the first one missing or of the wrong size.
    member _.Restore(steps: int, moments: Map<string, float32[] * float32[]>) =
        if steps < 0 then invalidArg "steps" $"steps taken {steps} must be ≥ 0"
        for t in trained do
            match moments.TryFind t.Parameter.Name with
            | None -> invalidArg "moments" $"no AdamW moments for parameter '{t.Parameter.Name}'"
            | Some(m, v) ->
                if int64 m.Length <> t.M.Count || int64 v.Length <> t.V.Count then
                    invalidArg "moments" $"AdamW moments of '{t.Parameter.Name}' have {m.Length}/{v.Length} values, expected {t.M.Count}"
        for t in trained do
            let m, v = moments[t.Parameter.Name]
            backend.Upload(t.M, ReadOnlySpan m)
            backend.Upload(t.V, ReadOnlySpan v)
        stepsTaken <- steps

    interface IDisposable with
        member _.Dispose() =
            if not disposed then
                disposed <- true
                for t in trained do
                    t.M.Dispose()
                    t.V.Dispose()
                norm.Dispose()
                scratch.Dispose()
