/// The Taylor diagnostic (docs/method.md §11e) and the per-layer alignment checkpoints behind --resume. (Named
/// after StudentTests alphabetically: the wildcard compile order lets it reuse the tiny teacher.)
module TaylorCalibrate.Tests.Stages.TaylorDiagnosticTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

[<Tests>]
let tests =
    testList "Stages.Diagnostic" [
        test "Taylor diagnostic: exact when every row attends to one token (T = 1); finite and ordered on a tiny teacher" {
            let be = Backends.cpu.Get()
            let t = StudentTests.tinyTeacher ()
            use dt = new DeviceDecoder(be, t)
            for T in [ 1; 24 ] do
                let batch : Calibration.CalibrationBatch =
                    { Tokens = Rand.ints 5 t.Config.Vocab (3 * T); B = 3; T = T; Source = "random"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }
                let trace = TeacherTrace.run dt batch [ 1 ]
                let d = TaylorDiagnostic.run t.Config t.Weights.Layers[1] trace.Layers[1] 3 T
                for h in 0 .. t.Config.Heads - 1 do
                    if T = 1 then
                        Expect.isLessThan d.FirstOrder[h] 1e-5 "one key: softmax = first order"
                        Expect.isLessThan d.SecondOrder[h] 1e-5 "one key: softmax = second order"
                    else
                        Expect.isTrue (Double.IsFinite d.SecondOrder[h]) "second order is always finite (denominator > 0)"
                        Expect.isGreaterThan d.SecondOrder[h] 0.0 "approximation error is positive"
                    Expect.isTrue (d.NonPositiveFirstOrder[h] >= 0 && d.NonPositiveFirstOrder[h] <= 3 * T) "a count of rows"
        }

        test "alignment checkpoint round trip (resume)" {
            let w : GdnWeights =
                { Wq = Rand.normal 1 1.0 12; Wk = Rand.normal 2 1.0 12; Wv = Rand.normal 3 1.0 12; Wg = Rand.normal 4 1.0 12
                  Wa = Rand.normal 5 1.0 4; Wb = Rand.normal 6 1.0 4; ALog = Rand.normal 7 1.0 2; DtBias = Rand.normal 8 1.0 2
                  ONorm = Rand.normal 9 1.0 2; Wo = Rand.normal 10 1.0 12 }
            let r : Align.AlignResult =
                { Layer = 3; Losses = [| 0.5; 0.25; 0.125 |]; BestLoss = 0.125; BestStep = 2; GradNorms = [| 1.5; 0.1 |]; Seconds = 0.3 }
            let dir = Path.Combine(Path.GetTempPath(), $"tc-align-{Guid.NewGuid():N}")
            try
                Expect.isNone (AlignCheckpoint.tryLoad dir 3) "nothing persisted yet"
                AlignCheckpoint.save dir 3 w r
                let w2, r2 = (AlignCheckpoint.tryLoad dir 3).Value
                Expect.equal w2 w "weights"
                Expect.equal r2 r "result"
            finally
                try Directory.Delete(dir, true) with _ -> ()
        }
    ]
