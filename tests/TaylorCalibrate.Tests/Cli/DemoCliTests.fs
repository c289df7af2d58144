/// `taylor-calibrate demo` through the real executable: each bad option gets one line on stderr naming it,
/// exit code 2, and nothing written to --out. (A whole run is DemoJobTests' job; the CLI only parses and shows.)
module TaylorCalibrate.Tests.Cli.DemoCliTests

open System
open System.IO
open Expecto
open TaylorCalibrate.Tests

let private refused (args: string list) (fragment: string) =
    let out = Path.Combine(Path.GetTempPath(), "tc-demo-cli-" + Guid.NewGuid().ToString "N")
    let r = CliRunner.run ([ "demo"; "--device"; "cpu"; "--out"; out ] @ args)
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    Expect.stringContains r.Err fragment "the message names what is wrong"
    Expect.isFalse (Directory.Exists out) "nothing written to --out"

[<Tests>]
let tests =
    testList "Cli.demo" [
        test "a text option without --teacher is refused" { refused [ "--calib-text"; "x.txt" ] "--calib-text goes with --teacher" }
        test "--teacher without its texts is refused" { refused [ "--teacher"; "m"; "--calib-text"; "x.txt" ] "--teacher needs --calib-text and --eval-text" }
        test "an out-of-range number is refused before anything runs" {
            let teacher = Path.Combine(Shared.repoRoot, "models", "demo-teacher")
            refused [ "--teacher"; teacher; "--calib-text"; "c.txt"; "--eval-text"; "e.txt"; "--keep-fraction"; "1.5" ] "--keep-fraction" }
        test "a missing held-out text is named" {
            let teacher = Path.Combine(Shared.repoRoot, "models", "demo-teacher")
            let calib = Path.Combine(Shared.repoRoot, "models", "demo-teacher", "README.md")
            refused [ "--teacher"; teacher; "--calib-text"; calib; "--eval-text"; "no-such-eval.txt" ] "no-such-eval.txt" } ]
