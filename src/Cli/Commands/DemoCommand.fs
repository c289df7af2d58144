/// `taylor-calibrate demo`: the main job on built-in defaults.
/// 1. the device list and a GEMM on the chosen device checked against a double-precision product;
/// 2. when the real teacher is present (stories260K under ../shared, or --teacher/--calib-text/--eval-text):
///    convert it twice keeping layer 0 — the naive baseline and Taylor-Calibrate — and report the zero-shot
///    perplexity of teacher, naive and Taylor-Calibrate students on held-out text, with their ratio.
/// Outputs go to out/demo/ (students, eval JSON, summary.json). Without the data, step 2 is skipped with a note.
module TaylorCalibrate.Cli.DemoCommand

open System
open System.IO
open System.Text.Json
open Argu
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Cli.Common

type Args =
    | Device of spec: string
    | Teacher of path: string
    | Calib_Text of path: string
    | Eval_Text of path: string
    | Out of dir: string
    | Steps of n: int
    | Max_Eval_Tokens of n: int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Device _ -> "auto (default) | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Teacher _ -> "teacher (default: stories260K.bin from ../shared/models/stories260K)"
            | Calib_Text _ -> "calibration text (default: ../shared/data/tinystories/valid-head.txt)"
            | Eval_Text _ -> "held-out evaluation text (default: ../shared/data/tinystories/valid-far.txt)"
            | Out _ -> "output folder (default out/demo; replaced)"
            | Steps _ -> "alignment steps per layer (default 300, the method's)"
            | Max_Eval_Tokens _ -> "evaluate on the first N tokens of the evaluation text (default 65536)"

/// Largest relative error of an fp32 GEMM (odd shape, both transposes) against a double product.
let gemmCheck (be: IBackend) =
    let m, n, k = 193, 211, 167
    let rnd = Random 7
    let a = Array.init (k * m) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 1.0)) // stored [K,M]
    let b = Array.init (n * k) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 1.0)) // stored [N,K]
    use ta = be.FromArray(a, k, m)
    use tb = be.FromArray(b, n, k)
    use tc = be.Allocate [| m; n |]
    let spec = GemmSpec(m, n, k, TransA = true, TransB = true)
    let sw = Diagnostics.Stopwatch.StartNew()
    be.Gemm(ta, tb, tc, spec)
    let c = tc.ToArray()
    let seconds = sw.Elapsed.TotalSeconds
    let mutable worst = 0.0
    for i in 0 .. m - 1 do
        for j in 0 .. n - 1 do
            let mutable s, sabs = 0.0, 0.0
            for p in 0 .. k - 1 do
                let x = float a[p * m + i] * float b[j * k + p]
                s <- s + x
                sabs <- sabs + abs x
            // Relative to Σ|a·b|: the scale fp32 rounding errors of a K-term dot product live on.
            worst <- max worst (abs (float c[i * n + j] - s) / max sabs 1e-30)
    m, n, k, worst, seconds

/// The first existing `shared/<relative>` found in the current folder or above it.
let private findShared (relative: string) =
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        else
            let p = Path.Combine(d.FullName, "shared", relative)
            if File.Exists p then Some p else up d.Parent
    up (DirectoryInfo(Directory.GetCurrentDirectory()))

let private parse<'T when 'T :> IArgParserTemplate> (argv: string list) =
    ArgumentParser.Create<'T>().ParseCommandLine(Array.ofList argv, raiseOnUsage = true)

let private perplexityOf (json: string) =
    use doc = JsonDocument.Parse(File.ReadAllText json)
    doc.RootElement.GetProperty("perplexity").GetDouble()

