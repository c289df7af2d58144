/// Runs the real `taylor-calibrate` executable (built beside the tests) as a child process, so tests see
/// exactly what a user sees: exit code, standard output and standard error.
module TaylorCalibrate.Tests.CliRunner

open System
open System.Diagnostics
open System.IO

/// Exit code, stdout and stderr of one CLI run.
type CliResult = { ExitCode: int; Out: string; Err: string }

let private cliDll = Path.Combine(AppContext.BaseDirectory, "taylor-calibrate.dll")
let private cliApphost = Path.Combine(AppContext.BaseDirectory, "taylor-calibrate")

/// A self-contained publish (tools/gpu-prepare.sh) carries the runtime beside the tests and is run where no
/// `dotnet` exists: there the CLI starts through its apphost. A framework-dependent build uses `dotnet`.
let private selfContained =
    File.Exists cliApphost && File.Exists(Path.Combine(AppContext.BaseDirectory, "libcoreclr.so"))

/// Runs `taylor-calibrate args` and waits for it.
let run (args: string list) : CliResult =
    if not (File.Exists cliDll) then failwithf "CLI not built next to the tests: %s" cliDll
    let exe, argv = if selfContained then cliApphost, args else "dotnet", cliDll :: args
    let psi = ProcessStartInfo(exe, argv, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    psi.Environment["DOTNET_NOLOGO"] <- "1"
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    { ExitCode = p.ExitCode; Out = out.Result; Err = err.Result }

[<System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)>]
extern int private sysKill(int pid, int signal)

/// Runs `taylor-calibrate args`, sends it SIGINT (what Ctrl-C sends) once `ready ()` holds (polled every
/// 100 ms, at most `timeoutSeconds`), and waits for it to stop. Unix only.
let runInterrupted (args: string list) (ready: unit -> bool) (timeoutSeconds: float) : CliResult =
    if not (File.Exists cliDll) then failwithf "CLI not built next to the tests: %s" cliDll
    let exe, argv = if selfContained then cliApphost, args else "dotnet", cliDll :: args
    let psi = ProcessStartInfo(exe, argv, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    psi.Environment["DOTNET_NOLOGO"] <- "1"
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    let sw = Stopwatch.StartNew()
    while not p.HasExited && not (ready ()) && sw.Elapsed.TotalSeconds < timeoutSeconds do
        Threading.Thread.Sleep 100
    if not p.HasExited then sysKill(p.Id, 2) |> ignore // SIGINT
    if not (p.WaitForExit 120_000) then p.Kill true
    p.WaitForExit()
    { ExitCode = p.ExitCode; Out = out.Result; Err = err.Result }

/// How to start the CLI: its apphost, or `dotnet` with its dll.
let command = if selfContained then [ cliApphost ] else [ "dotnet"; cliDll ]

/// Runs `launcher @ [the CLI] @ args` (e.g. `mpirun -np 2`) with extra environment variables, and waits.
let runUnder (launcher: string list) (env: (string * string) list) (args: string list) : CliResult =
    if not (File.Exists cliDll) then failwithf "CLI not built next to the tests: %s" cliDll
    let all = launcher @ command @ args
    let psi = ProcessStartInfo(List.head all, List.tail all, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    psi.Environment["DOTNET_NOLOGO"] <- "1"
    for k, v in env do psi.Environment[k] <- v
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    { ExitCode = p.ExitCode; Out = out.Result; Err = err.Result }

/// A fresh temporary folder.
let tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "tc-cli-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d
