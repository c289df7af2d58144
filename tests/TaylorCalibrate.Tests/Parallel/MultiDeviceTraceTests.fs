/// The teacher trace with its windows spread over several devices (TeacherTrace.runStreamedOn): two CPU
/// workers give the one-CPU streamed trace bit for bit; CPU + Vulkan (lavapipe) gives each window bit for bit
/// what a one-device run of the kind that traced it gives, and the whole within float32 summation order of
/// the CPU trace.
module TaylorCalibrate.Tests.Parallel.MultiDeviceTraceTests

open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

let private layers = [ 0; 2 ]

/// 5 chunks of 24 tokens: windows of 2 chunks are 2 + 2 + 1 (the last one shorter).
let private batch (t: Teacher) : Calibration.CalibrationBatch =
    { Tokens = Rand.ints 5 t.Config.Vocab (5 * 24); B = 5; T = 24; Source = "random"; Documents = 1; EvalSource = None
      OverlappingDocuments = 0 }

let private window = 2

let private oneDevice (be: IBackend) (t: Teacher) =
    use dt = new DeviceDecoder(be, t)
    TeacherTrace.runStreamed dt (batch t) layers window

let private onWorkers (workers: DeviceWorker list) (t: Teacher) =
    use copies = new TeacherTrace.TeacherCopies(t)
    TeacherTrace.runStreamedOn workers copies (batch t) layers window CancellationToken.None

let private arrays (l: TeacherTrace.LayerTrace) = [ "X", l.X, 16; "Context", l.Context, 16; "Output", l.Output, 16 ]

[<Tests>]
let tests =
    testList "Parallel.MultiDeviceTrace" [
        test "two CPU workers give the one-CPU trace bit for bit" {
            let t = Stages.StudentTests.tinyTeacher ()
            let single = oneDevice (Backends.cpu.Get()) t
            let workers = List.ofSeq (DeviceSet.Open "cpu:0,cpu:1")
            try
                let two = onWorkers workers t
                Expect.equal (two.B, two.T) (single.B, single.T) "shape"
                Expect.equal (two.Layers |> Map.keys |> List.ofSeq) layers "the traced layers"
                // Records compare arrays element by element: every value, distances and entropies included.
                for li in layers do Expect.equal two.Layers[li] single.Layers[li] $"layer {li} bit-identical"
            finally for w in workers do w.Backend.Dispose()
        }
        test "CPU + Vulkan: each window equals the one-device run of its kind" {
            let t = Stages.StudentTests.tinyTeacher ()
            let cpu = Backends.cpu.Get()
            let vk = Backends.vulkan.Get()
            let onCpu = oneDevice cpu t
            let onVk = oneDevice vk t
            let mixed = onWorkers [ DeviceWorker("cpu:0", cpu); DeviceWorker("vulkan", vk) ] t
            let rowLength = 24 * 16 // one chunk of (T, D) = (T, H·hd) values
            for li in layers do
                let m, c, v = mixed.Layers[li], onCpu.Layers[li], onVk.Layers[li]
                for name, a, _ in arrays m do
                    let _, fromCpu, _ = arrays c |> List.find (fun (n, _, _) -> n = name)
                    let _, fromVk, _ = arrays v |> List.find (fun (n, _, _) -> n = name)
                    for b0, nb in TeacherTrace.windows 5 window do
                        let part (x: float32[]) = x[b0 * rowLength .. (b0 + nb) * rowLength - 1]
                        Expect.isTrue (part a = part fromCpu || part a = part fromVk)
                            $"layer {li} {name} chunks {b0}..{b0 + nb - 1}: bit-identical to the CPU or the Vulkan trace"
                    // Between kinds only summation order differs: through at most 3 layers of width D = 16 (K ≤ 24
                    // terms per dot product), each fp32 sum is off by ≲ K·2^-24 ≈ 1.5e-6 relative, and the
                    // layers compound a few of those: ~1e-5 of the values' scale (~1) at most. Measured on
                    // lavapipe: 3.0e-6 (layer 2's X); 1e-4 leaves a 30x margin and is far below the values.
                    let gap = Numeric.maxAbs (Array.map float fromCpu) a
                    Expect.isLessThan gap 1e-4 $"layer {li} {name}: CPU vs mixed max |difference| {gap}"
                    Expect.isGreaterThan (Numeric.maxAbs (Array.zeroCreate a.Length) a) 0.1 $"layer {li} {name}: values are not all ~0"
                // The statistics are double means of per-b fp32 values of the same kernels: measured 6.5e-8
                // relative on lavapipe; 1e-4 as for the arrays.
                for h in 0 .. t.Config.Heads - 1 do
                    Expect.floatClose { absolute = 1e-4; relative = 1e-4 } m.MeanDistance[h] c.MeanDistance[h] $"layer {li} distance {h}"
                    Expect.floatClose { absolute = 1e-4; relative = 1e-4 } m.Entropy[h] c.Entropy[h] $"layer {li} entropy {h}"
        }
    ]
