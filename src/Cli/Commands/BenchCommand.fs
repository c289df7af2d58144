/// `taylor-calibrate bench [--suite NAME|all] [--device D] [--json FILE] [--quick]`: prints a table of
/// medians after warm-up and, with --json, writes the records (see Pipeline/Bench/BenchCore.fs).
module TaylorCalibrate.Cli.BenchCommand

open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline.Bench
open TaylorCalibrate.Cli.Common

type Args =
    | Suite of name: string
    | Device of spec: string
    | Json of path: string
    | Quick
    | Min_Seconds of float
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Suite _ -> "suite to run: " + String.concat ", " Suites.names + ", or all (default gemm)"
            | Device _ -> "auto (default) | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Json _ -> "also write the records as a JSON list to this file"
            | Quick -> "smaller shapes (for lavapipe and smoke runs)"
            | Min_Seconds _ -> "keep repeating a case until this much time is spent (default 1, at least 3 runs)"

let private fmt (v: float option) (digits: int) = v |> Option.map (fun x -> x.ToString($"F{digits}")) |> Option.defaultValue ""

let run (args: ParseResults<Args>) =
    let suite = args.GetResult(Suite, "gemm")
    let chosen =
        if suite = "all" then Suites.all
        else
            match Suites.tryFind suite with
            | Some s -> [ s ]
            | None ->
                let known = String.concat ", " Suites.names
                usageError $"--suite {suite}: unknown suite; known: {known}, all"
    let opts = { BenchCore.defaultOptions with Quick = args.Contains Quick; MinSeconds = args.GetResult(Min_Seconds, 1.0) |> finite "--min-seconds" }
    use be = openDevice (args.TryGetResult Device)
    printfn "device: %s (%s)" be.Name be.Info.Name
    let records =
        [ for (name, _, runSuite) in chosen do
            yield! runSuite be opts (fun r ->
                let size = [ r.M; r.N; r.K ] |> List.choose id |> List.map string |> String.concat "x"
                printfn "  %-6s %-48s %-16s %10.4f s %10s GFLOP/s %12s tok/s" r.Suite r.Case size r.Seconds (fmt r.Gflops 2) (fmt r.TokensPerSecond 0)) ]
    let table = Table()
    for c in [ "suite"; "case"; "m"; "n"; "k"; "median s"; "GFLOP/s"; "tokens/s" ] do table.AddColumn c |> ignore
    for r in records do
        let o (v: int option) = v |> Option.map string |> Option.defaultValue ""
        table.AddRow([| r.Suite; r.Case; o r.M; o r.N; o r.K; r.Seconds.ToString "G4"; fmt r.Gflops 2; fmt r.TokensPerSecond 0 |] |> Array.map Markup.Escape) |> ignore
    AnsiConsole.Write table
    match args.TryGetResult Json with
    | Some path ->
        BenchCore.writeJson path records
        printfn "wrote %s" path
    | None -> ()
    0
