/// Runs independent jobs (one per converted layer) over several backends of one process
/// (docs/architecture.md "Scale-out"). Each worker thread owns one backend and takes the next job, in job
/// order, whenever it is free; a job's result depends only on the job and the backend's kind, never on which
/// worker ran it or when, so a two-device run of same-kind backends is bit-identical to a one-device run.
/// A job that throws is recorded with the device it ran on; the other workers finish their jobs, so work that
/// the caller persisted per job (aligned layers) is kept. With one worker everything runs on the calling thread
/// and a failing job's exception propagates unchanged (as before there were workers): its device is the only one.
/// `runPinned` runs each job on the worker that owns it instead, for work whose state stays on one device
/// (Stage 1's layers); `PerWorker` holds one value per worker (its copy of the teacher).
module TaylorCalibrate.Pipeline.Parallel.LayerScheduler

open System
open System.Collections.Concurrent
open System.Threading
open TaylorCalibrate.Backend

/// A job that failed: which job, on which device, and why.
type JobFailure<'k> = { Job: 'k; Device: string; Error: exn }

/// What a run did: each finished job's result and the device that ran it, in job order, and the failures.
type Outcome<'k, 'r> = { Done: ('k * string * 'r) list; Failed: JobFailure<'k> list }

/// One or more jobs failed (after every other job finished). The message names each job and its device.
exception JobsFailedException of message: string * failures: (string * string * exn) list
    with override this.Message = this.message

/// Throws JobsFailedException when a job failed (`describe` names a job, e.g. "layer 3"), else the results.
let orRaise (describe: 'k -> string) (o: Outcome<'k, 'r>) : ('k * string * 'r) list =
    match o.Failed with
    | [] -> o.Done
    | failures ->
        let line (f: JobFailure<'k>) = $"{describe f.Job} failed on {f.Device}: {f.Error.Message}"
        let kept = if o.Done.IsEmpty then "" else $" ({o.Done.Length} other job(s) finished and were kept)"
        raise (JobsFailedException(String.Join("; ", failures |> List.map line) + kept,
                                   failures |> List.map (fun f -> describe f.Job, f.Device, f.Error)))

/// A worker thread's stack: the main thread's usual 8 MiB (a new thread's default is smaller), since the
/// backends run the same kernels on it.
let private workerStack = 8 * 1024 * 1024

/// The shared loop of `run` and `runPinned`: worker w (its index in `workers`) asks `take w` for the index of
/// its next job, None when it has none left.
let private runWith (workers: DeviceWorker list) (jobArray: 'k[]) (take: int -> int option) (work: DeviceWorker -> 'k -> 'r)
                    (ct: CancellationToken) : Outcome<'k, 'r> =
    if workers.IsEmpty then invalidArg "workers" "at least one device is needed"
    let results : ('k * string * 'r) option[] = Array.create jobArray.Length None
    let failures = ConcurrentBag<int * JobFailure<'k>>()
    let mutable cancelled = false
    let single = workers.Length = 1
    let loop (wi: int) (w: DeviceWorker) () =
        let mutable go = true
        while go do
            if ct.IsCancellationRequested then
                cancelled <- true
                go <- false
            else
                match take wi with
                | None -> go <- false
                | Some i ->
                    if single then results[i] <- Some(jobArray[i], w.Id, work w jobArray[i])
                    else
                        try results[i] <- Some(jobArray[i], w.Id, work w jobArray[i])
                        with
                        | :? OperationCanceledException -> cancelled <- true; go <- false
                        | e -> failures.Add(i, { Job = jobArray[i]; Device = w.Id; Error = e })
    match workers with
    | [ w ] -> loop 0 w ()
    | _ ->
        let threads =
            workers |> List.mapi (fun wi w -> Thread(ThreadStart(loop wi w), workerStack, Name = $"worker {w.Id}", IsBackground = true))
        for t in threads do t.Start()
        for t in threads do t.Join()
    if cancelled then raise (OperationCanceledException ct)
    { Done = results |> Array.choose id |> List.ofArray
      Failed = failures |> Seq.sortBy fst |> Seq.map snd |> List.ofSeq }

/// Runs `work worker job` for every job. Cancellation stops workers between jobs and is rethrown as
/// OperationCanceledException after the running jobs returned (a job that observes the token throws it itself).
let run (workers: DeviceWorker list) (jobs: 'k list) (work: DeviceWorker -> 'k -> 'r) (ct: CancellationToken) : Outcome<'k, 'r> =
    let jobArray = Array.ofList jobs
    let mutable next = -1
    let take _ =
        let i = Interlocked.Increment &next
        if i < jobArray.Length then Some i else None
    runWith workers jobArray take work ct

/// Like `run`, but each job runs on the worker `owner job` names (an index into `workers`), in job order on
/// that worker: for work whose state lives on one device (a layer's parameters and optimizer moments while
/// Stage 1 trains). Failures and cancellation as in `run`.
let runPinned (workers: DeviceWorker list) (jobs: 'k list) (owner: 'k -> int) (work: DeviceWorker -> 'k -> 'r)
              (ct: CancellationToken) : Outcome<'k, 'r> =
    let jobArray = Array.ofList jobs
    let queues =
        Array.init workers.Length (fun wi ->
            [| for i in 0 .. jobArray.Length - 1 do if owner jobArray[i] = wi then yield i |])
    for i in 0 .. jobArray.Length - 1 do
        let o = owner jobArray[i]
        if o < 0 || o >= workers.Length then invalidArg "owner" $"job {i} names worker {o}; there are {workers.Length}"
    let cursors = Array.zeroCreate workers.Length
    let take wi =
        let c = cursors[wi]
        if c < queues[wi].Length then
            cursors[wi] <- c + 1
            Some(queues[wi][c])
        else None
    runWith workers jobArray take work ct

/// One value per worker, made by the worker the first time it asks (a worker's own copy of the teacher, say),
/// so a device no job reached uploads nothing. Dispose disposes the values made.
type PerWorker<'a when 'a :> IDisposable>(make: DeviceWorker -> 'a) =
    let made = ConcurrentDictionary<string, Lazy<'a>>()
    /// `w`'s value, made on first use.
    member _.Of(w: DeviceWorker) : 'a = made.GetOrAdd(w.Id, fun _ -> lazy (make w)).Value
    interface IDisposable with
        member _.Dispose() =
            for KeyValue(_, v) in made do
                if v.IsValueCreated then v.Value.Dispose()
