/// The token-budget experiment (docs/method.md §8): how many distillation tokens a naive and a
/// Taylor-Calibrate student need to reach matched held-out perplexities. The kept layers come from one
/// policy (LayerSelection, scored on the training text, never on the held-out one); both students are
/// converted with the same kept layers and seed (Convert), then distilled with the same Stage-1 + Stage-2
/// budget (Distill; the method's 1:6 split unless told otherwise). Held-out PPL is measured at 0 tokens,
/// after Stage 1 and at every checkpoint; the two stages form one curve on a common token axis (Stage-2
/// tokens counted after Stage 1's). Tokens-to-target and the BL/TC ratios are TokenBudgetResult.fs's.
///
/// OUT layout (every part reused by a rerun with the same settings; OUT/settings.json names them):
///   settings.json, selection.json, students/{init}-seed{s}/, runs/{init}-seed{s}/stage1|stage2/
/// A run interrupted inside a stage resumes from its checkpoints (Distill's exact resume).
module TaylorCalibrate.Pipeline.Stages.TokenBudget

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Distill.LearningCurve
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// Every setting of the experiment. `Seeds` is not part of a run's identity: seed s's runs are the same
/// whatever the number of seeds, so raising --seeds reuses the finished ones.
type Settings =
    { TeacherPath: string
      Policy: LayerSelection.Policy
      KeepFraction: float
      /// Stage-1 plus Stage-2 training tokens per student.
      Tokens: int64
      /// Stage 1 : Stage 2 parts of Tokens (1:6 by default).
      Split: int * int
      /// Tokens between held-out evaluations (both stages).
      CheckpointEvery: int64
      CalibText: string
      TrainText: string
      EvalText: string
      Seeds: int
      SeqLen: int
      Batch: int
      Stage1Lr: float32
      Stage2LrAttention: float32
      Stage2LrRest: float32
      /// Phase-2 alignment steps of the Taylor-Calibrate init (the method's 300).
      AlignSteps: int
      /// Held-out tokens evaluated (None: the whole text).
      EvalMaxTokens: int option
      /// Tokens of the training text that AR / GA-S2 score layers on.
      SelectionTokens: int }

module Settings =
    /// The method's recipe (docs/method.md §7) on `tokens` tokens.
    let defaults teacher policy keepFraction tokens checkpointEvery calib train eval =
        { TeacherPath = teacher; Policy = policy; KeepFraction = keepFraction; Tokens = tokens; Split = (1, 6)
          CheckpointEvery = checkpointEvery; CalibText = calib; TrainText = train; EvalText = eval; Seeds = 1
          SeqLen = 256; Batch = 8; Stage1Lr = 1e-3f; Stage2LrAttention = 1e-4f; Stage2LrRest = 7e-6f; AlignSteps = 300
          EvalMaxTokens = Some 16384; SelectionTokens = 8192 }

    let private f32 (v: float32) = v.ToString("R", CultureInfo.InvariantCulture)

    /// Stage-1 and Stage-2 tokens.
    let stageTokens (s: Settings) =
        let a, b = s.Split
        let s1 = s.Tokens * int64 a / int64 (a + b)
        s1, s.Tokens - s1

    /// The settings that decide the results, one key each, as OUT/settings.json records them.
    let identity (s: Settings) : (string * string) list =
        let a, b = s.Split
        [ "teacher", Path.GetFullPath s.TeacherPath
          "policy", LayerSelection.Policy.name s.Policy
          "keep_fraction", s.KeepFraction.ToString("R", CultureInfo.InvariantCulture)
          "tokens", string s.Tokens
          "stage_split", $"{a}:{b}"
          "checkpoint_every", string s.CheckpointEvery
          "calib_text", Path.GetFullPath s.CalibText
          "train_text", Path.GetFullPath s.TrainText
          "eval_text", Path.GetFullPath s.EvalText
          "seq_len", string s.SeqLen
          "batch", string s.Batch
          "stage1_lr", f32 s.Stage1Lr
          "stage2_lr_attn", f32 s.Stage2LrAttention
          "stage2_lr_rest", f32 s.Stage2LrRest
          "align_steps", string s.AlignSteps
          "eval_max_tokens", (s.EvalMaxTokens |> Option.map string |> Option.defaultValue "all")
          "selection_tokens", string s.SelectionTokens ]

    /// Option names of the identity keys (for the one-line error of a mismatched OUT).
    let optionOf (key: string) =
        match key with
        | "stage_split" -> "--stage-split"
        | "stage1_lr" -> "--stage1-lr"
        | "stage2_lr_attn" -> "--lr-attn"
        | "stage2_lr_rest" -> "--lr-rest"
        | k -> "--" + k.Replace('_', '-')

