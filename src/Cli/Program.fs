/// `taylor-calibrate`: a thin command-line layer over TaylorCalibrate.Pipeline. Each command lives in its
/// own file under Commands/; this file only dispatches and maps errors to exit codes
/// (0 ok, 1 internal failure, 2 bad input), printing stack traces only with --verbose.
module TaylorCalibrate.Cli.Program

open System
open Argu
open TaylorCalibrate.Cli.Common

[<HelpFlags("--help", "-h")>]
type Command =
    | [<CliPrefix(CliPrefix.None)>] Devices of ParseResults<DevicesCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Op of ParseResults<OpCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Demo of ParseResults<DemoCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Inspect of ParseResults<InspectCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<EvalCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Generate of ParseResults<GenerateCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Logits of ParseResults<LogitsCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Convert of ParseResults<ConvertCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Select_Layers of ParseResults<SelectLayersCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Experiment of ParseResults<ExperimentCommand.Args>
    | [<CliPrefix(CliPrefix.None); CustomCommandLine("train-teacher")>] Train_Teacher of ParseResults<TrainTeacherCommand.Args>
    | [<CliPrefix(CliPrefix.None)>] Distill of ParseResults<DistillCommand.Args>
    | [<AltCommandLine("-v")>] Verbose
    interface IArgParserTemplate with
        member c.Usage =
            match c with
            | Devices _ -> "list Vulkan devices and the CPU backend, marking the `auto` choice"
            | Demo _ -> "the main job on built-in defaults: a checked GEMM, the built-in teacher converted naive vs Taylor-Calibrate, Stage 2 of both, report.html"
            | Bench _ -> "benchmark kernels (medians after warm-up); --json writes machine-readable records"
            | Op _ -> "run one kernel on named tensors of a safetensors file (cross-checking); `op --help` lists the ops"
            | Inspect _ -> "describe a model: family, dimensions, heads, parameters, dtypes, tokenizer"
            | Eval _ -> "perplexity of a model on a text (fixed window protocol); --json writes a report"
            | Generate _ -> "continue a prompt (greedy at --temperature 0) for quick sanity checks"
            | Logits _ -> "write the logits of one forward pass to safetensors (cross-checking)"
            | Convert _ -> "convert a teacher into a calibrated hybrid GDN student directory (+ report.json, report.html)"
            | Select_Layers _ -> "choose the layers that keep softmax attention (uniform | ar | ga-s2); writes the file `convert --keep-from` reads"
            | Train_Teacher _ -> "train a Llama/Qwen2/Qwen3 decoder from scratch on text; writes a Hugging Face directory"
            | Distill _ -> "distil a student against its teacher: --stage 1 (per layer) or 2 (end-to-end KL), checkpoints, learning curve"
            | Experiment _ -> "experiments: `experiment ablation` (zero-shot PPL by init), `experiment token-budget`, `experiment study`"
            | Verbose -> "print stack traces of errors"

let private dispatch (results: ParseResults<Command>) =
    match results.GetSubCommand() with
    | Devices a -> DevicesCommand.run a
    | Op a -> OpCommand.run a
    | Bench a -> BenchCommand.run a
    | Demo a -> DemoCommand.run a
    | Inspect a -> InspectCommand.run a
    | Eval a -> EvalCommand.run a
    | Generate a -> GenerateCommand.run a
    | Logits a -> LogitsCommand.run a
    | Convert a -> ConvertCommand.run a
    | Select_Layers a -> SelectLayersCommand.run a
    | Experiment a -> ExperimentCommand.run a
    | Train_Teacher a -> TrainTeacherCommand.run a
    | Distill a -> DistillCommand.run a
    | Verbose -> usageError "no command given; see --help"

[<EntryPoint>]
let main argv =
    let verbose = argv |> Array.exists (fun a -> a = "--verbose" || a = "-v")
    // Tables of Spectre.Console shrink to 80 columns when output is redirected; logs read better wider.
    if Console.IsOutputRedirected then Spectre.Console.AnsiConsole.Profile.Width <- 200
    let parser = ArgumentParser.Create<Command>(programName = "taylor-calibrate")
    try
        let results = parser.ParseCommandLine(argv, raiseOnUsage = true)
        dispatch results
    with
    | :? ArguParseException as e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        if argv |> Array.contains "op" then printfn "%s" (OpCommand.opTable ())
        0
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | UsageError msg ->
        eprintfn "error: %s" msg
        2
    | :? ArgumentException as e ->
        eprintfn "error: %s" e.Message
        if verbose then eprintfn "%O" e
        2
    | Interrupted continueWith ->
        eprintfn "interrupted"
        continueWith |> Option.iter (eprintfn "continue with: %s")
        130
    | :? OperationCanceledException ->
        eprintfn "interrupted"
        130
    | e ->
        eprintfn "internal error: %s%s" e.Message (if verbose then "\n" + e.ToString() else " (run with --verbose for details)")
        1
