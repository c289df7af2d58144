/// `--device` lists on `distill` and `select-layers` through the real executable on the tiny distillation
/// fixture: two CPU workers write the one-CPU student (Stage 1) and selection byte for byte, and Stage 2
/// refuses a list in one line naming --device.
module TaylorCalibrate.Tests.Parallel.MultiDeviceCliTests

open System.IO
open Expecto
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

let private withFixture (body: TinyDistill.Fixture -> unit) =
    let f = TinyDistill.create ()
    try body f finally TinyDistill.delete f

let private distill (f: TinyDistill.Fixture) (stage: string) (device: string) (out: string) =
    CliRunner.run [ "distill"; "--stage"; stage; "--student"; f.StudentDir; "--teacher"; f.TeacherDir; "--train-text"; f.TrainText
                    "--tokens"; "128"; "--seq-len"; "16"; "--batch"; "2"; "--checkpoint-every"; "64"; "--eval-text"; f.EvalText
                    "--out"; out; "--device"; device ]

[<Tests>]
let tests =
    testList "Parallel.MultiDeviceCli" [
        test "distill --stage 1 --device cpu:0,cpu:1 writes the --device cpu student byte for byte" {
            withFixture (fun f ->
                let one, two = Path.Combine(f.Root, "one"), Path.Combine(f.Root, "two")
                let r1 = distill f "1" "cpu" one
                let r2 = distill f "1" "cpu:0,cpu:1" two
                Expect.equal (r1.ExitCode, r2.ExitCode) (0, 0) $"exit codes 0 (stderr: {r1.Err} / {r2.Err})"
                Expect.stringContains r2.Out "cpu:0,cpu:1" "the run names its devices"
                let read d = File.ReadAllBytes(Path.Combine(d, StudentIo.weightsFile))
                Expect.isTrue (read two = read one) "model.safetensors byte for byte")
        }
        test "distill --stage 2 refuses a device list in one line naming --device" {
            withFixture (fun f ->
                let out = Path.Combine(f.Root, "s2")
                let r = distill f "2" "cpu:0,cpu:1" out
                Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
                Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
                Expect.stringContains r.Err "--device" "names the option"
                Expect.isFalse (File.Exists(Path.Combine(out, StudentIo.weightsFile))) "no student written")
        }
        test "select-layers --policy ar --device cpu:0,cpu:1 writes the --device cpu selection" {
            withFixture (fun f ->
                let select (device: string) (out: string) =
                    let r = CliRunner.run [ "select-layers"; "--teacher"; f.TeacherDir; "--policy"; "ar"; "--keep"; "1"
                                            "--eval-text"; f.EvalText; "--window"; "16"; "--out"; out; "--device"; device ]
                    Expect.equal r.ExitCode 0 $"{device}: exit code 0 (stderr: {r.Err})"
                    LayerSelectionFile.read out |> Result.defaultWith (fun e -> failtest (TaylorCalibrate.Pipeline.InputError.describe e))
                let one = select "cpu" (Path.Combine(f.Root, "one.json"))
                let two = select "cpu:0,cpu:1" (Path.Combine(f.Root, "two.json"))
                Expect.equal two.Measured one.Measured "every score, bit for bit"
                Expect.equal two.Kept one.Kept "kept layers")
        }
    ]
