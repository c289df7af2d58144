/// `taylor-calibrate op`: end-to-end through the real executable. matmul agrees with a double-precision
/// product on both backends, and every kind of bad input gets a one-line error naming the file, tensor or
/// option, exit code 2, and no output file.
module TaylorCalibrate.Tests.Cli.OpCommandTests

open System.IO
open Expecto
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Tests

/// fp32 GEMM with K ≤ 64 terms of magnitude ≤ 1: rounding error ≲ √K·2⁻²⁴ relative in RMS; 1e-6 leaves a
/// safety factor of ~2 over √64·6e-8 while any indexing mistake gives errors of order 1.
let private matmulRelRms = 1e-6

let private writeInputs (dir: string) (tensors: (string * int[] * Safetensors.Data) list) =
    let p = Path.Combine(dir, "in.safetensors")
    Safetensors.write p Map.empty tensors
    p

let private readOut (path: string) (name: string) =
    let h = Safetensors.readHeader path |> Result.defaultWith (fun e -> failtestf "%A" e)
    Safetensors.readF32 h name |> Result.defaultWith (fun e -> failtestf "%A" e)

let private expectUsageError (r: CliRunner.CliResult) (fragments: string list) (outPath: string) =
    Expect.equal r.ExitCode 2 $"exit code 2 (stderr: {r.Err})"
    let lines = r.Err.Trim().Split('\n')
    Expect.equal lines.Length 1 $"one line on stderr, no stack trace: {r.Err}"
    for f in fragments do Expect.stringContains r.Err f "the message names what is wrong"
    Expect.isFalse (File.Exists outPath) "no output file"

[<Tests>]
let tests =
    testList "Cli.op" [
        for device in [ "cpu"; Backends.vulkanSpec ] do
            for transA, transB in [ false, false; true, false; false, true; true, true ] ->
                test $"matmul on {device} trans-a={transA} trans-b={transB} matches a double product" {
                    let handle = if device = "cpu" then Backends.cpu else Backends.vulkan
                    handle.Get() |> ignore // skips when the device is unavailable
                    let m, n, k = 13, 17, 64
                    let a = Rand.uniform 11 -1.0 1.0 (m * k)
                    let b = Rand.uniform 12 -1.0 1.0 (k * n)
                    // a stored [K,M] under --trans-a, b stored [N,K] under --trans-b.
                    let aAt i p = if transA then a[p * m + i] else a[i * k + p]
                    let bAt p j = if transB then b[j * k + p] else b[p * n + j]
                    let dir = CliRunner.tempDir ()
                    let inp =
                        writeInputs dir [ "a", (if transA then [| k; m |] else [| m; k |]), Safetensors.F32 a
                                          "b", (if transB then [| n; k |] else [| k; n |]), Safetensors.F32 b ]
                    let outp = Path.Combine(dir, "out.safetensors")
                    let args = [ "op"; "matmul"; "--inputs"; inp; "--out"; outp; "--device"; device ]
                               @ (if transA then [ "--trans-a" ] else []) @ (if transB then [ "--trans-b" ] else [])
                    let r = CliRunner.run args
                    Expect.equal r.ExitCode 0 $"exit code (stderr: {r.Err})"
                    let expected = Array.init (m * n) (fun idx ->
                        let i, j = idx / n, idx % n
                        Seq.sum (seq { for p in 0 .. k - 1 -> float (aAt i p) * float (bAt p j) }))
                    Numeric.close matmulRelRms 0.0 expected (readOut outp "c") "c"
                }

        yield testList "bad input" [
            let dir = CliRunner.tempDir ()
            let outp = Path.Combine(dir, "out.safetensors")
            let good = writeInputs dir [ "a", [| 2; 3 |], Safetensors.F32(Array.zeroCreate 6); "b", [| 3; 2 |], Safetensors.F32(Array.zeroCreate 6) ]
            test "missing input file" {
                let missing = Path.Combine(dir, "nope.safetensors")
                expectUsageError (CliRunner.run [ "op"; "matmul"; "--inputs"; missing; "--out"; outp; "--device"; "cpu" ]) [ missing ] outp }
            test "truncated input file" {
                let p = Path.Combine(dir, "trunc.safetensors")
                File.WriteAllBytes(p, (File.ReadAllBytes good)[.. 40])
                expectUsageError (CliRunner.run [ "op"; "matmul"; "--inputs"; p; "--out"; outp; "--device"; "cpu" ]) [ p ] outp }
            test "missing tensor" {
                let p = Path.Combine(dir, "only-a.safetensors")
                Safetensors.write p Map.empty [ "a", [| 2; 3 |], Safetensors.F32(Array.zeroCreate 6) ]
                expectUsageError (CliRunner.run [ "op"; "matmul"; "--inputs"; p; "--out"; outp; "--device"; "cpu" ]) [ "'b'" ] outp }
            test "mis-shaped tensor" {
                let p = Path.Combine(dir, "bad-k.safetensors")
                Safetensors.write p Map.empty [ "a", [| 2; 3 |], Safetensors.F32(Array.zeroCreate 6); "b", [| 4; 2 |], Safetensors.F32(Array.zeroCreate 8) ]
                expectUsageError (CliRunner.run [ "op"; "matmul"; "--inputs"; p; "--out"; outp; "--device"; "cpu" ]) [ "'b'"; "[4,2]" ] outp }
            test "non-finite input" {
                let p = Path.Combine(dir, "nan.safetensors")
                Safetensors.write p Map.empty [ "x", [| 3 |], Safetensors.F32 [| 1.0f; nanf; 0.0f |] ]
                expectUsageError (CliRunner.run [ "op"; "silu"; "--inputs"; p; "--out"; outp; "--device"; "cpu" ]) [ "'x'"; "NaN" ] outp }
            test "unknown device name" {
                expectUsageError (CliRunner.run [ "op"; "matmul"; "--inputs"; good; "--out"; outp; "--device"; "vulkan:no-such-gpu" ]) [ "no-such-gpu" ] outp }
            test "malformed device option" {
                expectUsageError (CliRunner.run [ "op"; "matmul"; "--inputs"; good; "--out"; outp; "--device"; "tpu" ]) [ "--device tpu" ] outp }
            test "unknown op" {
                expectUsageError (CliRunner.run [ "op"; "frobnicate"; "--inputs"; good; "--out"; outp; "--device"; "cpu" ]) [ "frobnicate"; "matmul" ] outp }
        ]
    ]
