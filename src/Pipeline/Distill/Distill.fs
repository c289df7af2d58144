/// The distillation stage (docs/method.md §7): Stage 1 (Stage1.fs) or Stage 2 (Stage2.fs) of a hybrid student
/// against its teacher over a training token stream, with checkpoints under OUT/checkpoints
/// (Training/Checkpoint.fs: parameters, AdamW moments, step and the stream position, so --resume continues
/// bit for bit), held-out perplexity at every checkpoint (Eval/Perplexity.fs), the learning curve as
/// OUT/curve.json and OUT/curve.svg, and the distilled student written into OUT in convert's directory format
/// (StudentIo, every file atomic) with OUT/distill.json recording where it came from.
/// A step holds Accum micro-batches of Batch rows of SeqLen tokens: Batch·Accum·SeqLen tokens. The run takes
/// ⌊Tokens / that⌋ steps (at least one); a checkpoint every ⌈CheckpointEvery / that⌉ steps and at the end.
/// Stage 1 can spread its layers over the devices of one process (runOn), Stage 2 its batch over MPI ranks
/// (runRanked); both give one device's results (docs/architecture.md "Scale-out").
module TaylorCalibrate.Pipeline.Distill.Distill

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Text.Json.Nodes
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Distill.LearningCurve

/// Which stage runs, with its learning rates.
type Stage =
    /// Per-layer, teacher-forced; GDN parameters only; cosine to 0 from `Lr`.
    | Stage1 of lr: float32
    /// End to end; names containing "attn" at `LrAttention`, the rest at `LrRest`; constant.
    | Stage2 of lrAttention: float32 * lrRest: float32

module Stage =
    let number = function Stage1 _ -> 1 | Stage2 _ -> 2
    /// The method's rates (docs/method.md §7).
    let stage1Default = Stage1 1e-3f
    let stage2Default = Stage2(1e-4f, 7e-6f)

/// Every setting of a run.
type DistillOptions =
    { Stage: Stage
      /// Training tokens to see (inputs; rounded down to whole steps).
      Tokens: int64
      /// Rows per micro-batch.
      Batch: int
      /// Micro-batches per step.
      Accum: int
      /// Tokens between checkpoints.
      CheckpointEvery: int64
      WeightDecay: float32
      Beta1: float32
      Beta2: float32
      ClipNorm: float32
      /// Stage 1: the order layers run in within a step (no effect on the result).
      LayerOrder: Stage1.LayerOrder
      /// Stage 2: rebuild each block's activations in the backward (less memory, same gradients).
      Recompute: bool
      /// Continue from OUT/checkpoints.
      Resume: bool }

module DistillOptions =
    /// The method's settings for `stage` (AdamW β 0.9/0.95, decay 0.01, clip 1.0) on `tokens` tokens.
    let defaults (stage: Stage) (tokens: int64) =
        { Stage = stage; Tokens = tokens; Batch = 8; Accum = 1; CheckpointEvery = max 1L (tokens / 10L)
          WeightDecay = 0.01f; Beta1 = 0.9f; Beta2 = 0.95f; ClipNorm = 1.0f; LayerOrder = Stage1.OneAfterAnother
          Recompute = false; Resume = false }

/// What the run reports while it works.
type DistillProgress =
    /// Training starts (or resumes) at `FromStep` of `Steps`.
    | Started of fromStep: int * steps: int * tokensPerStep: int64
    /// A step finished.
    | Stepped of step: int * steps: int * tokens: int64 * loss: float * tokensPerSecond: float
    /// Held-out evaluation at a checkpoint begins.
    | Evaluating of step: int
    /// A checkpoint was written (with its curve point).
    | Checkpointed of point: CurvePoint * directory: string
    /// A resume fell back to an older checkpoint.
    | Warning of string

/// What a finished run did.
type DistillResult =
    { Curve: Curve
      Steps: int
      TokensPerStep: int64
      /// Steps trained in this invocation (fewer than Steps after a resume).
      StepsRun: int
      /// Training throughput of this invocation: tokens of the steps run over their wall time (without the
      /// evaluations and checkpoints; Stage 2 includes the teacher's forward).
      TokensPerSecond: float
      /// Model FLOPs per training token (matmul weights only; see flopsPerToken).
      FlopsPerToken: float
      /// Of the training time, the seconds spent summing gradients over MPI ranks (0 for one process).
      AllreduceSeconds: float
      OutDir: string
      Warnings: string list }

