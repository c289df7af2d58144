/// The scripts in examples/ run as a user runs them (`dotnet fsi examples/NAME.fsx`, against the Release build)
/// and print figures that agree with the Pipeline: the teacher perplexity they print is the one computed here,
/// taylor-calibrate fits the teacher's layer outputs better than naive, and Stage 2 lowers both the KL and the
/// student's perplexity. Skipped, saying why, where `dotnet fsi` or the Release build is not available.
module TaylorCalibrate.Tests.Examples.ExampleScriptTests

open System
open System.Diagnostics
open System.IO
open System.Text.RegularExpressions
open System.Threading
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

let private releaseBuild = Path.Combine(Shared.repoRoot, "src", "Cli", "bin", "Release", "net10.0", "TaylorCalibrate.Pipeline.dll")

/// Runs `dotnet fsi examples/<name>`: (exit code, stdout, stderr), or a skip when it cannot run here.
let private runScript (name: string) =
    let script = Path.Combine(Shared.repoRoot, "examples", name)
    if not (File.Exists script) then skiptest $"{script} is not here (tests run outside the repository)"
    if not (File.Exists releaseBuild) then skiptest $"{releaseBuild} is not built: `dotnet build src/Cli -c Release`"
    let psi = ProcessStartInfo("dotnet", [ "fsi"; script ], UseShellExecute = false, RedirectStandardOutput = true,
                               RedirectStandardError = true, WorkingDirectory = Shared.repoRoot)
    psi.Environment["DOTNET_NOLOGO"] <- "1"
    let p =
        try Process.Start psi
        with :? ComponentModel.Win32Exception as e -> skiptest $"`dotnet` cannot be started here ({e.Message}): dotnet fsi unavailable"
    use p = p
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    let err = err.Result
    // A runtime without the SDK has no fsi.
    if p.ExitCode <> 0 && (err.Contains "No .NET SDKs were found" || err.Contains "could not be found" && err.Contains "fsi") then
        skiptest $"dotnet fsi unavailable: {err.Trim()}"
    p.ExitCode, out.Result, err

let private number (pattern: string) (text: string) =
    let m = Regex.Match(text, pattern)
    if not m.Success then failtest $"no match for '{pattern}' in:\n{text}"
    Double.Parse(m.Groups[1].Value, Globalization.CultureInfo.InvariantCulture)

/// The teacher perplexity of the scripts' defaults, computed here with the same protocol (≤ 4096 tokens).
let private teacherPerplexity () =
    let ok r = match r with Ok v -> v | Error e -> failtest (InputError.describe e)
    let teacherPath = Path.Combine(Shared.repoRoot, "models", "demo-teacher")
    let evalText = Path.Combine(Shared.repoRoot, "examples", "text", "eval.txt")
    let teacher = ModelFiles.loadTeacher teacherPath |> ok
    let tok = ModelFiles.tokenizerFor teacherPath teacher.Config None |> ok
    let set = Perplexity.prepare evalText teacher.Config (Corpus.tokenStreamUpTo tok (Some 4096) (Corpus.readDocuments evalText |> ok)) None (Some 4096) |> ok
    use m = new DeviceDecoder(Backends.cpu.Get(), teacher)
    (Perplexity.evaluate m None set None CancellationToken.None).Perplexity

[<Tests>]
let tests =
    testList "Examples" [
        test "convert.fsx composes the stages and prints zero-shot perplexities" {
            let code, out, err = runScript "convert.fsx"
            Expect.equal code 0 $"the script runs (stderr: {err})"
            // Printed with two decimals.
            Expect.floatClose { absolute = 0.006; relative = 0.0 } (number @"teacher: PPL ([\d.]+)" out) (teacherPerplexity ()) "the teacher PPL is the Pipeline's"
            for name in [ "naive"; "taylor-calibrate" ] do
                let ppl = number $@"{name}: zero-shot PPL ([\d.]+)" out
                Expect.isTrue (Double.IsFinite ppl && ppl > 1.0) $"{name}: a perplexity, {ppl}"
            let cosine name = number $@"{name}: .*cosine to the teacher's layer outputs (-?[\d.]+)" out
            Expect.isGreaterThan (cosine "taylor-calibrate") (cosine "naive" + 0.3) "calibration brings the layer outputs towards the teacher's"
        }
        test "distill.fsx runs Stage 2 steps that lower the KL and the perplexity" {
            let code, out, err = runScript "distill.fsx"
            Expect.equal code 0 $"the script runs (stderr: {err})"
            Expect.floatClose { absolute = 0.006; relative = 0.0 } (number @"teacher PPL ([\d.]+)" out) (teacherPerplexity ()) "the teacher PPL is the Pipeline's"
            let before = number @"naive student PPL ([\d.]+)" out
            let after = number @"student PPL ([\d.]+)\s*$" (out.Trim())
            let kls = [ for m in Regex.Matches(out, @"KL ([\d.]+) nats") -> float m.Groups[1].Value ]
            Expect.isGreaterThan kls.Length 1 "the KL is printed as it trains"
            Expect.isLessThan (List.last kls) (List.head kls) "the KL falls"
            Expect.isLessThan after before "the student's held-out perplexity falls"
        }
    ]
