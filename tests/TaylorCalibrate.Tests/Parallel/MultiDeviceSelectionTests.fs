/// Layer selection with its per-layer measurements spread over several devices (LayerSelection.runOn): two
/// CPU workers give the one-CPU scores and kept layers bit for bit, for GA-S2 (its shared conversion and its
/// one-layer hybrids' evaluations) and AR (the teacher without one attention sublayer).
module TaylorCalibrate.Tests.Parallel.MultiDeviceSelectionTests

open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Stages.LayerSelection
open TaylorCalibrate.Tests

/// 8 windows of 32 random tokens: enough for distinct perplexities per layer.
let private evalInput (t: Teacher) : EvalInput =
    let set =
        Perplexity.prepare "random" t.Config (Rand.ints 21 t.Config.Vocab (8 * 32)) (Some 32) None
        |> Result.defaultWith (fun e -> failtest (InputError.describe e))
    { Source = "random"; Set = set }

let private plans (t: Teacher) =
    let calibration : Calibration.CalibrationBatch =
        { Tokens = Rand.ints 9 t.Config.Vocab (2 * 40); B = 2; T = 40; Source = "random"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }
    let options = { Convert.ConvertOptions.defaults Convert.InitStrategy.TaylorCalibrate with Align = { Align.AlignOptions.defaults with Steps = 8 } }
    let setup = GaS2Setup.create options (Some calibration) |> Result.defaultWith (fun e -> failtest (InputError.describe e))
    [ "GA-S2 (taylor-calibrate)", Plan.GaS2(evalInput t, setup); "AR", Plan.Ar(evalInput t) ]

[<Tests>]
let tests =
    testList "Parallel.MultiDeviceSelection" [
        for name, plan in plans (Stages.StudentTests.tinyTeacher ()) do
            test $"{name}: two CPU workers give the one-CPU scores and layers bit for bit" {
                let t = Stages.StudentTests.tinyTeacher ()
                let input = { Teacher = t; TeacherPath = "tiny"; K = 1; Plan = plan }
                let single = run (Backends.cpu.Get()) input None CancellationToken.None
                let workers = List.ofSeq (DeviceSet.Open "cpu:0,cpu:1")
                try
                    let progress = System.Collections.Concurrent.ConcurrentBag<SelectionProgress>()
                    let reporter = { new System.IProgress<SelectionProgress> with member _.Report p = progress.Add p }
                    let two = runOn workers input (Some reporter) CancellationToken.None
                    let m1, m2 = single.Measured.Value, two.Measured.Value
                    Expect.equal m2.Scores m1.Scores "every layer's perplexity and score, bit for bit"
                    Expect.equal m2.TeacherPerplexity m1.TeacherPerplexity "teacher perplexity"
                    Expect.equal two.Kept single.Kept "kept layers"
                    Expect.equal (m1.Scores |> List.map (fun s -> s.Perplexity) |> List.distinct |> List.length) 3 "the layers' scores differ (not a vacuous comparison)"
                    let total = (Seq.head progress).Total
                    Expect.isTrue (progress |> Seq.exists (fun p -> p.Done = float total)) "progress reaches the total"
                    Expect.isTrue (progress |> Seq.forall (fun p -> p.Done <= float total + 1e-9)) "progress never passes the total"
                finally for w in workers do w.Backend.Dispose()
            }
    ]