/// Weights that enter a matmul in a forward: the teacher's layers, or the student's with GDN layers
/// (5·D·H·hd + 2·D·H each) in place of attention, plus the head.
let private matmulWeights (c: ModelConfig) (gdnLayers: int) =
    let D, F = int64 c.Dim, int64 c.Hidden
    let attention = 2L * D * int64 c.QDim + 2L * D * int64 c.KvDim
    let gdn = 5L * D * int64 c.QDim + 2L * D * int64 c.Heads
    int64 c.Layers * 3L * D * F + int64 (c.Layers - gdnLayers) * attention + int64 gdnLayers * gdn + int64 c.Vocab * D

/// Model FLOPs per training token: Stage 1 = the teacher's forward (2·P_teacher) plus each GDN layer's
/// forward and weight gradients (4·P_gdn); Stage 2 = the teacher's forward plus the student's forward and
/// backward (2·P_teacher + 6·P_student). Matmuls only (attention scores and the recurrence are left out).
let flopsPerToken (stage: Stage) (c: ModelConfig) (gdnLayers: int) =
    let teacher = 2.0 * float (matmulWeights c 0)
    match stage with
    | Stage1 _ -> teacher + 4.0 * float gdnLayers * float (5L * int64 c.Dim * int64 c.QDim + 2L * int64 c.Dim * int64 c.Heads)
    | Stage2 _ -> teacher + 6.0 * float (matmulWeights c gdnLayers)

let private f32 (v: float32) = v.ToString("R", CultureInfo.InvariantCulture)

/// The settings a resumed run must share (each a key of its own, so a mismatch names it).
let private identity (inputs: DistillInputs.Inputs) (o: DistillOptions) : Checkpoint.RunIdentity =
    let c = inputs.Student.Config
    let src = inputs.Sources
    { ModelFingerprint =
        $"{ModelFamily.modelType c.Family} L{c.Layers} D{c.Dim} H{c.Heads}/{c.KvHeads} hd{c.HeadDim} F{c.Hidden} V{c.Vocab} kept {inputs.Student.Kept}"
      Settings =
        Map [ "stage", string (Stage.number o.Stage)
              "tokens", string o.Tokens
              "seq_len", string src.SeqLen
              "batch", string o.Batch
              "accum", string o.Accum
              "checkpoint_every", string o.CheckpointEvery
              "seed", string src.Seed
              "train_text", src.TrainTexts |> List.map Path.GetFullPath |> String.concat ";"
              "train_stream", inputs.Train.Fingerprint.ToString "x16"
              "eval_text", (src.EvalText |> Option.map Path.GetFullPath |> Option.defaultValue "")
              "eval_max_tokens", (src.EvalMaxTokens |> Option.map string |> Option.defaultValue "")
              "teacher", inputs.TeacherFingerprint
              "student", DistillInputs.sha256Many (StudentIo.tensors inputs.Student |> Seq.map (fun (_, _, a) -> a)) ] }

/// (B, T) input ids of `B` stream rows of T+1 (the last token of each row is only a target, which the
/// distillation losses do not use).
let private inputsOf (rows: int[]) (B: int) (T: int) =
    Array.init (B * T) (fun i -> rows[(i / T) * (T + 1) + i % T])

let private evaluate (student: DeviceDecoder) (teacher: DeviceDecoder) (set: Perplexity.EvalSet option) ct =
    match set with
    | None -> nan, nan
    | Some s ->
        let r = Perplexity.evaluate student (Some teacher) s None ct
        r.Perplexity, defaultArg r.MeanKl nan

