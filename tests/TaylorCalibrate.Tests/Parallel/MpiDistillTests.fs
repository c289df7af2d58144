/// `mpirun -np 2 taylor-calibrate distill --stage 2` on localhost (Open MPI; skipped with a message when
/// mpirun is absent): the same trajectory as one process with the same global batch (within
/// DataParallelTests.stage2Tolerance), rank 0 writes, every rank resumes from rank 0's checkpoint to the
/// same student bit for bit, and ranks started with different settings stop with an error naming the setting.
module TaylorCalibrate.Tests.Parallel.MpiDistillTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

/// mpirun on PATH, or a skip that says why.
let mpirun () =
    let path = Environment.GetEnvironmentVariable "PATH" |> Option.ofObj |> Option.defaultValue ""
    match path.Split ':' |> Array.map (fun d -> Path.Combine(d, "mpirun")) |> Array.tryFind File.Exists with
    | Some p -> p
    | None -> skiptest "mpirun not found (Debian: apt-get install -y openmpi-bin): the MPI tests are skipped"

/// Open MPI refuses root unless told (CI runs as root); shared-memory single-copy needs ptrace rights that
/// containers often lack, so it is switched off (copies go through the shared segment instead).
let launcher (exe: string) (np: int) =
    [ exe; "-np"; string np; "--oversubscribe"; "--mca"; "btl_vader_single_copy_mechanism"; "none" ]
let env = [ "OMPI_ALLOW_RUN_AS_ROOT", "1"; "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"; "OMPI_MCA_rmaps_base_oversubscribe", "1" ]

let private args (f: TinyDistill.Fixture) (out: string) =
    [ "distill"; "--stage"; "2"; "--student"; f.StudentDir; "--teacher"; f.TeacherDir; "--train-text"; f.TrainText
      "--eval-text"; f.EvalText; "--tokens"; "512"; "--seq-len"; "16"; "--batch"; "4"; "--accum"; "2"
      "--checkpoint-every"; "256"; "--lr-attn"; "3e-3"; "--lr-rest"; "1e-3"; "--out"; out; "--device"; "cpu" ]

let private curve (out: string) =
    let text = File.ReadAllText(Path.Combine(out, "curve.json"))
    let points = JsonNode.Parse(text).["points"].AsArray()
    [ for p in points -> p ] |> List.tail |> List.map (fun p -> p["loss"].GetValue<float>(), p["perplexity"].GetValue<float>())

[<Tests>]
let tests =
    testSequenced <| testList "Parallel.MpiDistill" [
        test "mpirun -np 2: Stage 2 matches one process with the same global batch; every rank resumes rank 0's checkpoint" {
            let exe = mpirun ()
            let f = TinyDistill.create ()
            try
                let one = Path.Combine(f.Root, "one")
                let r1 = CliRunner.run (args f one)
                Expect.equal r1.ExitCode 0 $"one process (stderr: {r1.Err})"
                let two = Path.Combine(f.Root, "two")
                let r2 = CliRunner.runUnder (launcher exe 2) env (args f two)
                Expect.equal r2.ExitCode 0 $"two ranks (stdout: {r2.Out}; stderr: {r2.Err})"
                Expect.stringContains r2.Out "2 MPI ranks" "rank 0 reports the job"
                let c1, c2 = curve one, curve two
                DataParallelTests.expectSameTrajectory (List.map fst c2) (List.map fst c1) "training loss at each checkpoint"
                DataParallelTests.expectSameTrajectory (List.map snd c2) (List.map snd c1) "held-out perplexity"
                // Resume: drop the newest checkpoint and the student; all ranks continue from step 2.
                let finished = File.ReadAllBytes(Path.Combine(two, "model.safetensors"))
                Directory.Delete(Path.Combine(two, "checkpoints", "step-000004"), true)
                File.Delete(Path.Combine(two, "model.safetensors"))
                let r3 = CliRunner.runUnder (launcher exe 2) env (args f two @ [ "--resume" ])
                Expect.equal r3.ExitCode 0 $"resumed (stdout: {r3.Out}; stderr: {r3.Err})"
                Expect.equal (File.ReadAllBytes(Path.Combine(two, "model.safetensors"))) finished "resumed student bit-identical to the uninterrupted two-rank run"
            finally TinyDistill.delete f
        }
        test "mpirun: ranks started with different settings stop, naming the setting" {
            let exe = mpirun ()
            let f = TinyDistill.create ()
            try
                let out = Path.Combine(f.Root, "out")
                // Open MPI's MPMD form (`A : B`): rank 0 runs with --seed 1, rank 1 with --seed 2.
                let r = CliRunner.runUnder (launcher exe 1) env (args f out @ [ "--seed"; "1"; ":"; "-np"; "1" ] @ CliRunner.command @ args f out @ [ "--seed"; "2" ])
                Expect.notEqual r.ExitCode 0 $"the job fails (stdout: {r.Out})"
                Expect.stringContains r.Err "setting 'seed'" "names the setting"
                Expect.isFalse (File.Exists(Path.Combine(out, "model.safetensors"))) "nothing written"
            finally TinyDistill.delete f
        }
    ]
