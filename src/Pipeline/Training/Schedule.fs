/// Learning-rate schedules as a factor in [0, 1] that multiplies each group's peak learning rate.
/// Step s is the 0-based index of the optimizer step being taken (its AdamW step counter is s + 1):
///   Constant                 1
///   Cosine S                 ½(1 + cos(π·s/S))                 (docs/method.md §7, Stage 1: to 0, no warmup)
///   WarmupConstant W         (s + 1)/W for s < W, then 1
///   WarmupCosine (W, S)      (s + 1)/W for s < W, then ½(1 + cos(π·(s − W)/(S − W)))
/// The warmup's first step already has a non-zero rate (1/W), so no step is wasted. The factor is computed
/// in double and is exactly 1 for Constant, so a constant schedule reproduces the peak rate bit for bit.
module TaylorCalibrate.Pipeline.Training.Schedule

open System

/// A learning-rate schedule; S is the run's total number of optimizer steps, W the warmup steps.
type Schedule =
    | Constant
    | Cosine of totalSteps: int
    | WarmupConstant of warmupSteps: int
    | WarmupCosine of warmupSteps: int * totalSteps: int

/// None when the schedule is usable, else why not.
let validate (schedule: Schedule) : string option =
    match schedule with
    | Constant -> None
    | Cosine s when s < 1 -> Some $"cosine schedule: total steps {s} must be ≥ 1"
    | Cosine _ -> None
    | WarmupConstant w when w < 1 -> Some $"warmup steps {w} must be ≥ 1"
    | WarmupConstant _ -> None
    | WarmupCosine(w, _) when w < 1 -> Some $"warmup steps {w} must be ≥ 1"
    | WarmupCosine(w, s) when w >= s -> Some $"warmup steps {w} must be fewer than the total steps {s}"
    | WarmupCosine _ -> None

/// The schedule as text for settings and reports, e.g. "warmup-cosine:100:2000".
let describe (schedule: Schedule) =
    match schedule with
    | Constant -> "constant"
    | Cosine s -> $"cosine:{s}"
    | WarmupConstant w -> $"warmup-constant:{w}"
    | WarmupCosine(w, s) -> $"warmup-cosine:{w}:{s}"

let private cosineFactor (s: int) (total: int) = 0.5 * (1.0 + Math.Cos(Math.PI * float s / float total))

/// The factor of step s (0-based). Throws ArgumentException for an invalid schedule, a negative step, or a
/// step at or past a cosine schedule's end (training longer than planned is a bug in the caller).
let factor (schedule: Schedule) (step: int) : float =
    match validate schedule with
    | Some why -> invalidArg "schedule" why
    | None -> ()
    if step < 0 then invalidArg "step" $"schedule step {step} must be ≥ 0"
    let warmup w = float (step + 1) / float w
    match schedule with
    | Constant -> 1.0
    | Cosine s ->
        if step >= s then invalidArg "step" $"step {step} is past the cosine schedule's {s} steps"
        cosineFactor step s
    | WarmupConstant w -> if step < w then warmup w else 1.0
    | WarmupCosine(w, s) ->
        if step >= s then invalidArg "step" $"step {step} is past the cosine schedule's {s} steps"
        if step < w then warmup w else cosineFactor (step - w) (s - w)

/// A group's learning rate at step s: the peak rate times the factor, rounded once to fp32.
let learningRate (schedule: Schedule) (peak: float32) (step: int) : float32 =
    float32 (float peak * factor schedule step)
