/// `mpirun -np 2 taylor-calibrate convert` on localhost (Open MPI; skipped with a message when mpirun is
/// absent): the ranks share the aligned layers (Parallel/ShardedConvert.fs) and rank 0's student is the
/// one-process student byte for byte, also when a --resume restores some layers; ranks started with
/// different settings stop before --out is touched, naming the setting; a rank that cannot start stops the job.
module TaylorCalibrate.Tests.Parallel.MpiConvertTests

open System.IO
open Expecto
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

/// The in-repo 4-layer demo teacher with layer 0 kept: layers 1, 2, 3 are aligned, rank 0 takes 1 and 3, rank 1 takes 2.
let private args (calib: string) (out: string) =
    [ "convert"; "--teacher"; Path.Combine(Shared.repoRoot, "models", "demo-teacher"); "--keep"; "0"; "--init"; "taylor-calibrate"
      "--steps"; "20"; "--calib-text"; calib; "--out"; out; "--device"; "cpu" ]

let private student (out: string) = File.ReadAllBytes(Path.Combine(out, "model.safetensors"))

/// Runs `body exe dir calib` with mpirun's path, a fresh temporary folder and a calibration text in it; removes the folder.
let private withCalibration (body: string -> string -> string -> unit) =
    let exe = MpiDistillTests.mpirun ()
    let dir = CliRunner.tempDir ()
    try
        let calib = Path.Combine(dir, "calib.txt")
        File.WriteAllText(calib, TinyDistill.stories 5 200)
        body exe dir calib
    finally try Directory.Delete(dir, true) with _ -> ()

[<Tests>]
let tests =
    testSequenced <| testList "Parallel.MpiConvert" [
        test "mpirun -np 2 convert: the student is the one-process student byte for byte, also resumed" {
            withCalibration <| fun exe dir calib ->
            let one = Path.Combine(dir, "one")
            let r1 = CliRunner.run (args calib one)
            Expect.equal r1.ExitCode 0 $"one process (stderr: {r1.Err})"
            let two = Path.Combine(dir, "two")
            let r2 = CliRunner.runUnder (MpiDistillTests.launcher exe 2) MpiDistillTests.env (args calib two)
            Expect.equal r2.ExitCode 0 $"two ranks (stdout: {r2.Out}; stderr: {r2.Err})"
            Expect.stringContains r2.Out "2 MPI ranks" "rank 0 reports the job"
            Expect.equal (student two) (student one) "two ranks: byte-identical model.safetensors"
            for i in 1 .. 3 do
                Expect.isTrue (File.Exists(Path.Combine(two, "align", $"layer-{i}.safetensors"))) $"layer {i} persisted under align/"
            // Resume with layer 2 restored: rank 1 reads it back, rank 0 realigns 1, rank 1 realigns 3.
            for f in [ "model.safetensors"; "report.json"; "report.html"; Path.Combine("align", "layer-1.safetensors"); Path.Combine("align", "layer-3.safetensors") ] do
                File.Delete(Path.Combine(two, f))
            let r3 = CliRunner.runUnder (MpiDistillTests.launcher exe 2) MpiDistillTests.env (args calib two @ [ "--resume" ])
            Expect.equal r3.ExitCode 0 $"resumed (stdout: {r3.Out}; stderr: {r3.Err})"
            Expect.stringContains r3.Out "layers 2 restored" "rank 0 restores the persisted layer"
            Expect.equal (student two) (student one) "resumed under two ranks: byte-identical model.safetensors"
        }
        test "mpirun convert: ranks with different settings exit 2 naming the setting, --out untouched" {
            withCalibration <| fun exe dir calib ->
            let out = Path.Combine(dir, "out")
            // Open MPI's MPMD form (`A : B`): rank 0 aligns 20 steps per layer, rank 1 21.
            let other = args calib out |> List.map (fun a -> if a = "20" then "21" else a)
            let r = CliRunner.runUnder (MpiDistillTests.launcher exe 1) MpiDistillTests.env (args calib out @ [ ":"; "-np"; "1" ] @ CliRunner.command @ other)
            Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
            Expect.stringContains r.Err "setting 'steps'" "names the setting"
            Expect.stringContains r.Err "'20'" "gives rank 0's value"
            Expect.isFalse (Directory.Exists out) "--out not created"
        }
        test "mpirun convert: an --out rank 0 refuses stops every rank with exit 2, and what was there stays" {
            withCalibration <| fun exe dir calib ->
            let out = Path.Combine(dir, "out")
            Directory.CreateDirectory out |> ignore
            File.WriteAllText(Path.Combine(out, "notes.txt"), "mine")
            let r = CliRunner.runUnder (MpiDistillTests.launcher exe 2) MpiDistillTests.env (args calib out)
            Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
            Expect.stringContains r.Err "rank 0 of 2: --out" "rank 0 names the option"
            Expect.stringContains r.Err "rank 1 of 2: --out: rank 0 could not take" "rank 1 gets rank 0's answer instead of waiting"
            Expect.equal (Directory.GetFileSystemEntries out |> Array.map Path.GetFileName) [| "notes.txt" |] "only what was there"
        }
        test "mpirun convert: a rank that cannot open its device stops every rank with its error" {
            withCalibration <| fun exe dir calib ->
            let out = Path.Combine(dir, "out")
            // Rank 0 opens the CPU and waits for rank 1 at the settings check; rank 1 names a device that is not there.
            let other = args calib out |> List.map (fun a -> if a = "cpu" then "vulkan:no-such-gpu" else a)
            let r = CliRunner.runUnder (MpiDistillTests.launcher exe 1) MpiDistillTests.env (args calib out @ [ ":"; "-np"; "1" ] @ CliRunner.command @ other)
            Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
            Expect.stringContains r.Err "error: rank 1 of 2" "names the rank"
            Expect.stringContains r.Err "no-such-gpu" "names the device"
            Expect.isFalse (File.Exists(Path.Combine(out, "model.safetensors"))) "no student written"
        }
    ]