/// The two inits compared (docs/method.md §5): the baseline and the method.
let inits = [ Convert.InitStrategy.Naive; Convert.InitStrategy.TaylorCalibrate ]

/// One student's distillation: its curve on the common token axis.
type StudentRun =
    { Init: Convert.InitStrategy
      Seed: int
      /// Tokens of Stage 1 (where Stage 2 starts on the axis).
      Stage1Tokens: int64
      /// Zero-shot, Stage-1 checkpoints, then Stage-2 checkpoints shifted by Stage1Tokens.
      Points: CurvePoint list }

/// What the experiment measured (TokenBudgetResult.fs turns it into targets and ratios).
type Outcome =
    { Settings: Settings
      Kept: int list
      Layers: int
      TeacherPerplexity: float
      Runs: StudentRun list
      /// Wall time of this invocation.
      Seconds: float }

/// What the experiment reports while it works.
type Event =
    | Note of string
    | Distilling of run: string * Distill.DistillProgress

let private settingsFile = "settings.json"

/// Writes OUT/settings.json, or checks that an existing one records the same settings (the first differing
/// one named, as its option).
let checkOut (out: string) (s: Settings) : Result<unit, InputError> =
    let path = Path.Combine(out, settingsFile)
    if File.Exists out then Error(InvalidOption("--out", $"{out} is a file, not a folder"))
    elif File.Exists path then
        let saved =
            try
                let o = JsonNode.Parse(File.ReadAllText path).AsObject()
                Ok(o |> Seq.map (fun kv -> kv.Key, (match kv.Value with null -> "" | v -> v.GetValue<string>())) |> Map.ofSeq)
            with e -> Error(CorruptFile(path, $"cannot be read as the experiment's settings ({e.Message})"))
        saved |> Result.bind (fun saved ->
            match Settings.identity s |> List.tryFind (fun (k, v) -> saved.TryFind k <> Some v) with
            | Some(k, v) ->
                let was = saved.TryFind k |> Option.defaultValue "(absent)"
                Error(InvalidOption(Settings.optionOf k, $"{out} holds an experiment run with {k} = {was}, not {v}; rerun with the same settings to resume it, or choose another --out"))
            | None -> Ok())
    elif Directory.Exists out && Directory.EnumerateFileSystemEntries out |> Seq.isEmpty |> not then
        Error(InvalidOption("--out", $"{out} is not empty and holds no {settingsFile}; give an empty or new folder"))
    else
        Directory.CreateDirectory out |> ignore
        let o = JsonObject()
        for k, v in Settings.identity s do o[k] <- JsonValue.Create v
        AtomicFile.writeText path (o.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
        Ok()

/// Sequencing of results: the first error stops.
type private ResultBuilder() =
    member _.Bind(r: Result<'a, InputError>, f: 'a -> Result<'b, InputError>) = Result.bind f r
    member _.Return(v: 'a) : Result<'a, InputError> = Ok v
    member _.ReturnFrom(r: Result<'a, InputError>) = r
    member _.Zero() : Result<unit, InputError> = Ok()

let private result = ResultBuilder()

/// The texts read once and checked: calibration and training texts share no document with the held-out one.
type Texts =
    { Calib: string list
      Train: string list
      Eval: string list }

let readTexts (s: Settings) : Result<Texts, InputError> =
    result {
        let! calib = Corpus.readDocuments s.CalibText
        let! train = Corpus.readDocuments s.TrainText
        let! eval = Corpus.readDocuments s.EvalText
        let sharedTrain = Calibration.overlap train eval
        let sharedCalib = Calibration.overlap calib eval
        do! if sharedTrain > 0 then
                Error(InvalidOption("--train-text", $"{s.TrainText}: {sharedTrain} of its {train.Length} documents also occur in the evaluation text {s.EvalText}; train on text disjoint from the held-out text"))
            elif sharedCalib > 0 then
                Error(InvalidOption("--calib-text", $"{s.CalibText}: {sharedCalib} of its {calib.Length} documents also occur in the evaluation text {s.EvalText}; calibrate on text disjoint from the held-out text"))
            else Ok()
        return { Calib = calib; Train = train; Eval = eval } }

/// The calibration batch of the published inits: 4 chunks of min(256, context) tokens.
let calibrationBatch (s: Settings) (c: ModelConfig) (tok: ITokenizer) (texts: Texts) =
    let opts = { Calibration.CalibrationOptions.defaults with Length = min 256 c.Context }
    Calibration.build opts tok s.CalibText texts.Calib (Some(s.EvalText, texts.Eval))

/// The kept layers by the policy, cached in OUT/selection.json (checked to be for this teacher).
let private select (be: IBackend) (s: Settings) (out: string) (teacher: Teacher) (tok: ITokenizer) (texts: Texts)
                   (calib: Calibration.CalibrationBatch) (report: Event -> unit) ct : Result<int list, InputError> =
    let path = Path.Combine(out, "selection.json")
    let identity = TeacherIdentity.ofTeacher s.TeacherPath teacher
    if File.Exists path then
        LayerSelectionFile.read path |> Result.bind (fun sel -> LayerSelectionFile.keptFor path sel identity)
    else
    let L = teacher.Config.Layers
    let k = LayerPolicy.keptCount L s.KeepFraction
    if k >= L then Error(InvalidOption("--keep-fraction", $"{s.KeepFraction} keeps all {L} layers; nothing would be converted"))
    else
    result {
        let! plan =
            match s.Policy with
            | LayerSelection.Policy.Uniform -> Ok LayerSelection.Plan.Uniform
            | policy ->
                // Layers are scored on training text: the held-out text is for the final figures only.
                let stream = Corpus.tokenStreamUpTo tok (Some s.SelectionTokens) texts.Train
                Perplexity.prepare s.TrainText teacher.Config stream (Some(min 256 teacher.Config.Context)) (Some s.SelectionTokens)
                |> Result.bind (fun set ->
                    let eval : LayerSelection.EvalInput = { Source = s.TrainText; Set = set }
                    match policy with
                    | LayerSelection.Policy.Ar -> Ok(LayerSelection.Plan.Ar eval)
                    | LayerSelection.Policy.GaS2 init ->
                        let o = { Convert.ConvertOptions.defaults init with Align = { Align.AlignOptions.defaults with Steps = s.AlignSteps } }
                        LayerSelection.GaS2Setup.create o (Some calib) |> Result.map (fun setup -> LayerSelection.Plan.GaS2(eval, setup))
                    | LayerSelection.Policy.Uniform -> Ok LayerSelection.Plan.Uniform)
        report (Note $"selecting {k} of {L} layers by {LayerSelection.Policy.name s.Policy}")
        let sel = LayerSelection.run be { Teacher = teacher; TeacherPath = s.TeacherPath; K = k; Plan = plan } None ct
        LayerSelectionFile.write path sel
        return sel.Kept }

let private runName (init: Convert.InitStrategy) (seed: int) = $"{Convert.InitStrategy.name init}-seed{seed}"

/// Converts one student into OUT/students/NAME unless a finished one is there (written to NAME.partial,
/// then renamed, so a present NAME is complete).
let private convertStudent (be: IBackend) (s: Settings) (out: string) (teacher: Teacher) (trace: Lazy<TeacherTrace.TeacherTrace>)
                           (tokPath: string) (kept: int list) (init: Convert.InitStrategy) (seed: int) (report: Event -> unit) ct =
    let dir = Path.Combine(out, "students", runName init seed)
    if not (Directory.Exists dir) then
        report (Note $"converting {runName init seed} (kept {kept})")
        let o = Convert.ConvertOptions.defaults init
        let o = { o with Seed = seed; Align = { o.Align with Steps = s.AlignSteps } }
        let student, _ = Convert.run be teacher (trace.Force()) kept o Convert.Hooks.none ct
        let partial = dir + ".partial"
        if Directory.Exists partial then Directory.Delete(partial, true)
        StudentIo.save partial student (Some tokPath)
        Directory.Move(partial, dir)
    dir

/// Runs one stage into `dir` unless it finished there (its provenance file is written last); resumes from
/// its checkpoints when it was interrupted. Returns its curve.
let private distillStage (be: IBackend) (s: Settings) (student: string) (dir: string) (stage: Distill.Stage) (tokens: int64)
                         (seed: int) (label: string) (report: Event -> unit) ct : Result<Curve, InputError> =
    if File.Exists(Path.Combine(dir, DistillInputs.provenanceFile)) then
        Ok(ofJson (File.ReadAllText(Path.Combine(dir, "curve.json"))))
    else
    let ckDir = Path.Combine(dir, "checkpoints")
    let resume = Directory.Exists ckDir && not (Directory.EnumerateFileSystemEntries ckDir |> Seq.isEmpty)
    let src : DistillInputs.DistillSources =
        { StudentDir = student; TeacherPath = s.TeacherPath; TrainTexts = [ s.TrainText ]; EvalText = Some s.EvalText
          SeqLen = s.SeqLen; Seed = uint64 seed; EvalMaxTokens = s.EvalMaxTokens }
    let o = { Distill.DistillOptions.defaults stage tokens with Batch = s.Batch; CheckpointEvery = s.CheckpointEvery; Resume = resume }
    let progress = { new IProgress<Distill.DistillProgress> with member _.Report p = report (Distilling(label, p)) }
    DistillInputs.load src
    |> Result.bind (fun inputs -> Distill.run be inputs o dir progress ct)
    |> Result.map (fun r -> r.Curve)

/// One student: convert, Stage 1, Stage 2; the two curves joined on one token axis.
let private studentRun (be: IBackend) (s: Settings) (out: string) (teacher: Teacher) (trace: Lazy<TeacherTrace.TeacherTrace>) tokPath kept
                       (init: Convert.InitStrategy) (seed: int) (report: Event -> unit) ct : Result<StudentRun, InputError> =
    let s1, s2 = Settings.stageTokens s
    let name = runName init seed
    let studentDir = convertStudent be s out teacher trace tokPath kept init seed report ct
    let runDir = Path.Combine(out, "runs", name)
    result {
        let! c1 = distillStage be s studentDir (Path.Combine(runDir, "stage1")) (Distill.Stage1 s.Stage1Lr) s1 seed $"{name} stage 1" report ct
        let! c2 =
            distillStage be s (Path.Combine(runDir, "stage1")) (Path.Combine(runDir, "stage2"))
                         (Distill.Stage2(s.Stage2LrAttention, s.Stage2LrRest)) s2 seed $"{name} stage 2" report ct
        let s1Tokens = (List.last c1.Points).Tokens
        // Stage 2's first point re-measures the Stage-1 student: the same point, so it is left out.
        let shifted = c2.Points |> List.filter (fun p -> p.Step > 0) |> List.map (fun p -> { p with Tokens = p.Tokens + s1Tokens })
        return { Init = init; Seed = seed; Stage1Tokens = s1Tokens; Points = c1.Points @ shifted } }

/// Validates the settings that need no file.
let validate (s: Settings) : Result<unit, InputError> =
    let a, b = s.Split
    if s.Tokens < 1L then Error(InvalidOption("--tokens", $"must be positive, not {s.Tokens}"))
    elif a < 1 || b < 1 then Error(InvalidOption("--stage-split", $"{a}:{b}: both parts must be at least 1"))
    elif s.CheckpointEvery < 1L then Error(InvalidOption("--checkpoint-every", $"must be positive, not {s.CheckpointEvery}"))
    elif s.Seeds < 1 then Error(InvalidOption("--seeds", $"must be at least 1, not {s.Seeds}"))
    elif not (s.KeepFraction > 0.0 && s.KeepFraction < 1.0) then Error(InvalidOption("--keep-fraction", $"{s.KeepFraction} must lie in (0, 1)"))
    elif s.SeqLen < 2 then Error(InvalidOption("--seq-len", $"must be at least 2, not {s.SeqLen}"))
    elif s.Batch < 1 then Error(InvalidOption("--batch", $"must be at least 1, not {s.Batch}"))
    elif s.AlignSteps < 1 then Error(InvalidOption("--align-steps", $"must be at least 1, not {s.AlignSteps}"))
    else
        let s1, s2 = Settings.stageTokens s
        let step = int64 s.SeqLen * int64 s.Batch
        if s1 < step || s2 < step then
            Error(InvalidOption("--tokens", $"{s.Tokens} split {a}:{b} gives Stage 1 {s1} and Stage 2 {s2} tokens; each needs at least one step of {step} (batch x seq-len)"))
        else Ok()

let private copyTree (src: string) (dst: string) =
    let partial = dst + ".partial"
    if Directory.Exists partial then Directory.Delete(partial, true)
    for d in Directory.GetDirectories(src, "*", SearchOption.AllDirectories) do
        Directory.CreateDirectory(Path.Combine(partial, Path.GetRelativePath(src, d))) |> ignore
    Directory.CreateDirectory partial |> ignore
    for f in Directory.GetFiles(src, "*", SearchOption.AllDirectories) do
        if not (DirectoryLock.isLockFile f) then File.Copy(f, Path.Combine(partial, Path.GetRelativePath(src, f)))
    Directory.Move(partial, dst)

/// Copies the finished students and runs of `other` (an experiment folder) into `out` when `other` differs
/// from these settings only in the policy and kept the same layers: the runs would be the same bits.
let private reuseFrom (s: Settings) (out: string) (kept: int list) (other: string) (report: Event -> unit) =
    let settingsPath, selectionPath = Path.Combine(other, settingsFile), Path.Combine(other, "selection.json")
    let sameSettings () =
        try
            let o = JsonNode.Parse(File.ReadAllText settingsPath).AsObject()
            Settings.identity s |> List.forall (fun (k, v) -> k = "policy" || (match o[k] with null -> false | n -> n.GetValue<string>() = v))
        with _ -> false
    let sameKept () = match LayerSelectionFile.read selectionPath with Ok sel -> sel.Kept = kept | Error _ -> false
    if Path.GetFullPath other <> Path.GetFullPath out && File.Exists settingsPath && File.Exists selectionPath && sameSettings () && sameKept () then
        for seed in 0 .. s.Seeds - 1 do
            for init in inits do
                let name = runName init seed
                let finished = Path.Combine(other, "runs", name, "stage2", DistillInputs.provenanceFile)
                let dstStudent, dstRun = Path.Combine(out, "students", name), Path.Combine(out, "runs", name)
                if File.Exists finished && not (Directory.Exists dstRun) && not (Directory.Exists dstStudent) then
                    report (Note $"reusing {name} from {other}: the same settings and kept layers {kept}")
                    Directory.CreateDirectory(Path.Combine(out, "students")) |> ignore
                    Directory.CreateDirectory(Path.Combine(out, "runs")) |> ignore
                    copyTree (Path.Combine(other, "students", name)) dstStudent
                    copyTree (Path.Combine(other, "runs", name)) dstRun

/// Runs the experiment into `out` (see the module comment), first copying finished runs of the same
/// settings and kept layers from any of the folders `reuse` (another policy's experiment, say).
let runReusing (be: IBackend) (s: Settings) (out: string) (reuse: string list) (report: Event -> unit) (ct: CancellationToken) : Result<Outcome, InputError> =
    let watch = Stopwatch.StartNew()
    result {
        do! validate s
        let! teacher = ModelFiles.loadTeacher s.TeacherPath
        let! tokPath = ModelFiles.tokenizerPathFor s.TeacherPath teacher.Config.Vocab
        let! tok = ModelFiles.tokenizerFor s.TeacherPath teacher.Config None
        do! if s.SeqLen > teacher.Config.Context then Error(InvalidOption("--seq-len", $"{s.SeqLen} exceeds the teacher's context {teacher.Config.Context}")) else Ok()
        let! texts = readTexts s
        let! calib = calibrationBatch s teacher.Config tok texts
        do! checkOut out s
        let! kept = select be s out teacher tok texts calib report ct
        do reuse |> List.iter (fun other -> reuseFrom s out kept other report)
        let converted = [ 0 .. teacher.Config.Layers - 1 ] |> List.except kept
        // The teacher trace is only needed for students not yet converted.
        let trace =
            lazy (use dt = new DeviceDecoder(be, teacher)
                  TeacherTrace.run dt calib converted)
        let runs =
            [ for seed in 0 .. s.Seeds - 1 do
                for init in inits do
                    yield fun () -> studentRun be s out teacher trace tokPath kept init seed report ct ]
        let! done' =
            runs |> List.fold (fun acc f -> acc |> Result.bind (fun xs -> f () |> Result.map (fun r -> xs @ [ r ]))) (Ok [])
        let teacherPpl =
            let st1 = Path.Combine(out, "runs", runName Convert.InitStrategy.Naive 0, "stage1", "curve.json")
            (ofJson (File.ReadAllText st1)).TeacherPerplexity
        return { Settings = s; Kept = kept; Layers = teacher.Config.Layers; TeacherPerplexity = teacherPpl; Runs = done'
                 Seconds = watch.Elapsed.TotalSeconds } }

/// Runs the experiment into `out` (see the module comment).
let run (be: IBackend) (s: Settings) (out: string) (report: Event -> unit) (ct: CancellationToken) : Result<Outcome, InputError> =
    runReusing be s out [] report ct
