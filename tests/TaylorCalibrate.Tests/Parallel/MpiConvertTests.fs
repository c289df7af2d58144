/// `mpirun -np 2 taylor-calibrate convert` on localhost (Open MPI; skipped with a message when mpirun is
/// absent): the converted layers are sharded over the ranks and rank 0 assembles a student bit-identical to a
/// one-process conversion, and so does one process with two CPU workers (`--device cpu:0,cpu:1`).
module TaylorCalibrate.Tests.Parallel.MpiConvertTests

open System.IO
open Expecto
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

let private args (calib: string) (out: string) (device: string) =
    [ "convert"; "--teacher"; Path.Combine(Shared.repoRoot, "models", "demo-teacher"); "--keep"; "0"; "--init"; "taylor-calibrate"
      "--steps"; "20"; "--calib-text"; calib; "--out"; out; "--device"; device ]

[<Tests>]
let tests =
    testSequenced <| testList "Parallel.MpiConvert" [
        test "two CPU workers and mpirun -np 2 give the one-process student bit for bit" {
            let dir = CliRunner.tempDir ()
            try
                // The in-repo 4-layer demo teacher: layers 1, 2, 3 converted; its BPE reads any English text.
                let calib = Path.Combine(dir, "calib.txt")
                File.WriteAllText(calib, TinyDistill.stories 5 200)
                let one = Path.Combine(dir, "one")
                let r1 = CliRunner.run (args calib one "cpu")
                Expect.equal r1.ExitCode 0 $"one process (stderr: {r1.Err})"
                let expected = File.ReadAllBytes(Path.Combine(one, "model.safetensors"))
                let workers = Path.Combine(dir, "workers")
                let r2 = CliRunner.run (args calib workers "cpu:0,cpu:1")
                Expect.equal r2.ExitCode 0 $"two workers (stderr: {r2.Err})"
                Expect.equal (File.ReadAllBytes(Path.Combine(workers, "model.safetensors"))) expected "two CPU workers: bit-identical student"
                let exe = MpiDistillTests.mpirun ()
                let ranks = Path.Combine(dir, "ranks")
                let r3 = CliRunner.runUnder (MpiDistillTests.launcher exe 2) MpiDistillTests.env (args calib ranks "cpu")
                Expect.equal r3.ExitCode 0 $"two ranks (stdout: {r3.Out}; stderr: {r3.Err})"
                Expect.equal (File.ReadAllBytes(Path.Combine(ranks, "model.safetensors"))) expected "mpirun -np 2: bit-identical student"
                for i in 1 .. 3 do
                    Expect.isTrue (File.Exists(Path.Combine(ranks, "align", $"layer-{i}.safetensors"))) $"layer {i} persisted by its rank"
            finally try Directory.Delete(dir, true) with _ -> ()
        }
        test "convert: a device list naming one device twice is refused before --out is touched" {
            let dir = CliRunner.tempDir ()
            try
                let calib = Path.Combine(dir, "calib.txt")
                File.WriteAllText(calib, TinyDistill.stories 5 200)
                let out = Path.Combine(dir, "out")
                let r = CliRunner.run (args calib out "cpu,cpu:0")
                Expect.equal r.ExitCode 2 $"exit code 2 (stderr: {r.Err})"
                Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line: {r.Err}"
                Expect.stringContains r.Err "--device cpu,cpu:0" "names the option"
                Expect.isFalse (Directory.Exists out) "--out not created"
            finally try Directory.Delete(dir, true) with _ -> ()
        }
    ]
