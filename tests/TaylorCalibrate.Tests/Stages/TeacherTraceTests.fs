/// The streamed teacher trace: tracing a batch window by window gives what one forward over the whole batch
/// gives (inputs, contexts, outputs and the per-head statistics), so the calibration size no longer bounds
/// the teacher's activation memory.
module TaylorCalibrate.Tests.Stages.TeacherTraceTests

open Expecto
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

[<Tests>]
let tests =
    testList "Stages.TeacherTrace" [
        test "tracing in windows equals tracing the whole batch" {
            let be = Backends.cpu.Get()
            let t = StudentTests.tinyTeacher ()
            let batch : Calibration.CalibrationBatch =
                { Tokens = Rand.ints 5 t.Config.Vocab (5 * 24); B = 5; T = 24; Source = "random"; Documents = 1; EvalSource = None
                  OverlappingDocuments = 0 }
            use dt = new DeviceDecoder(be, t)
            let whole = TeacherTrace.run dt batch [ 1; 2 ]
            // Windows of 2 chunks: 2 + 2 + 1, the last one shorter.
            let streamed = TeacherTrace.runStreamed dt batch [ 1; 2 ] 2
            Expect.equal (streamed.B, streamed.T) (5, 24) "shape"
            for KeyValue(i, w) in whole.Layers do
                let s = streamed.Layers[i]
                // Every row is computed independently of the batch size; only GEMM blocking could differ:
                // fp32 rounding over D = 16 terms, far below 1e-5.
                for name, a, b in [ "X", w.X, s.X; "Context", w.Context, s.Context; "Output", w.Output, s.Output ] do
                    Expect.equal b.Length a.Length $"layer {i} {name} length"
                    Expect.isLessThan (Numeric.maxAbs (Array.map float a) b) 1e-5 $"layer {i} {name}"
                // Per-b means re-weighted by window size: double sums of the same fp32 values.
                for h in 0 .. t.Config.Heads - 1 do
                    Expect.floatClose Accuracy.high s.MeanDistance[h] w.MeanDistance[h] $"layer {i} distance {h}"
                    Expect.floatClose Accuracy.high s.Entropy[h] w.Entropy[h] $"layer {i} entropy {h}"
        }
    ]
