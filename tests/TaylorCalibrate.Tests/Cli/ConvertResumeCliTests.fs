/// `taylor-calibrate convert --resume` through the real executable on a tiny random teacher written here (no
/// ../shared): a non-empty --out needs --resume, a resume with other settings is refused naming the setting, and an interrupted
/// conversion (one layer's checkpoint and the student missing) resumes to the same student, bit for bit.
module TaylorCalibrate.Tests.Cli.ConvertResumeCliTests

open System.IO
open Expecto
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model

/// The conversion job's tiny teacher and calibration text (Stages/ConvertJobTests.fs).
let private setup () = TaylorCalibrate.Tests.Stages.ConvertJobTests.setup ()

let private expectRefused (r: CliRunner.CliResult) (fragment: string) =
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    Expect.stringContains r.Err fragment "the message says what is wrong"

[<Tests>]
let tests =
    testList "Cli.convert resume" [
        test "non-empty --out needs --resume, other settings are refused, an interrupted run resumes to the same student" {
            let dir, teacher, calib = setup ()
            let out = Path.Combine(dir, "student")
            let args steps = [ "convert"; "--teacher"; teacher; "--keep"; "0"; "--calib-text"; calib; "--out"; out; "--device"; "cpu"; "--steps"; string steps ]
            let first = CliRunner.run (args 2)
            Expect.equal first.ExitCode 0 $"first run (stderr: {first.Err})"
            let weights = Path.Combine(out, StudentIo.weightsFile)
            let expected = File.ReadAllBytes weights
            for i in [ 1; 2 ] do Expect.isTrue (File.Exists(Path.Combine(out, "align", $"layer-{i}.safetensors"))) $"layer {i} persisted"
            expectRefused (CliRunner.run (args 2)) "--resume"
            expectRefused (CliRunner.run (args 3 @ [ "--resume" ])) "steps is 2 there but 3 now"
            // Interrupted after layer 1: layer 2's checkpoint and the student itself were never written.
            File.Delete(Path.Combine(out, "align", "layer-2.safetensors"))
            File.Delete weights
            let resumed = CliRunner.run (args 2 @ [ "--resume" ])
            Expect.equal resumed.ExitCode 0 $"resumed run (stderr: {resumed.Err})"
            Expect.isTrue (File.ReadAllBytes weights = expected) "the resumed student is bit-identical"
            Directory.Delete(dir, true)
        }
    ]
