/// Test entry point. Expecto's own summary line is not machine-readable (en dash, colour codes), so the
/// default printer is wrapped to capture the counts, and a plain `N passed, N failed, N skipped` line is
/// written to the raw standard output at the end. Exits non-zero if anything failed or no test ran.
module TaylorCalibrate.Tests.Main

open System
open Expecto
open Expecto.Impl

[<EntryPoint>]
let main argv =
    let mutable counts = None
    let basePrinter = TestPrinters.defaultPrinter
    let printer =
        { basePrinter with
            summary = fun cfg summary ->
                counts <- Some(summary.passed.Length, summary.failed.Length + summary.errored.Length, summary.ignored.Length)
                basePrinter.summary cfg summary }
    let rc =
        // Sequenced: the backends are shared by all tests and IBackend is one-caller-at-a-time (see its doc);
        // lavapipe already uses every core, so parallel tests would gain little anyway.
        try runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer; CLIArguments.Sequenced ] argv
        finally
            Backends.cpu.Dispose()
            Backends.vulkan.Dispose()
    Console.Out.Flush()
    let passed, failed, skipped = defaultArg counts (0, 0, 0)
    use raw = Console.OpenStandardOutput()
    let line = Text.Encoding.ASCII.GetBytes($"\n{passed} passed, {failed} failed, {skipped} skipped\n")
    raw.Write(line, 0, line.Length)
    raw.Flush()
    if rc <> 0 || failed > 0 then 1
    elif passed = 0 then 1
    else 0