let run (args: ParseResults<Args>) =
    DevicesCommand.run (parse<DevicesCommand.Args> []) |> ignore
    let device = args.TryGetResult Device
    let gemmOk =
        use be = openDevice device
        printfn "\nGEMM check on %s (%s):" be.Name be.Info.Name
        let m, n, k, worst, seconds = gemmCheck be
        // fp32 accumulation of K terms: error ≲ K·2⁻²⁴ relative to Σ|a·b| in the worst case, ~√K·2⁻²⁴ typically.
        let bound = float k * Math.Pow(2.0, -24.0)
        printfn "  C = Aᵀ·Bᵀ, M=%d N=%d K=%d: max error relative to Σ|a·b| = %.2e (bound K·2^-24 = %.2e), %.1f ms incl. transfers" m n k worst bound (seconds * 1000.0)
        worst <= bound
    if not gemmOk then
        eprintfn "demo FAILED: GEMM error above the fp32 bound"
        1
    else
    let pick (arg: Args option) relative =
        match arg with
        | Some(Teacher p) | Some(Calib_Text p) | Some(Eval_Text p) -> Some p
        | _ -> findShared relative
    let teacher = pick (args.TryGetResult Teacher |> Option.map Teacher) "models/stories260K/stories260K.bin"
    let calib = pick (args.TryGetResult Calib_Text |> Option.map Calib_Text) "data/tinystories/valid-head.txt"
    let evalText = pick (args.TryGetResult Eval_Text |> Option.map Eval_Text) "data/tinystories/valid-far.txt"
    match teacher, calib, evalText with
    | Some teacher, Some calib, Some evalText ->
        let out = Path.GetFullPath(args.GetResult(Out, Path.Combine("out", "demo")))
        if Directory.Exists out then Directory.Delete(out, true)
        Directory.CreateDirectory out |> ignore
        let steps = string (args.GetResult(Steps, 300))
        let maxTokens = string (args.GetResult(Max_Eval_Tokens, 65536))
        let dev = match device with Some d -> [ "--device"; d ] | None -> []
        printfn "\nConverting %s, keeping layer 0 (calibration: %s; held-out evaluation: %s)" teacher calib evalText
        let evalOne name model =
            let json = Path.Combine(out, $"eval-{name}.json")
            EvalCommand.run (parse<EvalCommand.Args> ([ "--model"; model; "--text"; evalText; "--max-tokens"; maxTokens; "--json"; json ] @ dev)) |> ignore
            perplexityOf json
        let convertOne init =
            let dir = Path.Combine(out, init)
            let argv =
                [ "--teacher"; teacher; "--keep"; "0"; "--init"; init; "--calib-text"; calib; "--eval-text"; evalText
                  "--out"; dir; "--steps"; steps ] @ dev
            ConvertCommand.run (parse<ConvertCommand.Args> argv) |> ignore
            dir
        let teacherPpl = evalOne "teacher" teacher
        let naivePpl = evalOne "naive" (convertOne "naive")
        let tcPpl = evalOne "taylor-calibrate" (convertOne "taylor-calibrate")
        let summary =
            {| teacher = teacher; kept_layers = [ 0 ]; eval_text = evalText; eval_max_tokens = int maxTokens
               teacher_perplexity = teacherPpl; naive_perplexity = naivePpl; taylor_calibrate_perplexity = tcPpl
               naive_over_taylor_calibrate = naivePpl / tcPpl |}
        AtomicFile.writeText (Path.Combine(out, "summary.json")) (JsonSerializer.Serialize(summary, JsonSerializerOptions(WriteIndented = true)))
        printfn "\nZero-shot perplexity on held-out text (%s tokens of %s):" maxTokens (Path.GetFileName evalText)
        printfn "  teacher           %10.3f" teacherPpl
        printfn "  naive student     %10.3f" naivePpl
        printfn "  taylor-calibrate  %10.3f   (%.2fx better than naive)" tcPpl (naivePpl / tcPpl)
        printfn "Students, reports (report.json/.html) and summary.json in %s" out
        printfn "demo OK"
        0
    | _ ->
        printfn "\nThe real teacher and text (../shared/models/stories260K, ../shared/data/tinystories) are not here, so the"
        printfn "conversion part of the demo is skipped. Run it on your own model with:"
        printfn "  taylor-calibrate demo --teacher MODEL --calib-text CALIB.txt --eval-text HELDOUT.txt"
        printfn "demo OK"
        0
