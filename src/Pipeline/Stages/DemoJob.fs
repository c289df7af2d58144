/// The main job as one call a script or the CLI makes: `run` checks every input, then
/// 1. lists the devices and checks a GEMM on the chosen one against a double-precision product;
/// 2. writes the texts (the built-in corpus split by document, Demo.writeTexts) or takes the given ones;
/// 3. the teacher's zero-shot held-out PPL;
/// 4, 5. converts the teacher naive and Taylor-Calibrate (ConvertJob; docs/method.md §5, uniform policy §6)
///    and evaluates both students zero-shot;
/// 6, 7. a Stage-2 distillation (docs/method.md §7) of both students with one budget and one recipe, each
///    evaluated on the held-out text at every checkpoint;
/// and writes the report (Demo.writeReport). It says what it does through `Event`s; it prints nothing.
module TaylorCalibrate.Pipeline.Stages.DemoJob

open System
open System.Diagnostics
open System.IO
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// Where the job's three texts come from.
type Texts =
    /// A document corpus split by document name: names before `heldOutFrom` are the distillation text, the
    /// last `calibDocuments` of them the calibration text; the rest is held out for evaluation.
    | SplitCorpus of source: DocumentSource * heldOutFrom: string * calibDocuments: int
    /// Files given by the user (documents separated by <|endoftext|>); none may share a document with `eval`.
    | Given of calib: string * train: string * eval: string

/// Everything the job is asked to do.
type Request =
    { Teacher: string
      Texts: Texts
      Out: string
      /// Fraction of layers that keep softmax attention (uniform policy).
      KeepFraction: float
      /// Alignment steps per converted layer.
      AlignSteps: int
      /// Stage-2 training tokens per student.
      DistillTokens: int64
      /// Tokens between Stage-2 checkpoints (each one evaluated on the held-out text).
      CheckpointEvery: int64
      /// Stage-2 tokens per row.
      SeqLen: int
      /// Stage-2 rates: parameters named "attn" (the GDN and kept attention layers) and the rest.
      LrAttention: float32
      LrRest: float32
      /// Held-out tokens every evaluation uses (the first N of the held-out text).
      EvalMaxTokens: int }

module Request =
    /// The State-of-the-Union corpus split of the built-in teacher: addresses before 2000 train and calibrate
    /// (the last 20 of them calibrate), those from 2000 on are held out.
    let builtInTexts (corpus: DocumentSource) = SplitCorpus(corpus, "2000", 20)

    /// The demo's defaults for `teacher` on `texts`, written into `out`. The Stage-2 rates are 10x/14x the
    /// method's 1e-4/7e-6 (docs/method.md §7): those are set for hundreds of millions of tokens, the demo
    /// trains ~120 steps; both students get the same ones.
    let defaults (teacher: string) (texts: Texts) (out: string) =
        { Teacher = teacher; Texts = texts; Out = out; KeepFraction = 0.25; AlignSteps = Align.AlignOptions.defaults.Steps
          DistillTokens = 245760L; CheckpointEvery = 24576L; SeqLen = 256; LrAttention = 1e-3f; LrRest = 1e-4f
          EvalMaxTokens = 16384 }

/// The job's steps, in order.
let stepCount = 7

/// What the job reports while it works.
type Event =
    /// Step `index` (1-based, of `stepCount`) begins; `what` says what it does.
    | StepStarted of index: int * what: string
    /// Step `index` finished after `seconds` (`elapsed` since the job began).
    | StepFinished of index: int * seconds: float * elapsed: float
    /// A line of findings.
    | Note of string
    /// Held-out evaluation: windows done of windows.
    | Evaluating of windowsDone: int * windows: int
    /// A converted layer starts (layer, converted layers before it, converted layers in all).
    | LayerStarted of layer: int * index: int * layers: int
    /// One alignment step of a layer.
    | Aligning of layer: int * step: int * steps: int * loss: float
    /// What the distillation of the student with init `init` reports.
    | Distilling of init: string * Distill.DistillProgress