/// runRanked's body. Stage 1 may also spread its layers over the devices of `workers` (Stage1.Stage1Trainer;
/// the first is where teacher and student live and everything else runs); Stage 2 takes one device per rank.
let private runWorkersRanked (ranks: Mpi.ICollectives) (workers: DeviceWorker list) (inputs: DistillInputs.Inputs) (o: DistillOptions)
                             (out: string) (progress: IProgress<DistillProgress>) (ct: CancellationToken) : Result<DistillResult, InputError> =
    let be = workers.Head.Backend
    let T = inputs.Sources.SeqLen
    let writer = ranks.Rank = 0
    if o.Batch < 1 then Error(InvalidOption("--batch", $"must be at least 1, not {o.Batch}")) else
    if o.Accum < 1 then Error(InvalidOption("--accum", $"must be at least 1, not {o.Accum}")) else
    let tokensPerStep = int64 o.Batch * int64 o.Accum * int64 T
    if o.Tokens < tokensPerStep then
        Error(InvalidOption("--tokens", $"{o.Tokens} is fewer than one step of {tokensPerStep} tokens (batch {o.Batch} x accum {o.Accum} x seq-len {T})")) else
    if o.CheckpointEvery < 1L then Error(InvalidOption("--checkpoint-every", "must be at least 1 token")) else
    if ranks.Size > 1 && Stage.number o.Stage <> 2 then
        Error(InvalidOption("--stage", $"1 runs per layer on one process; {ranks.Size} MPI ranks train Stage 2 only")) else
    if workers.Length > 1 && Stage.number o.Stage <> 1 then
        let ids = workers |> List.map (fun w -> w.Id) |> String.concat ","
        Error(InvalidOption("--device", $"{ids}: several devices in one process train Stage 1 (per layer); Stage 2 spreads over MPI ranks (mpirun), one device each")) else
    if o.Batch % ranks.Size <> 0 then
        Error(InvalidOption("--batch", $"{o.Batch} rows do not split evenly over {ranks.Size} MPI ranks")) else
    // Every rank must run the same job: the identity of a resumed run, checked before any work.
    match TaylorCalibrate.Pipeline.Parallel.DataParallel.agree ranks (identity inputs o).Settings with
    | Error why -> Error(InvalidOption("mpirun", why))
    | Ok() ->
    let steps = int (o.Tokens / tokensPerStep)
    let every = int (max 1L ((o.CheckpointEvery + tokensPerStep - 1L) / tokensPerStep))
    let ckDir = Path.Combine(out, "checkpoints")
    let hasCheckpoints = Directory.Exists ckDir && Directory.EnumerateFileSystemEntries(ckDir).GetEnumerator().MoveNext()
    if hasCheckpoints && not o.Resume then
        Error(InvalidOption("--out", $"{out} already holds checkpoints of a run; pass --resume to continue it or choose another directory"))
    elif o.Resume && not hasCheckpoints then Error(InvalidOption("--resume", $"{ckDir} holds no checkpoint to resume from"))
    else
    use teacher = new DeviceDecoder(be, inputs.Teacher)
    use student = new DeviceDecoder(be, inputs.Student)
    let settings =
        { Beta1 = o.Beta1; Beta2 = o.Beta2; Epsilon = 1e-8f; ClipNorm = Some o.ClipNorm
          Schedule = (match o.Stage with Stage1 _ -> Schedule.Cosine steps | Stage2 _ -> Schedule.Constant) }
    let step1, step2 =
        match o.Stage with
        | Stage1 lr -> Some(new Stage1.Stage1Trainer(workers, teacher, student, settings, lr, o.WeightDecay, o.LayerOrder)), None
        | Stage2(la, lr) ->
            None, Some(new Stage2.Stage2Trainer(teacher, student, settings, ParameterGroups.Presets.stage2 la lr o.WeightDecay, o.Recompute))
    use _d1 = match step1 with Some t -> t :> IDisposable | None -> { new IDisposable with member _.Dispose() = () }
    use _d2 = match step2 with Some t -> t :> IDisposable | None -> { new IDisposable with member _.Dispose() = () }
    let optimizer = match step1, step2 with Some t, _ -> t.Optimizer | _, Some t -> t.Optimizer | _ -> invalidOp "no trainer"
    let id = identity inputs o
    let stream = inputs.Train
    let resumed =
        if o.Resume then
            // The run's own settings first, so a changed option is named rather than what it implies for the
            // optimizer (a new batch changes the cosine schedule's length too).
            let ownSettings =
                match Checkpoint.load ckDir with
                | Error e -> Error e
                | Ok loaded ->
                    let manifest = Path.Combine(loaded.Directory, "manifest.json")
                    match id.Settings |> Map.toList |> List.tryFind (fun (k, v) -> loaded.Identity.Settings.TryFind k <> Some v) with
                    | Some(k, v) ->
                        let saved = match loaded.Identity.Settings.TryFind k with Some s -> $"'{s}'" | None -> "(absent)"
                        Error(CheckpointMismatch(manifest, $"setting '{k}'", saved, $"'{v}'"))
                    | None -> Ok()
            ownSettings
            |> Result.bind (fun () -> Checkpoint.resume ckDir id optimizer)
            |> Result.bind (fun (state, warnings) ->
                match Position.ofInt64s state.DataPosition |> Result.bind (TokenStream.check stream) with
                | Error why -> Error(CorruptFile(ckDir, why))
                | Ok pos ->
                    match state.Extra.TryFind "curve" with
                    | None -> Error(CorruptFile(ckDir, "the checkpoint holds no learning curve"))
                    | Some json -> Ok(Some(pos, ofJson json, warnings)))
        else Ok None
    match resumed with
    | Error e -> Error e
    | Ok resumed ->
    let mutable position, curve, warnings =
        match resumed with
        | Some(p, c, w) -> p, c, w
        | None ->
            let ppl, kl = if writer then evaluate student teacher inputs.Eval ct else nan, nan
            let teacherPpl =
                match inputs.Eval with
                | Some s when writer -> (Perplexity.evaluate teacher None s None ct).Perplexity
                | _ -> nan
            TokenStream.start stream,
            { Stage = Stage.number o.Stage; TeacherPerplexity = teacherPpl
              Points = [ { Step = 0; Tokens = 0L; Perplexity = ppl; Loss = nan; HeldOutKl = kl } ] },
            []
    // A restored optimizer's state goes out to the devices that train the layers.
    if resumed.IsSome then step1 |> Option.iter (fun t -> t.Scatter())
    for w in warnings do progress.Report(Warning w)
    let writeCurve () =
      if writer then
        AtomicFile.writeText (Path.Combine(out, "curve.json")) (toJson curve)
        toSvg curve |> Option.iter (AtomicFile.writeText (Path.Combine(out, "curve.svg")))
    if writer then Directory.CreateDirectory out |> ignore
    writeCurve ()
    let first = optimizer.StepsTaken
    progress.Report(Started(first, steps, tokensPerStep))
    let trainWatch = Stopwatch()
    let mutable lossSum, lossCount = 0.0, 0
    for s in first .. steps - 1 do
        ct.ThrowIfCancellationRequested()
        trainWatch.Start()
        let micro =
            [ for _ in 1 .. o.Accum do
                  let rows, next = TokenStream.batch stream position o.Batch
                  position <- next
                  yield inputsOf rows o.Batch T ]
        let loss =
            match step1, step2 with
            | Some t, _ -> (t.Step(micro, o.Batch, T)).Report.Loss
            | _, Some t when ranks.Size = 1 -> (t.Step(micro, o.Batch, T)).Loss
            | _, Some t ->
                // This rank's rows of each global micro-batch (every rank read the same rows).
                let first, count = TaylorCalibrate.Pipeline.Parallel.DataParallel.shardRows ranks o.Batch
                (t.StepShard(ranks, micro |> List.map (fun ids -> Array.sub ids (first * T) (count * T)), count, T)).Loss
            | _ -> nan
        trainWatch.Stop()
        if not (Double.IsFinite loss) then
            invalidOp $"step {s + 1}: the training loss is {loss}"
        lossSum <- lossSum + loss
        lossCount <- lossCount + 1
        let tokens = int64 (s + 1) * tokensPerStep
        progress.Report(Stepped(s + 1, steps, tokens, loss, float (int64 (s + 1 - first) * tokensPerStep) / max trainWatch.Elapsed.TotalSeconds 1e-9))
        if (s + 1) % every = 0 || s + 1 = steps then
            progress.Report(Evaluating(s + 1))
            step1 |> Option.iter (fun t -> t.Gather())
            let ppl, kl = if writer then evaluate student teacher inputs.Eval ct else nan, nan
            let point = { Step = s + 1; Tokens = tokens; Perplexity = ppl; Loss = lossSum / float lossCount; HeldOutKl = kl }
            lossSum <- 0.0
            lossCount <- 0
            curve <- { curve with Points = curve.Points @ [ point ] }
            let state : Checkpoint.TrainingState =
                { Step = s + 1; DataPosition = Position.toInt64s position; Rngs = Map.empty
                  Extra = Map [ "curve", toJson curve ] }
            if writer then Checkpoint.save ckDir id state optimizer
            writeCurve ()
            progress.Report(Checkpointed(point, Path.Combine(ckDir, Checkpoint.stepDirectoryName (s + 1))))
    // The distilled student, in convert's format, and where it came from.
    step1 |> Option.iter (fun t -> t.Gather())
    if writer then
      let baseWeights, gdn = student.Download()
      let distilled = { inputs.Student with Base = baseWeights; Gdn = gdn }
      StudentIo.save out distilled (Some inputs.TokenizerPath)
      let prov = JsonObject()
      prov["stage"] <- JsonValue.Create(Stage.number o.Stage)
      prov["student"] <- JsonValue.Create(Path.GetFullPath inputs.Sources.StudentDir)
      prov["teacher"] <- JsonValue.Create(Path.GetFullPath inputs.Sources.TeacherPath)
      prov["teacher_embedding_sha256"] <- JsonValue.Create inputs.TeacherFingerprint
      prov["steps"] <- JsonValue.Create steps
      prov["tokens"] <- JsonValue.Create(int64 steps * tokensPerStep)
      prov["train_text"] <- JsonArray(inputs.Sources.TrainTexts |> List.map (fun p -> JsonValue.Create p :> JsonNode) |> Array.ofList)
      prov["settings"] <- JsonObject(id.Settings |> Map.toSeq |> Seq.map (fun (k, v) -> Collections.Generic.KeyValuePair<string, JsonNode>(k, JsonValue.Create v)))
      AtomicFile.writeText (Path.Combine(out, DistillInputs.provenanceFile)) (prov.ToJsonString(Text.Json.JsonSerializerOptions(WriteIndented = true)))
    let ran = steps - first
    Ok { Curve = curve; Steps = steps; TokensPerStep = tokensPerStep; StepsRun = ran
         TokensPerSecond = (if ran > 0 then float (int64 ran * tokensPerStep) / max trainWatch.Elapsed.TotalSeconds 1e-9 else nan)
         FlopsPerToken = flopsPerToken o.Stage inputs.Student.Config inputs.Student.Gdn.Count
         AllreduceSeconds = (match step2 with Some t -> t.SyncSeconds | None -> 0.0)
         OutDir = out; Warnings = warnings }

