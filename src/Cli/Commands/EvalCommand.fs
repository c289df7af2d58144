/// `taylor-calibrate eval --model M --text FILE [--window W] [--max-tokens N] [--device D] [--json FILE]
/// [--tokenizer T] [--vs MODEL]`: perplexity with the fixed protocol of Eval/Perplexity.fs, a progress bar,
/// and an optional JSON report {perplexity, nll, tokens, windows, window, tokens_per_s, ...} written atomically.
module TaylorCalibrate.Cli.EvalCommand

open System
open System.Text.Json
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Model of path: string
    | [<Mandatory>] Text of path: string
    | Window of tokens: int
    | Max_Tokens of n: int
    | Device of device: string
    | Json of path: string
    | Tokenizer of path: string
    | Vs of model: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a Hugging Face model directory or a llama2.c .bin checkpoint"
            | Text _ -> "text file (documents separated by <|endoftext|> lines) or a directory of *.txt files"
            | Window _ -> "window length W (default min(2048, context)); tokens 2..W of each window are predicted"
            | Max_Tokens _ -> "use only the first N tokens of the stream"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto)"
            | Json _ -> "write the results as JSON to this file"
            | Tokenizer _ -> "tokenizer file (tokenizer.json or tok*.bin); default: found beside the model"
            | Vs _ -> "a reference model (same vocabulary, e.g. the teacher of a student): also report the mean KL(vs ‖ model)"

/// Runs the evaluation under a progress bar (plain when the console is not interactive).
let private evaluateWithProgress m vs (set: Perplexity.EvalSet) (ct: CancellationToken) =
    AnsiConsole.Progress()
        .AutoClear(true)
        .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), RemainingTimeColumn())
        .Start(fun ctx ->
            let task = ctx.AddTask("windows", true, float set.Windows)
            let progress =
                { new IProgress<Perplexity.Progress> with
                    member _.Report p = task.Value <- float p.WindowsDone }
            Perplexity.evaluateModel m vs set (Some progress) ct)

let run (args: ParseResults<Args>) =
    let path = args.GetResult Model
    let textPath = args.GetResult Text
    // Teachers and student directories alike (Student/AnyModel.fs).
    let t = AnyModel.load path |> orFail
    let config = AnyModel.config t
    let tok = AnyModel.tokenizerFor path t (args.TryGetResult Tokenizer) |> orFail
    let other = args.TryGetResult Vs |> Option.map (fun p -> AnyModel.load p |> orFail)
    other |> Option.iter (fun o ->
        let oc = AnyModel.config o
        if oc.Vocab <> config.Vocab then
            usageError $"--vs {args.GetResult Vs}: vocabulary {oc.Vocab} differs from the model's {config.Vocab}")
    let docs = readText textPath
    let stream = Corpus.tokenStreamUpTo tok (args.TryGetResult Max_Tokens) docs
    let set = Perplexity.prepare textPath config stream (args.TryGetResult Window) (args.TryGetResult Max_Tokens) |> orFail
    use be = openDevice (args.TryGetResult Device)
    let m, mHandle = AnyModel.openOn be t
    use _mHandle = mHandle
    let vs = other |> Option.map (AnyModel.openOn be)
    use _vsHandle = match vs with Some(_, h) -> h | None -> { new IDisposable with member _.Dispose() = () }
    let vs = vs |> Option.map fst
    use cts = new CancellationTokenSource()
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    let r =
        try evaluateWithProgress m vs set cts.Token
        finally Console.CancelKeyPress.RemoveHandler onCancel
    printfn "model       %s (%s, device %s)" path (AnyModel.describe t) be.Name
    printfn "text        %s: %d documents, %d tokens" textPath docs.Length set.StreamTokens
    printfn "windows     %d x %d tokens (%d predicted)" r.Windows r.Window r.Predicted
    printfn "perplexity  %.4f" r.Perplexity
    printfn "nll         %.4f nats/token" r.Nll
    r.MeanKl |> Option.iter (printfn "mean KL     %.5f nats/token")
    printfn "speed       %.0f tokens/s (%.1f s)" r.TokensPerSecond r.Seconds
    match args.TryGetResult Json with
    | None -> ()
    | Some jsonPath ->
        let report =
            {| perplexity = r.Perplexity; nll = r.Nll; total_nll = r.TotalNll; tokens = r.Tokens; predicted = r.Predicted
               windows = r.Windows; window = r.Window; tokens_per_s = r.TokensPerSecond; seconds = r.Seconds
               mean_kl = Option.toNullable r.MeanKl; model = path; text = textPath; documents = docs.Length
               stream_tokens = set.StreamTokens; device = be.Name; vs = args.TryGetResult Vs |> Option.toObj |}
        AtomicFile.writeText jsonPath (JsonSerializer.Serialize(report, JsonSerializerOptions(WriteIndented = true)))
        printfn "wrote %s" jsonPath
    0
