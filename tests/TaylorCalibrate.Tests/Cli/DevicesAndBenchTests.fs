/// `taylor-calibrate devices` and `bench` through the real executable: the device list names the CPU
/// backend and lavapipe (when installed) and marks exactly one `auto` choice; bench writes well-formed
/// JSON records. (Speed itself is measured by `bench`, never asserted by tests.)
module TaylorCalibrate.Tests.Cli.DevicesAndBenchTests

open System.IO
open System.Text.Json
open Expecto
open TaylorCalibrate.Pipeline.Bench
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Tests

[<Tests>]
let tests =
    testList "Cli.devices-bench" [
        test "devices --json lists the CPU backend, lavapipe when present, and one auto choice" {
            let r = CliRunner.run [ "devices"; "--json" ]
            Expect.equal r.ExitCode 0 $"exit code (stderr: {r.Err})"
            use doc = JsonDocument.Parse r.Out
            let items = [ for e in doc.RootElement.EnumerateArray() -> e.GetProperty("id").GetString(), e.GetProperty("name").GetString(), e.GetProperty("auto").GetBoolean() ]
            Expect.exists items (fun (id, _, _) -> id = "cpu") "the CPU backend is listed"
            Expect.equal (items |> List.filter (fun (_, _, a) -> a) |> List.length) 1 "exactly one auto choice"
            if File.Exists "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json" then
                Expect.exists items (fun (id, name, auto) -> id.StartsWith "vulkan:" && name.Contains "llvmpipe" && not auto)
                    "lavapipe is listed and not the auto choice (CPU-type drivers only when asked for)"
        }

        test "bench --suite gemm --quick --json writes one record per case with the documented fields" {
            let dir = CliRunner.tempDir ()
            let json = Path.Combine(dir, "bench.json")
            let r = CliRunner.run [ "bench"; "--suite"; "gemm"; "--quick"; "--device"; "cpu"; "--min-seconds"; "0"; "--json"; json ]
            Expect.equal r.ExitCode 0 $"exit code (stderr: {r.Err})"
            let records = BenchCore.readJson json
            Expect.equal records.Length (GemmSuite.cases true).Length "one record per case"
            for r in records do
                Expect.equal r.Suite "gemm" "suite"
                Expect.equal r.Device "cpu" "device"
                Expect.isTrue (r.Seconds > 0.0) "seconds > 0"
                Expect.isTrue (r.M.IsSome && r.N.IsSome && r.K.IsSome) "m, n, k present"
                let expected = 2.0 * float r.M.Value * float r.N.Value * float r.K.Value / r.Seconds / 1e9
                Expect.floatClose Accuracy.low r.Gflops.Value expected "gflops = 2mnk / seconds"
                Expect.isNone r.TokensPerSecond "tokens_per_s omitted for GEMM"
            Expect.isFalse (File.ReadAllText(json).Contains "tokens_per_s") "fields that do not apply are omitted"
        }

        test "bench --suite distill --quick: a GEMM record, then Stage 1 and Stage 2 with tokens/s and FLOP rate from their own seconds" {
            let dir = CliRunner.tempDir ()
            let json = Path.Combine(dir, "bench.json")
            let r = CliRunner.run [ "bench"; "--suite"; "distill"; "--quick"; "--device"; "cpu"; "--min-seconds"; "0"; "--json"; json ]
            Expect.equal r.ExitCode 0 $"exit code (stderr: {r.Err})"
            match BenchCore.readJson json with
            | [ gemm; stage1; stage2 ] ->
                Expect.stringStarts gemm.Case "gemm" "the GEMM reference comes first"
                let c = DistillSuite.stories260K
                for record, stage in [ stage1, Distill.Stage1 1e-3f; stage2, Distill.Stage2(1e-4f, 7e-6f) ] do
                    Expect.equal record.Suite "distill" "suite"
                    let tokens = float record.M.Value
                    Expect.floatClose Accuracy.low record.TokensPerSecond.Value (tokens / record.Seconds) "tokens/s = B·T / seconds"
                    // 4 of the 5 stories260K layers are GDN (keep [0]).
                    let flops = Distill.flopsPerToken stage c 4 * tokens
                    Expect.floatClose Accuracy.low record.Gflops.Value (flops / record.Seconds / 1e9) "GFLOP/s = model FLOPs / seconds"
                Expect.stringStarts stage1.Case "stage 1" "Stage 1 record"
                Expect.stringStarts stage2.Case "stage 2" "Stage 2 record"
            | records -> failtestf "expected 3 records, got %d" records.Length
        }

        test "bench rejects an unknown suite with exit code 2" {
            let r = CliRunner.run [ "bench"; "--suite"; "nope"; "--device"; "cpu" ]
            Expect.equal r.ExitCode 2 "exit code"
            Expect.stringContains r.Err "--suite nope" "names the option"
        }
    ]