/// Largest error of an fp32 GEMM (odd shape, both transposes) against a double product, relative to
/// Σ|a·b|, the scale fp32 rounding errors of a K-term dot product live on: (M, N, K, error, seconds).
let gemmCheck (be: IBackend) =
    let m, n, k = 193, 211, 167
    let rnd = Random 7
    let a = Array.init (k * m) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 1.0)) // (K, M)
    let b = Array.init (n * k) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 1.0)) // (N, K)
    use ta = be.FromArray(a, k, m)
    use tb = be.FromArray(b, n, k)
    use tc = be.Allocate [| m; n |]
    let sw = Stopwatch.StartNew()
    be.Gemm(ta, tb, tc, GemmSpec(m, n, k, TransA = true, TransB = true))
    let c = tc.ToArray() // (M, N)
    let seconds = sw.Elapsed.TotalSeconds
    let mutable worst = 0.0
    for i in 0 .. m - 1 do
        for j in 0 .. n - 1 do
            let mutable s, sabs = 0.0, 0.0
            for p in 0 .. k - 1 do
                let x = float a[p * m + i] * float b[j * k + p]
                s <- s + x
                sabs <- sabs + abs x
            worst <- max worst (abs (float c[i * n + j] - s) / max sabs 1e-30)
    m, n, k, worst, seconds

/// The bound of gemmCheck's error: fp32 accumulation of K terms errs by at most ~K·2⁻²⁴ relative to Σ|a·b|.
let gemmBound (k: int) = float k * Math.Pow(2.0, -24.0)

/// The converted student of one init, its directory and zero-shot PPL.
type private Converted = { Dir: string; Perplexity: float }

let private check (ok: bool) (option: string) (why: string) = if ok then Ok() else Error(InvalidOption(option, why))

/// Checks the numbers of a request (files are checked when loaded).
let validate (r: Request) : Result<unit, InputError> =
    check (r.KeepFraction > 0.0 && r.KeepFraction < 1.0) "--keep-fraction" $"{r.KeepFraction}: expected a fraction between 0 and 1"
    |> Result.bind (fun () -> check (r.AlignSteps >= 1) "--steps" $"{r.AlignSteps} must be at least 1")
    |> Result.bind (fun () -> check (r.DistillTokens >= 1L) "--distill-tokens" $"{r.DistillTokens} must be positive")
    |> Result.bind (fun () -> check (r.CheckpointEvery >= 1L) "--checkpoint-every" $"{r.CheckpointEvery} must be positive")
    |> Result.bind (fun () -> check (r.SeqLen >= 2) "--seq-len" $"{r.SeqLen} must be at least 2")
    |> Result.bind (fun () -> check (r.EvalMaxTokens >= 2) "--max-eval-tokens" $"{r.EvalMaxTokens} must be at least 2")
    |> Result.bind (fun () ->
        check (Single.IsFinite r.LrAttention && r.LrAttention > 0f && Single.IsFinite r.LrRest && r.LrRest > 0f)
            "--lr-attn/--lr-rest" $"{r.LrAttention}/{r.LrRest}: expected positive rates")

/// Held-out PPL of the model at `path` on the first `maxTokens` tokens of `evalText` (Eval/Perplexity.fs).
let private perplexity (be: IBackend) (path: string) (evalText: string) (maxTokens: int) (progress: Event -> unit) ct =
    AnyModel.load path
    |> Result.bind (fun m -> AnyModel.tokenizerFor path m None |> Result.map (fun tok -> m, tok))
    |> Result.bind (fun (m, tok) ->
        Corpus.readDocuments evalText
        |> Result.bind (fun docs ->
            let stream = Corpus.tokenStreamUpTo tok (Some maxTokens) docs
            Perplexity.prepare evalText (AnyModel.config m) stream None (Some maxTokens))
        |> Result.map (fun set ->
            let model, handle = AnyModel.openOn be m
            use _h = handle
            let report = { new IProgress<Perplexity.Progress> with member _.Report p = progress (Evaluating(p.WindowsDone, p.Windows)) }
            (Perplexity.evaluateModel model None set (Some report) ct).Perplexity))

