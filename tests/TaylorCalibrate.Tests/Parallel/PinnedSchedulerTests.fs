/// The scheduler's pinned mode and per-worker values (Parallel/LayerScheduler.fs): each job runs on the worker
/// that owns it, in job order there; a failing job names its device and the other jobs still run; a worker's
/// value is made once, by the first job that asks, and disposed with the set.
module TaylorCalibrate.Tests.Parallel.PinnedSchedulerTests

open System
open System.Collections.Concurrent
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Parallel

let private withWorkers n (body: DeviceWorker list -> unit) =
    let ws = List.ofSeq (DeviceSet.Open(String.Join(",", [ for i in 0 .. n - 1 -> $"cpu:{i}" ])))
    try body ws finally for w in ws do w.Backend.Dispose()

type private Counted(log: ConcurrentBag<string>, id: string) =
    member _.Id = id
    interface IDisposable with
        member _.Dispose() = log.Add id

[<Tests>]
let tests =
    testList "Parallel.PinnedScheduler" [
        test "each job runs on its owner, in job order there, and results come back in job order" {
            withWorkers 3 (fun ws ->
                let seen = ConcurrentDictionary<string, ConcurrentQueue<int>>()
                let o =
                    LayerScheduler.runPinned ws [ 0 .. 10 ] (fun j -> j % 3) (fun w j ->
                        seen.GetOrAdd(w.Id, fun _ -> ConcurrentQueue()).Enqueue j
                        Thread.Sleep((10 - j) % 4)
                        j * 10) CancellationToken.None
                Expect.isEmpty o.Failed "no failure"
                Expect.sequenceEqual (o.Done |> List.map (fun (j, d, r) -> j, d, r)) [ for j in 0 .. 10 -> j, $"cpu:{j % 3}", j * 10 ] "owner and job order"
                for wi in 0 .. 2 do
                    Expect.sequenceEqual seen[$"cpu:{wi}"] [ for j in 0 .. 10 do if j % 3 = wi then yield j ] $"cpu:{wi} ran its jobs in order")
        }
        test "a failing pinned job names its device and the other jobs still run" {
            withWorkers 2 (fun ws ->
                let o =
                    LayerScheduler.runPinned ws [ 0 .. 5 ] (fun j -> j % 2) (fun _ j ->
                        if j = 3 then failwith "boom" else j) CancellationToken.None
                Expect.equal (o.Done |> List.map (fun (j, _, _) -> j)) [ 0; 1; 2; 4; 5 ] "the others finished, job 5 after the failure on its device"
                let e = Expect.throwsC (fun () -> LayerScheduler.orRaise (fun j -> $"layer {j}") o |> ignore) id
                Expect.stringContains e.Message "layer 3 failed on cpu:1: boom" "names the job and its device")
        }
        test "an owner outside the worker list is refused" {
            withWorkers 2 (fun ws ->
                Expect.throwsT<ArgumentException> (fun () ->
                    LayerScheduler.runPinned ws [ 0; 1 ] (fun j -> j * 2) (fun _ j -> j) CancellationToken.None |> ignore) "owner 2 of 2 workers")
        }
        test "per-worker values are made once per worker that asks and disposed with the set" {
            withWorkers 3 (fun ws ->
                let made = ConcurrentBag<string>()
                let disposed = ConcurrentBag<string>()
                let values = new LayerScheduler.PerWorker<Counted>(fun w -> made.Add w.Id; new Counted(disposed, w.Id))
                // Workers 0 and 1 only ask (twice each); worker 2 never does.
                LayerScheduler.runPinned ws [ 0 .. 3 ] (fun j -> j % 2) (fun w _ -> (values.Of w).Id) CancellationToken.None
                |> LayerScheduler.orRaise string
                |> List.iter (fun (_, d, id) -> Expect.equal id d "the worker's own value")
                Expect.sequenceEqual (Seq.sort made) [ "cpu:0"; "cpu:1" ] "made once per asking worker"
                (values :> IDisposable).Dispose()
                Expect.sequenceEqual (Seq.sort disposed) [ "cpu:0"; "cpu:1" ] "each made value disposed")
        }
    ]
