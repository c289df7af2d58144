/// Convert with the converted layers spread over several backends of one process (Convert.runOnWorkers):
/// two CPU workers give the one-CPU student bit for bit, and CPU + Vulkan (lavapipe) gives each layer bit for
/// bit what a one-device run of the kind that converted it gives. Between kinds the layers differ only by
/// float32 summation order (see the tolerance below).
module TaylorCalibrate.Tests.Parallel.MultiDeviceConvertTests

open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

let private kept = [ 1 ]

/// Taylor-Calibrate (Phase 1 + 40 Phase-2 steps) of the tiny teacher's layers 0 and 2, traced on `traceOn`.
let private convert (traceOn: IBackend) (workers: DeviceWorker list) =
    let t = Stages.StudentTests.tinyTeacher ()
    let batch : Calibration.CalibrationBatch =
        { Tokens = Rand.ints 9 t.Config.Vocab (2 * 40); B = 2; T = 40; Source = "random"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }
    use dt = new DeviceDecoder(traceOn, t)
    let trace = TeacherTrace.run dt batch [ 0; 2 ]
    let o = { Convert.ConvertOptions.defaults Convert.InitStrategy.TaylorCalibrate with Align = { Align.AlignOptions.defaults with Steps = 40 } }
    Convert.runOnWorkers workers t trace None kept o Convert.Hooks.none CancellationToken.None

let private losses (reports: Convert.LayerReport list) =
    reports |> List.map (fun r -> r.Layer, r.Alignment |> Option.map (fun a -> a.Losses) |> Option.defaultValue [||])

/// Largest |a − b| / (max |b| over the tensor) over every tensor of two GDN layers.
let private relativeGap (a: GdnWeights) (b: GdnWeights) =
    let pairs = [ a.Wq, b.Wq; a.Wk, b.Wk; a.Wv, b.Wv; a.Wa, b.Wa; a.Wb, b.Wb; a.Wg, b.Wg; a.ALog, b.ALog; a.DtBias, b.DtBias ]
    pairs |> List.map (fun (x, y) ->
        let scale = y |> Array.map abs |> Array.max |> max 1e-30f
        Array.map2 (fun p q -> abs (p - q) / scale) x y |> Array.max) |> List.max

[<Tests>]
let tests =
    testList "Parallel.MultiDeviceConvert" [
        test "two CPU workers give the one-CPU student bit for bit" {
            let one = Backends.cpu.Get()
            let single, singleReports, _ = convert one [ DeviceWorker("cpu", one) ]
            let workers = List.ofSeq (DeviceSet.Open "cpu:0,cpu:1")
            try
                let two, twoReports, devices = convert one workers
                Expect.equal two.Gdn single.Gdn "GDN weights bit-identical"
                Expect.equal (losses twoReports) (losses singleReports) "alignment losses bit-identical"
                Expect.equal (devices |> Map.toList |> List.map fst) [ 0; 2 ] "each converted layer ran once"
            finally for w in workers do w.Backend.Dispose()
        }
        test "CPU + Vulkan: each layer equals the one-device run of its kind" {
            let cpu = Backends.cpu.Get()
            let vk = Backends.vulkan.Get()
            // The trace is host data computed once (on the CPU), so only the per-layer work differs by device.
            let onCpu, _, _ = convert cpu [ DeviceWorker("cpu:0", cpu) ]
            let onVk, _, _ = convert cpu [ DeviceWorker("vulkan", vk) ]
            let mixed, _, devices = convert cpu [ DeviceWorker("cpu:0", cpu); DeviceWorker("vulkan", vk) ]
            for KeyValue(layer, device) in devices do
                let expected = if device = "vulkan" then onVk.Gdn[layer] else onCpu.Gdn[layer]
                Expect.equal mixed.Gdn[layer] expected $"layer {layer} (on {device}) bit-identical to a one-device {device} run"
            // CPU and Vulkan sum in different orders: each GEMM/reduction of K ≤ 80 terms differs by at most
            // ~K·2^-24 ≈ 5e-6 relative, and AdamW's update m/√v is scale-free, so a relative gradient error
            // becomes a like-sized relative error of each of the 40 updates (lr ≤ 1e-3), not an amplified one.
            // Measured on lavapipe: 3.0e-6 (layer 0) and 1.7e-6 (layer 2) of each tensor's largest entry. The
            // bound 1e-4 leaves 30x headroom; the conversion itself moves the weights by ~10x their scale
            // (Phase 1 + 2 from the naive skeleton), checked so the comparison is not vacuous.
            let naive = Skeleton.build (Stages.StudentTests.tinyTeacher ()) kept GqaExpand.Heads 0
            for layer in [ 0; 2 ] do
                let gap = relativeGap onCpu.Gdn[layer] onVk.Gdn[layer]
                Expect.isLessThan gap 1e-4f $"layer {layer}: CPU vs Vulkan relative gap {gap}"
                Expect.isGreaterThan (relativeGap onCpu.Gdn[layer] naive.Gdn[layer]) 1e-2f $"layer {layer}: the conversion changed the weights"
        }
    ]