/// Converts the teacher with `strategy` into `dir` (ConvertJob: the student, report.json and report.html).
let private convertInto (be: IBackend) (teacherPath: string) (kept: int list) (strategy: Convert.InitStrategy)
                        (calib: string) (evalText: string) (steps: int) (dir: string) (progress: Event -> unit) ct =
    let request =
        { ConvertJob.Request.defaults teacherPath (ConvertJob.Layers kept) strategy (Some calib) with
            EvalText = Some evalText; Steps = Some steps }
    ConvertJob.prepare request
    |> Result.bind (fun p -> ConvertJob.takeOutput p dir false |> Result.map (fun o -> p, o))
    |> Result.map (fun (p, o) ->
        use o = o
        for w in p.Warnings do progress (Note $"warning: {w}")
        let total = if Convert.InitStrategy.usesPhase2 strategy then p.Steps else 0
        let show = function
            | ConvertJob.LayerStarted i -> progress (LayerStarted(i, List.findIndex ((=) i) p.Converted, p.Converted.Length))
            | ConvertJob.Aligning(i, s, loss) -> progress (Aligning(i, s, total, loss))
            | _ -> ()
        ConvertJob.run be p o show ct |> ignore)

/// Runs the whole job on `be` (see the module comment). Every input is checked before `Out` is touched.
let run (be: IBackend) (r: Request) (progress: Event -> unit) (ct: CancellationToken) : Result<Demo.DemoSummary, InputError> =
    let total = Stopwatch.StartNew()
    let timings = Collections.Generic.List<string * float>()
    let step (i: int) (what: string) (f: unit -> Result<'a, InputError>) =
        progress (StepStarted(i, what))
        let sw = Stopwatch.StartNew()
        let outcome = f ()
        timings.Add((what, sw.Elapsed.TotalSeconds))
        progress (StepFinished(i, sw.Elapsed.TotalSeconds, total.Elapsed.TotalSeconds))
        outcome
    let given = match r.Texts with Given(c, t, e) -> [ "--calib-text", c; "--train-text", t; "--eval-text", e ] | SplitCorpus _ -> []
    inputResult {
        do! validate r
        do! match given |> List.tryFind (fun (_, p) -> not (File.Exists p || Directory.Exists p)) with
            | Some(option, p) -> Error(InvalidOption(option, $"{p}: file not found"))
            | None -> Ok()
        let! teacher = ModelFiles.loadTeacher r.Teacher
        let c = teacher.Config
        let! kept = LayerPolicy.validate "--keep-fraction" c.Layers (LayerPolicy.uniform c.Layers r.KeepFraction)
        let converted = [ 0 .. c.Layers - 1 ] |> List.except kept
        // The calibration batch is made of chunks of 256 tokens (docs/method.md §5.1).
        let chunk = Calibration.CalibrationOptions.defaults.Length
        do! check (c.Context >= chunk) "--teacher" $"{r.Teacher}: context {c.Context} is shorter than the calibration chunk {chunk}"
        do! check (r.SeqLen <= c.Context) "--seq-len" $"{r.SeqLen} exceeds the teacher's context {c.Context}"
        do! Demo.prepareOut r.Out (("--teacher", r.Teacher) :: given)

        do! step 1 $"devices and a checked GEMM on {be.Name}" (fun () ->
                let list = Devices.List()
                for e in list.Entries do
                    let auto = if e.IsAuto then ", the auto choice" else ""
                    progress (Note $"device {e.Id}: {e.Info.Name} ({e.Info.Kind}){auto}")
                if not (isNull list.VulkanProblem) then progress (Note $"Vulkan: {list.VulkanProblem}")
                let m, n, k, worst, seconds = gemmCheck be
                let bound = gemmBound k
                progress (Note $"GEMM on {be.Name}: C = Aᵀ·Bᵀ, M={m} N={n} K={k}: largest error relative to Σ|a·b| {worst:E2} (bound K·2^-24 = {bound:E2}), {seconds * 1000.0:F1} ms")
                check (worst <= bound) "GEMM check" $"the error {worst:E2} on {be.Name} exceeds the fp32 bound {bound:E2}")

        let! calib, train, evalText =
            match r.Texts with
            | SplitCorpus(source, heldOutFrom, calibDocs) ->
                step 2 $"splitting the corpus by document: names before {heldOutFrom} train and calibrate, from {heldOutFrom} on are held out" (fun () ->
                    Demo.writeTexts source heldOutFrom calibDocs (Path.Combine(r.Out, "text"))
                    |> Result.map (fun t ->
                        progress (Note $"{t.TrainDocuments} distillation documents (text/train.txt), the last {t.CalibDocuments} of them for calibration (text/calib.txt), {t.EvalDocuments} held out (text/eval.txt)")
                        t.Calib, t.Train, t.Eval))
            | Given(c, t, e) -> step 2 "texts given on the command line" (fun () -> Ok(c, t, e))

        let! teacherPpl =
            step 3 $"zero-shot PPL of the teacher on the first {r.EvalMaxTokens} held-out tokens" (fun () ->
                perplexity be r.Teacher evalText r.EvalMaxTokens progress ct
                |> Result.map (fun ppl -> progress (Note $"teacher {r.Teacher}: PPL {ppl:F3}"); ppl))

        let convert i strategy =
            let name = Convert.InitStrategy.name strategy
            step i $"converting with the {name} init: attention kept in layer(s) {kept}, layers {converted} become Gated DeltaNet; zero-shot PPL" (fun () ->
                let dir = Path.Combine(r.Out, name)
                convertInto be r.Teacher kept strategy calib evalText r.AlignSteps dir progress ct
                |> Result.bind (fun () -> perplexity be dir evalText r.EvalMaxTokens progress ct)
                |> Result.map (fun ppl ->
                    progress (Note $"{name} student: zero-shot PPL {ppl:F3} ({ppl / teacherPpl:F3}x the teacher's)")
                    { Dir = dir; Perplexity = ppl }))
        let! naive = convert 4 Convert.InitStrategy.Naive
        let! tc = convert 5 Convert.InitStrategy.TaylorCalibrate

        let distill i (name: string) (student: Converted) =
            step i $"Stage-2 distillation of the {name} student: {r.DistillTokens} tokens, rates {r.LrAttention} (attention/GDN) and {r.LrRest} (rest), held-out PPL every {r.CheckpointEvery} tokens" (fun () ->
                let sources : DistillInputs.DistillSources =
                    { StudentDir = student.Dir; TeacherPath = r.Teacher; TrainTexts = [ train ]; EvalText = Some evalText
                      SeqLen = r.SeqLen; Seed = 0UL; EvalMaxTokens = Some r.EvalMaxTokens }
                let options =
                    { Distill.DistillOptions.defaults (Distill.Stage2(r.LrAttention, r.LrRest)) r.DistillTokens with
                        CheckpointEvery = r.CheckpointEvery }
                let report = { new IProgress<Distill.DistillProgress> with member _.Report p = progress (Distilling(name, p)) }
                DistillInputs.load sources
                |> Result.bind (fun inputs -> Distill.run be inputs options (Path.Combine(r.Out, $"{name}-stage2")) report ct)
                |> Result.map (fun outcome -> outcome.Curve))
        let! naiveCurve = distill 6 "naive" naive
        let! tcCurve = distill 7 "taylor-calibrate" tc

        let summary : Demo.DemoSummary =
            { Teacher = r.Teacher; KeptLayers = kept; TeacherLayers = c.Layers; EvalText = evalText; EvalMaxTokens = r.EvalMaxTokens
              TeacherPerplexity = teacherPpl; NaivePerplexity = naive.Perplexity; TaylorPerplexity = tc.Perplexity
              Stage2 = ({ Tokens = r.DistillTokens; SeqLen = r.SeqLen; LrAttention = r.LrAttention; LrRest = r.LrRest } : Demo.Stage2Recipe)
              Naive = naiveCurve; Taylor = tcCurve; Ratio = Demo.tokenRatio naiveCurve tcCurve
              StepSeconds = List.ofSeq timings @ [ "total", total.Elapsed.TotalSeconds ] }
        Demo.writeReport r.Out summary
        return summary }
