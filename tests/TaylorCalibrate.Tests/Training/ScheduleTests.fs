/// Learning-rate schedules (Training/Schedule.fs): the cosine's known points (1 at the start, ½ half-way,
/// approaching 0 at the end), the warmup ramp, the exact peak rate of the constant schedule, and rejection of
/// invalid schedules and steps past the end.
module TaylorCalibrate.Tests.Training.ScheduleTests

open System
open Expecto
open TaylorCalibrate.Pipeline.Training.Schedule

/// The factor is a handful of double operations (cos, a product): 1e-15 is far above their rounding and far
/// below any slip in the formula.
let private near (expected: float) (actual: float) (what: string) =
    Expect.isLessThan (abs (actual - expected)) 1e-15 $"{what}: {actual} vs {expected}"

[<Tests>]
let tests =
    testList "Training.Schedule" [
        test "constant is exactly the peak rate at every step" {
            for s in [ 0; 1; 999; 1_000_000 ] do
                Expect.equal (factor Constant s) 1.0 $"factor at {s}"
                Expect.equal (learningRate Constant 7e-6f s) 7e-6f $"rate at {s}"
        }

        test "cosine to zero without warmup: ½(1 + cos(π·s/S))" {
            let S = 10
            near 1.0 (factor (Cosine S) 0) "s = 0"
            near 0.5 (factor (Cosine S) 5) "s = S/2"
            near (0.5 * (1.0 + cos (Math.PI * 0.9))) (factor (Cosine S) 9) "last step"
            let fs = [ for s in 0 .. S - 1 -> factor (Cosine S) s ]
            Expect.isTrue (List.pairwise fs |> List.forall (fun (a, b) -> b < a)) "strictly decreasing"
            Expect.isGreaterThan fs[S - 1] 0.0 "the last step still trains"
        }

        test "linear warmup then constant" {
            let W = 4
            for s in 0 .. W - 1 do near (float (s + 1) / float W) (factor (WarmupConstant W) s) $"warmup step {s}"
            Expect.equal (factor (WarmupConstant W) W) 1.0 "after warmup"
            Expect.equal (factor (WarmupConstant W) 1000) 1.0 "long after warmup"
        }

        test "linear warmup then cosine over the remaining steps" {
            let W, S = 3, 13
            near (1.0 / 3.0) (factor (WarmupCosine(W, S)) 0) "first step"
            near 1.0 (factor (WarmupCosine(W, S)) 2) "end of warmup"
            near 1.0 (factor (WarmupCosine(W, S)) 3) "start of the cosine"
            near 0.5 (factor (WarmupCosine(W, S)) 8) "half-way through the cosine"
        }

        test "invalid schedules and steps past the end are rejected" {
            Expect.isSome (validate (Cosine 0)) "zero-step cosine"
            Expect.isSome (validate (WarmupConstant 0)) "zero warmup"
            Expect.isSome (validate (WarmupCosine(10, 10))) "warmup as long as the run"
            Expect.isNone (validate (WarmupCosine(1, 2))) "shortest valid warmup-cosine"
            Expect.throwsT<ArgumentException> (fun () -> factor (Cosine 10) 10 |> ignore) "step S of a cosine"
            Expect.throwsT<ArgumentException> (fun () -> factor Constant -1 |> ignore) "negative step"
            Expect.throwsT<ArgumentException> (fun () -> factor (WarmupCosine(5, 3)) 0 |> ignore) "invalid schedule"
        }
    ]
