/// What every command shares: how a user-fixable error leaves the program (one line, exit code 2), and
/// opening the backend named by --device.
module TaylorCalibrate.Cli.Common

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline

/// A user-fixable problem: printed as one line, exit code 2, no stack trace (unless --verbose).
exception UsageError of string

/// Stops the command with a one-line error and exit code 2.
let usageError (msg: string) : 'a = raise (UsageError msg)

/// The user stopped the command (Ctrl-C): reported as "interrupted", exit code 130, with the command that
/// continues the run when there is one.
exception Interrupted of continueWith: string option

/// The command line of this run with `flag` added (if absent), quoted for a POSIX shell: what continues it.
let commandLineWith (flag: string) =
    let args = Environment.GetCommandLineArgs() |> Array.skip 1 |> List.ofArray
    let args = if List.contains flag args then args else args @ [ flag ]
    let quote (a: string) = if a <> "" && a |> Seq.forall (fun c -> Char.IsLetterOrDigit c || "-_./:=,".Contains c) then a else "'" + a.Replace("'", "'\\''") + "'"
    "taylor-calibrate " + (args |> List.map quote |> String.concat " ")

/// Unwraps a loader result, turning an InputError into a usage error.
let orFail (r: Result<'a, InputError>) : 'a =
    match r with
    | Ok v -> v
    | Error e -> usageError (InputError.describe e)

/// Opens the backend of a --device option (default auto).
let openDevice (spec: string option) : IBackend =
    try Devices.Open(defaultArg spec "auto")
    with :? DeviceException as e -> usageError e.Message

/// Warns once on stderr when a text file (or the *.txt under a folder) is not clean UTF-8 (invalid sequences
/// or binary bytes), naming the file and the byte offset where that begins.
let warnIfNotCleanText (path: string) =
    TaylorCalibrate.Pipeline.Text.Corpus.textWarning path |> Option.iter (eprintfn "warning: %s")

/// Documents of a text file or directory (Corpus.readDocuments), with warnIfNotCleanText.
let readText (path: string) : string list =
    let docs = TaylorCalibrate.Pipeline.Text.Corpus.readDocuments path |> orFail
    warnIfNotCleanText path
    docs

/// A float option that must be a finite number (NaN and ±Inf parse as floats but mean nothing here).
let finite (option: string) (v: float) : float =
    if Double.IsNaN v || Double.IsInfinity v then usageError $"{option} {v}: expected a finite number"
    v

/// A path option that must not be empty or blank.
let nonEmptyPath (option: string) (p: string) : string =
    if String.IsNullOrWhiteSpace p then usageError $"{option} \"{p}\": expected a path"
    p

/// The backends of a --device list (`vulkan:0,vulkan:1`, `cpu:0,cpu:1`, mixed): the workers of per-layer
/// work. Dispose to close them all.
type DeviceWorkers(workers: DeviceWorker list) =
    member _.Workers = workers
    /// The first device: where work that is not split per layer runs.
    member _.First = workers.Head.Backend
    /// The devices as the reports name them (`cpu` for one device, else the ids joined by commas).
    member _.Name = match workers with [ w ] -> w.Backend.Name | _ -> workers |> List.map (fun w -> w.Id) |> String.concat ","
    interface IDisposable with
        member _.Dispose() = for w in workers do w.Backend.Dispose()

/// Opens the backends of a --device option that may be a comma-separated list (default auto).
let openWorkers (spec: string option) : DeviceWorkers =
    try new DeviceWorkers(List.ofSeq (DeviceSet.Open(defaultArg spec "auto")))
    with :? DeviceException as e -> usageError e.Message

/// The MPI world when an MPI launcher (mpirun, srun) started this process, else None (MPI is not loaded).
/// A launched process that cannot load Open MPI stops with a one-line error.
let startMpi () : Mpi.MpiWorld option =
    try Option.ofObj (Mpi.MpiWorld.StartIfLaunched()) with :? Mpi.MpiException as e -> usageError e.Message

/// Runs a command's body on one rank of an MPI job: a rank that fails prints its error and stops the whole
/// job (MPI_Abort), so no rank waits forever for it; the checkpoints written so far stay good (they are
/// written atomically). Without MPI, just the body.
let onEveryRank (world: Mpi.MpiWorld option) (body: unit -> int) : int =
    match world with
    | None -> body ()
    | Some w ->
        // When a rank dies (killed, out of memory) the launcher stops the others with SIGTERM while they wait
        // in a collective: say so on the way out (the default handling then ends the process).
        use _stopped =
            Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, fun _ ->
                Console.Error.Write($"error: rank {w.Rank} of {w.Size}: stopped by the MPI launcher (SIGTERM), because another rank failed or the job was cancelled; the checkpoints written so far stay good\n"))
        let fail (code: int) (msg: string) =
            // One write per line, so the lines of ranks that fail together do not interleave.
            Console.Error.Write($"error: rank {w.Rank} of {w.Size}: {msg}\n")
            w.Abort code
            code
        let code =
            try body () with
            | UsageError msg -> fail 2 msg
            | :? OperationCanceledException -> fail 130 "interrupted"
            | e -> fail 1 e.Message
        // A rank that stops with an error it reported itself must still stop the others.
        if code <> 0 && w.Size > 1 then w.Abort code
        (w :> IDisposable).Dispose()
        code

/// This rank's backend: entry (local rank mod entries) of a --device list, so `--device vulkan:0,vulkan:1` under
/// `mpirun -np 2` puts each rank of a node on its own GPU. Without MPI, the --device option as usual.
let openRankDevice (world: Mpi.MpiWorld option) (spec: string option) : IBackend =
    match world with
    | None -> openDevice spec
    | Some w ->
        try
            let ids = DeviceSet.Resolve(defaultArg spec "auto")
            Devices.OpenResolved(ids[w.LocalRank % ids.Count], 0)
        with :? DeviceException as e -> usageError e.Message
