/// Runs tools/crosscheck.py: `taylor-calibrate op` outputs against NumPy float64 (an independent framework;
/// gradients by finite differences of its float64 forward). Skipped, with a message, where NumPy is missing
/// (Debian: apt-get install python3-numpy; .ci/run installs it).
module TaylorCalibrate.Tests.Cli.CrossCheckTests

open System.Diagnostics
open System.IO
open Expecto
open TaylorCalibrate.Tests

let private python = "/usr/bin/python3"

let private numpyAvailable =
    lazy
        (File.Exists python
         && (let p = Process.Start(ProcessStartInfo(python, [ "-c"; "import numpy" ], UseShellExecute = false, RedirectStandardError = true))
             p.WaitForExit()
             p.ExitCode = 0))

/// The op families the cross-check covers on each device.
let private cases =
    [ "cpu", Backends.cpu, "matmul,attention,gdn"
      "vulkan", Backends.vulkan, "matmul,attention,gdn" ]

[<Tests>]
let tests =
    testList "Cli.crosscheck" [
        for name, handle, ops in cases ->
            test $"op outputs match NumPy float64 on {name} ({ops})" {
                if not numpyAvailable.Value then skiptest $"{python} with numpy not found (apt-get install python3-numpy); skipped"
                let be = handle.Get() // skips when the backend is unavailable
                let device = if name = "cpu" then "cpu" else Backends.vulkanSpec
                ignore be
                let script = Path.Combine(Shared.repoRoot, "tools", "crosscheck.py")
                let dll = Path.Combine(System.AppContext.BaseDirectory, "taylor-calibrate.dll")
                let psi = ProcessStartInfo(python, [ script; dll; "--device"; device; "--ops"; ops ], UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
                use p = Process.Start psi
                let out = p.StandardOutput.ReadToEndAsync()
                let err = p.StandardError.ReadToEndAsync()
                p.WaitForExit()
                Expect.equal p.ExitCode 0 $"crosscheck.py reported cases beyond tolerance:\n{out.Result}\n{err.Result}"
                Expect.stringContains out.Result " 0 beyond" "summary line"
            }
    ]
