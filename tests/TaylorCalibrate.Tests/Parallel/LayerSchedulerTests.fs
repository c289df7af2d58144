/// Several backends in one process: device lists (parsing, refusals) and the per-layer scheduler (every job
/// runs once, results come back in job order whatever ran them, a failing job names its device and the
/// others' results are kept, cancellation stops it).
module TaylorCalibrate.Tests.Parallel.LayerSchedulerTests

open System
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Parallel

let private refused (spec: string) (fragment: string) =
    let e = Expect.throwsC (fun () -> DeviceSet.Resolve spec |> ignore) id
    Expect.isTrue (e :? DeviceException) $"{spec}: a DeviceException, got {e.GetType().Name}"
    Expect.stringContains e.Message fragment $"{spec}: the message says what is wrong"
    Expect.stringContains e.Message spec $"{spec}: the message names the option's value"

let private cpuWorkers n =
    List.ofSeq (DeviceSet.Open(String.Join(",", [ for i in 0 .. n - 1 -> $"cpu:{i}" ])))

[<Tests>]
let tests =
    testList "Parallel.LayerScheduler" [
        testList "device lists" [
            test "entries resolve to canonical ids in the order given" {
                Expect.sequenceEqual (DeviceSet.Resolve "cpu:1, cpu") [ "cpu:1"; "cpu:0" ] "cpu is cpu:0; spaces ignored"
            }
            test "a device named twice is refused" { refused "cpu:0,cpu:0" "named twice" }
            test "one device under two spellings is refused" { refused "cpu,cpu:0" "same device cpu:0" }
            test "an unknown device is refused" { refused "cpu,gpu9" "expected auto, cpu" }
            test "a bad CPU worker number is refused" { refused "cpu:x" "cpu:N" }
            test "an empty entry is refused" { refused "cpu,,cpu:1" "empty entry" }
            test "a Vulkan device named by index and by name is refused" {
                let vk = try Some(Devices.Resolve TaylorCalibrate.Tests.Backends.vulkanSpec) with :? DeviceException -> None
                match vk with
                | None -> skiptest "no Vulkan device"
                | Some id -> refused $"{id},{TaylorCalibrate.Tests.Backends.vulkanSpec}" $"same device {id}"
            }
            test "two CPU workers are two backend instances" {
                let ws = cpuWorkers 2
                try
                    Expect.equal (ws |> List.map (fun w -> w.Id)) [ "cpu:0"; "cpu:1" ] "ids"
                    Expect.isFalse (obj.ReferenceEquals(ws[0].Backend, ws[1].Backend)) "two backend instances"
                finally for w in ws do w.Backend.Dispose()
            }
        ]
        testList "scheduler" [
            test "every job runs once and results come back in job order" {
                let ws = cpuWorkers 3
                try
                    let runs = Collections.Concurrent.ConcurrentBag<int>()
                    let o = LayerScheduler.run ws [ 0 .. 19 ] (fun _ j -> runs.Add j; Thread.Sleep(j % 3); j * j) CancellationToken.None
                    Expect.isEmpty o.Failed "no failure"
                    Expect.sequenceEqual (o.Done |> List.map (fun (j, _, r) -> j, r)) [ for j in 0 .. 19 -> j, j * j ] "job order"
                    Expect.sequenceEqual (Seq.sort runs) [ 0 .. 19 ] "each job exactly once"
                    Expect.isTrue (o.Done |> List.forall (fun (_, d, _) -> List.contains d [ "cpu:0"; "cpu:1"; "cpu:2" ])) "devices recorded"
                finally for w in ws do w.Backend.Dispose()
            }
            test "a failing job names its device and the others' work is kept" {
                let ws = cpuWorkers 2
                try
                    let o = LayerScheduler.run ws [ 0 .. 5 ] (fun w j -> if j = 3 then failwith $"boom on {w.Id}" else j) CancellationToken.None
                    Expect.equal (o.Done |> List.map (fun (j, _, _) -> j)) [ 0; 1; 2; 4; 5 ] "the other jobs finished"
                    match o.Failed with
                    | [ f ] ->
                        Expect.equal f.Job 3 "the failed job"
                        Expect.stringContains f.Error.Message f.Device "the device recorded is the one it ran on"
                    | fs -> failtest $"expected one failure, got {fs.Length}"
                    let e = Expect.throwsC (fun () -> LayerScheduler.orRaise (fun j -> $"layer {j}") o |> ignore) id
                    Expect.stringContains e.Message "layer 3 failed on cpu:" "names the layer and the device"
                    Expect.stringContains e.Message "5 other job(s) finished" "says the rest was kept"
                finally for w in ws do w.Backend.Dispose()
            }
            test "one worker lets a failure propagate unchanged" {
                let ws = cpuWorkers 1
                try
                    Expect.throwsT<InvalidOperationException> (fun () ->
                        LayerScheduler.run ws [ 0; 1 ] (fun _ j -> if j = 1 then invalidOp "x" else j) CancellationToken.None |> ignore) "same exception type"
                finally for w in ws do w.Backend.Dispose()
            }
            test "cancellation stops the workers" {
                let ws = cpuWorkers 2
                try
                    use cts = new CancellationTokenSource()
                    let started = ref 0
                    // A job that began before the cancel waits for it, so no worker can race through the
                    // remaining jobs between the 4th job's start and its Cancel() call: after the cancel each
                    // of the 2 workers has begun at most one more job.
                    let work _ j =
                        let n = Interlocked.Increment started
                        if n = 4 then cts.Cancel()
                        elif n > 4 then cts.Token.WaitHandle.WaitOne() |> ignore
                        j
                    Expect.throwsT<OperationCanceledException> (fun () -> LayerScheduler.run ws [ 0 .. 99 ] work cts.Token |> ignore) "cancelled"
                    Expect.isLessThanOrEqual started.Value (4 + ws.Length) "jobs after the cancel did not start"
                finally for w in ws do w.Backend.Dispose()
            }
        ]
    ]
