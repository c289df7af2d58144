/// `taylor-calibrate convert` through the real executable on stories260K (skipped without ../shared): every
/// kind of bad input gets a one-line error naming the option, exit code 2, and leaves --out absent.
module TaylorCalibrate.Tests.Cli.ConvertCliTests

open System
open System.IO
open Expecto
open TaylorCalibrate.Tests

let private expectRefused (args: string list) (fragments: string list) (outDir: string) =
    let r = CliRunner.run args
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    for f in fragments do Expect.stringContains r.Err f "the message names what is wrong"
    Expect.isFalse (Directory.Exists outDir) "nothing written to --out"

[<Tests>]
let tests =
    testList "Cli.convert" [
        let cases =
            [ "kept layer out of range", [ "--keep"; "0,7" ], [], [ "--keep"; "layer 7"; "0..4" ]
              "kept layer listed twice", [ "--keep"; "1,1" ], [], [ "--keep"; "twice" ]
              "all layers kept", [ "--keep"; "0,1,2,3,4" ], [], [ "--keep"; "all 5" ]
              "unknown init", [ "--keep"; "0"; "--init"; "magic" ], [], [ "--init magic" ]
              "calibration tokens not whole chunks", [ "--keep"; "0"; "--calib-tokens"; "1000" ], [], [ "--calib-tokens 1000"; "256" ]
              "more calibration tokens than the text holds", [ "--keep"; "0"; "--init"; "calibrate-plus"; "--calib-tokens"; "2560000" ], [], [ "--calib-text"; "fewer than" ]
              "calibration text overlapping the evaluation text", [ "--keep"; "0" ], [ "--eval-text"; "CALIB" ], [ "overlap" ]
              "a strategy that calibrates, without a calibration text", [ "--keep"; "0"; "--init"; "taylor-init" ], [ "NO-CALIB" ], [ "--calib-text"; "taylor-init" ]
              "--keep-fraction with --keep", [ "--keep"; "0"; "--keep-fraction"; "0.5" ], [], [ "--keep-fraction"; "--policy" ]
              // Opened after the inputs are checked but before --out is touched: nothing is left behind.
              "a device that does not exist", [ "--keep"; "0"; "--device"; "vulkan:99" ], [], [ "vulkan:99" ] ]
        for name, keepArgs, extra, fragments in cases ->
            test name {
                let teacher = Shared.requireShared "models/stories260K/stories260K.bin"
                let calib = Shared.requireShared "data/tinystories/valid-head.txt"
                let out = Path.Combine(CliRunner.tempDir (), "student")
                let calibArgs = if List.contains "NO-CALIB" extra then [] else [ "--calib-text"; calib ]
                let extra = extra |> List.filter ((<>) "NO-CALIB") |> List.map (fun a -> if a = "CALIB" then calib else a)
                let device = if List.contains "--device" keepArgs then [] else [ "--device"; "cpu" ]
                expectRefused ([ "convert"; "--teacher"; teacher ] @ calibArgs @ [ "--out"; out ] @ device @ keepArgs @ extra) fragments out
            }
        for init in [ "naive"; "zero-gate" ] ->
            test $"{init} needs no calibration text and traces nothing" {
                let teacher = Shared.requireShared "models/stories260K/stories260K.bin"
                let out = Path.Combine(CliRunner.tempDir (), "student")
                let r = CliRunner.run [ "convert"; "--teacher"; teacher; "--keep"; "0"; "--init"; init; "--out"; out; "--device"; "cpu" ]
                Expect.equal r.ExitCode 0 $"converted (stderr: {r.Err})"
                Expect.isFalse (r.Out.Contains "teacher trace") "no trace progress"
                Expect.stringContains r.Out "no calibration text" "says nothing was measured"
                let report = Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(out, "report.json")))
                Expect.isNull report["calibration"] "report.json records no calibration"
                let eval = CliRunner.run [ "eval"; "--model"; out; "--text"; Shared.requireShared "data/tinystories/valid-head.txt"; "--max-tokens"; "512"; "--device"; "cpu" ]
                Expect.equal eval.ExitCode 0 $"the student evaluates (stderr: {eval.Err})"
            }
        yield test "calibration text shorter than one batch" {
            let teacher = Shared.requireShared "models/stories260K/stories260K.bin"
            let dir = CliRunner.tempDir ()
            let short = Path.Combine(dir, "short.txt")
            File.WriteAllText(short, "Once upon a time there was a cat.")
            let out = Path.Combine(dir, "student")
            expectRefused [ "convert"; "--teacher"; teacher; "--keep"; "0"; "--calib-text"; short; "--out"; out; "--device"; "cpu" ] [ "short.txt" ] out
        }
    ]
