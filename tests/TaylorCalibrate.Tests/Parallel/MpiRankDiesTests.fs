/// A rank of `mpirun -np 2 taylor-calibrate distill --stage 2` killed with SIGKILL after the first checkpoint
/// (Open MPI on localhost; skipped with a message when mpirun is absent): the job stops within a bounded time
/// with a message saying a rank died, the newest checkpoint is complete and verifies, and `--resume` finishes
/// on the trajectory of an uninterrupted run (within DataParallelTests.stage2Tolerance).
module TaylorCalibrate.Tests.Parallel.MpiRankDiesTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

/// 156 steps of 128 tokens (batch 4 × accum 2 × seq-len 16), a checkpoint every 12 steps: at a few thousand
/// tokens per second the run goes on for seconds after its first checkpoint.
let private args (f: TinyDistill.Fixture) (out: string) =
    [ "distill"; "--stage"; "2"; "--student"; f.StudentDir; "--teacher"; f.TeacherDir; "--train-text"; f.TrainText
      "--eval-text"; f.EvalText; "--tokens"; "19968"; "--seq-len"; "16"; "--batch"; "4"; "--accum"; "2"
      "--checkpoint-every"; "1536"; "--lr-attn"; "3e-3"; "--lr-rest"; "1e-3"; "--out"; out; "--device"; "cpu" ]

let private curve (out: string) =
    let points = JsonNode.Parse(File.ReadAllText(Path.Combine(out, "curve.json"))).["points"].AsArray()
    [ for p in points -> p ] |> List.tail |> List.map (fun p -> p["loss"].GetValue<float>(), p["perplexity"].GetValue<float>())

/// The parent process id of `pid` (field 4 of /proc/PID/stat, after the parenthesised command name).
let private parentOf (pid: int) =
    try
        let stat = File.ReadAllText $"/proc/{pid}/stat"
        let fields = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
        Some(int fields[1])
    with _ -> None

/// The processes below `root`, at any depth.
let private descendants (root: int) =
    let all =
        Directory.GetDirectories "/proc"
        |> Array.choose (fun d -> match Int32.TryParse(Path.GetFileName d) with | true, pid -> Some pid | _ -> None)
        |> Array.choose (fun pid -> parentOf pid |> Option.map (fun parent -> pid, parent))
    let rec below (ps: Set<int>) =
        let more = all |> Array.filter (fun (_, parent) -> ps.Contains parent) |> Array.map fst |> Set.ofArray |> Set.union ps
        if more.Count = ps.Count then ps else below more
    below (set [ root ]) |> Set.remove root

/// The MPI rank a process runs as (Open MPI puts it in the environment), if any.
let private rankOf (pid: int) =
    try
        File.ReadAllText($"/proc/{pid}/environ").Split '\000'
        |> Array.tryPick (fun kv -> if kv.StartsWith "OMPI_COMM_WORLD_RANK=" then Some(int (kv.Substring 21)) else None)
    with _ -> None

[<Tests>]
let tests =
    testSequenced <| testList "Parallel.MpiRankDies" [
        test "mpirun -np 2 distill: a rank killed after a checkpoint stops the job; the checkpoint is whole and --resume finishes the run" {
            let exe = MpiDistillTests.mpirun ()
            let f = TinyDistill.create ()
            try
                let one = Path.Combine(f.Root, "one")
                let r1 = CliRunner.run (args f one)
                Expect.equal r1.ExitCode 0 $"uninterrupted, one process (stderr: {r1.Err})"
                let two = Path.Combine(f.Root, "two")
                let all = MpiDistillTests.launcher exe 2 @ CliRunner.command @ args f two
                let psi = ProcessStartInfo(List.head all, List.tail all, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
                psi.Environment["DOTNET_NOLOGO"] <- "1"
                for k, v in MpiDistillTests.env do psi.Environment[k] <- v
                use job = Process.Start psi
                let out, err = job.StandardOutput.ReadToEndAsync(), job.StandardError.ReadToEndAsync()
                try
                    let ckDir = Path.Combine(two, "checkpoints")
                    let waited = Stopwatch.StartNew()
                    while not job.HasExited && not (File.Exists(Path.Combine(ckDir, "latest"))) && waited.Elapsed.TotalSeconds < 300.0 do
                        Threading.Thread.Sleep 50
                    // (The message must not wait for the job's output: it is built before the check.)
                    if job.HasExited then failtestf "the job ended before its first checkpoint was seen (stdout: %s; stderr: %s)" out.Result err.Result
                    let victim =
                        descendants job.Id |> Seq.tryFind (fun pid -> rankOf pid = Some 1)
                        |> Option.defaultWith (fun () ->
                            let seen = descendants job.Id |> Seq.map (fun pid -> pid, rankOf pid) |> List.ofSeq
                            failtestf "rank 1's process is not found below mpirun (pid %d): (pid, rank) below it: %A" job.Id seen)
                    Process.GetProcessById(victim).Kill() // SIGKILL
                    // Bounded: Open MPI notices a dead rank at once and stops the rest.
                    Expect.isTrue (job.WaitForExit 60_000) "mpirun stops within 60 s of a rank's death"
                    Expect.notEqual job.ExitCode 0 "mpirun exits non-zero"
                    let stderr = err.Result
                    Expect.isTrue (stderr.Contains "exited on signal 9" || stderr.Contains "stopped by the MPI launcher") $"says a rank died: {stderr}"
                finally if not job.HasExited then job.Kill true
                // The newest checkpoint is whole: the latest pointer names it and it verifies (checksums).
                let loaded = Checkpoint.load (Path.Combine(two, "checkpoints")) |> Result.defaultWith (fun e -> failtestf "the last checkpoint loads: %A" e)
                Expect.isEmpty loaded.Warnings "the checkpoint `latest` names is good (none skipped)"
                Expect.isGreaterThanOrEqual loaded.State.Step 12 "at least the first checkpoint"
                Expect.isLessThan loaded.State.Step 156 "killed before the end"
                // A save cut short leaves only a hidden .partial-* directory; every step-N is whole.
                for d in Directory.GetDirectories(Path.Combine(two, "checkpoints"), "step-*") do
                    for file in [ "manifest.json"; "tensors.safetensors" ] do
                        Expect.isTrue (File.Exists(Path.Combine(d, file))) $"{Path.GetFileName d} holds {file}"
                Expect.isFalse (File.Exists(Path.Combine(two, "model.safetensors"))) "no student from a killed run"
                // Continue under mpirun from rank 0's checkpoint: the uninterrupted trajectory.
                let r3 = CliRunner.runUnder (MpiDistillTests.launcher exe 2) MpiDistillTests.env (args f two @ [ "--resume" ])
                Expect.equal r3.ExitCode 0 $"resumed (stdout: {r3.Out}; stderr: {r3.Err})"
                let c1, c2 = curve one, curve two
                DataParallelTests.expectSameTrajectory (List.map fst c2) (List.map fst c1) "training loss at each checkpoint"
                DataParallelTests.expectSameTrajectory (List.map snd c2) (List.map snd c1) "held-out perplexity"
            finally TinyDistill.delete f
        }
    ]