/// Runs the stage on `be` as one rank of `ranks` and writes the student into `out` (see the module comment).
/// With several ranks (Stage 2 only) each rank trains on its share of every global batch
/// (Parallel/DataParallel.fs); rank 0 alone evaluates and writes the curve, the checkpoints and the student,
/// and every rank resumes from those checkpoints (a directory all ranks see). Returns an InputError for a
/// checkpoint of another run, checkpoints in `out` without `Resume`, or ranks whose settings differ.
let runRanked (ranks: Mpi.ICollectives) (be: IBackend) (inputs: DistillInputs.Inputs) (o: DistillOptions) (out: string)
              (progress: IProgress<DistillProgress>) (ct: CancellationToken) : Result<DistillResult, InputError> =
    runWorkersRanked ranks [ DeviceWorker(be.Name, be) ] inputs o out progress ct

/// Runs the stage as the only process with Stage 1's layers spread over `workers` (docs/architecture.md
/// "Scale-out"; teacher, student, evaluation and checkpoints on the first): the same student, curve and
/// checkpoints as one device of the same kind, bit for bit for same-kind devices, so a run may resume on
/// another device list. Stage 2 takes one device (an InputError names --device otherwise).
let runOn (workers: DeviceWorker list) (inputs: DistillInputs.Inputs) (o: DistillOptions) (out: string)
          (progress: IProgress<DistillProgress>) (ct: CancellationToken) : Result<DistillResult, InputError> =
    if workers.IsEmpty then invalidArg "workers" "at least one device is needed"
    runWorkersRanked Mpi.SingleRank.Instance workers inputs o out progress ct

/// Runs the stage on `be` as the only process (see runRanked).
let run (be: IBackend) (inputs: DistillInputs.Inputs) (o: DistillOptions) (out: string)
        (progress: IProgress<DistillProgress>) (ct: CancellationToken) : Result<DistillResult, InputError> =
    runRanked Mpi.SingleRank.Instance be inputs o out progress ct
