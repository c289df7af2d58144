/// Trains a decoder from scratch with next-token cross-entropy (`train-teacher`): the in-house teachers of the
/// study and the demo's built-in teacher. Each step reads B rows of T+1 tokens from the seeded token stream,
/// runs the decoder's training forward, the backend's streamed cross-entropy (its gradient, scaled by
/// 1/(B·T), overwrites the logits in place), the backward, and AdamW over every parameter (matrices with
/// weight decay; norms and biases without), with global-norm clipping and a warmup-then-cosine or constant
/// schedule. Checkpoints (Training/Checkpoint.fs) hold the parameters, moments, step, stream position and
/// the learning curve, so an interrupted run resumed with the same settings equals an uninterrupted one bit
/// for bit on the same device. The result is a Hugging Face directory of the family (config.json,
/// model.safetensors, tokenizer.json) plus the learning curve as JSON and SVG. docs/training.md describes the
/// engine underneath. Under MPI (`runRanked`, docs/architecture.md "Scale-out") every rank reads the same global
/// batch and trains on its rows; the gradients are summed in rank order (Parallel/DataParallel.fs), so every
/// rank takes the same step; rank 0 alone evaluates and writes, and every rank resumes from its checkpoints.
module TaylorCalibrate.Pipeline.Stages.TrainTeacher

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Pipeline.Training

/// The learning-rate schedule after the linear warmup.
[<RequireQualifiedAccess>]
type LrDecay =
    | Cosine
    | Constant

/// How to train.
type TrainOptions =
    { /// Training tokens; the run takes ⌊Tokens / (B·T)⌋ steps.
      Tokens: int64
      SeqLen: int
      Batch: int
      /// Peak learning rate.
      LearningRate: float32
      /// Decoupled weight decay of the matrices (norms and biases have none).
      WeightDecay: float32
      /// Linear warmup steps.
      Warmup: int
      Decay: LrDecay
      /// Evaluate held-out perplexity every this many steps (and at the end).
      EvalEvery: int option
      /// Write a checkpoint every this many steps (and at the end).
      CheckpointEvery: int option
      Seed: uint64
      /// Per-block recomputation in the backward (less memory, one more forward of time).
      Recompute: bool }

module TrainOptions =
    /// Small-model defaults: lr 3e-3, wd 0.1, 10 % warmup set by the caller, cosine, seed 0.
    let defaults =
        { Tokens = 1_000_000L; SeqLen = 256; Batch = 8; LearningRate = 3e-3f; WeightDecay = 0.1f; Warmup = 0
          Decay = LrDecay.Cosine; EvalEvery = None; CheckpointEvery = None; Seed = 0UL; Recompute = false }

/// What to train on and where to write.
type TrainInput =
    { Config: ModelConfig
      /// The tokenizer.json text written beside the model.
      TokenizerJson: string
      Train: TokenStream
      /// Held-out evaluation windows (fixed protocol), if any.
      Eval: Perplexity.EvalSet option
      Out: string }

/// One row of the learning curve.
type CurvePoint =
    { Step: int
      Tokens: int64
      /// Training loss of that step (mean NLL per predicted token, nats, before the update).
      Loss: float
      LearningRate: float
      /// Held-out perplexity after the step, at evaluation points.
      EvalPerplexity: float option }

/// Progress of a run, reported after each step.
type Progress =
    { Step: int
      Steps: int
      Tokens: int64
      Loss: float
      TokensPerSecond: float }

/// What a run did.
type TrainResult =
    { Steps: int
      Tokens: int64
      Curve: CurvePoint list
      FinalLoss: float
      FinalPerplexity: float option
      /// Wall time of this process's share of the run.
      Seconds: float
      TokensPerSecond: float
      /// The step a resumed run continued from.
      ResumedFrom: int option
      /// Why newer checkpoints were skipped on resume.
      Warnings: string list }

/// Steps of a run: ⌊tokens / (B·T)⌋.
let stepsOf (o: TrainOptions) = o.Tokens / int64 (o.Batch * o.SeqLen)

/// The folder under --out that holds training checkpoints.
let checkpointsDir (out: string) = Path.Combine(out, "checkpoints")

/// Checks the options against the model and the data; errors name the option.
let validate (c: ModelConfig) (o: TrainOptions) : Result<unit, InputError> =
    let bad option why = Error(InvalidOption(option, why))
    if o.SeqLen < 1 then bad "--seq-len" $"must be at least 1, not {o.SeqLen}"
    elif o.SeqLen > c.Context then bad "--seq-len" $"{o.SeqLen} exceeds the model's context {c.Context}"
    elif o.Batch < 1 then bad "--batch" $"must be at least 1, not {o.Batch}"
    elif stepsOf o < 1L then bad "--tokens" $"{o.Tokens} tokens are fewer than one step of --batch {o.Batch} x --seq-len {o.SeqLen} = {o.Batch * o.SeqLen} tokens"
    elif stepsOf o > int64 Int32.MaxValue then bad "--tokens" $"{o.Tokens} tokens make more than {Int32.MaxValue} steps"
    elif not (Single.IsFinite o.LearningRate && o.LearningRate > 0f) then bad "--lr" $"must be a positive number, not {o.LearningRate}"
    elif not (Single.IsFinite o.WeightDecay && o.WeightDecay >= 0f) then bad "--weight-decay" $"must be a non-negative number, not {o.WeightDecay}"
    elif o.Warmup < 0 || int64 o.Warmup >= stepsOf o then bad "--warmup" $"must be between 0 and the run's {stepsOf o} steps (exclusive), not {o.Warmup}"
    elif o.EvalEvery |> Option.exists (fun n -> n < 1) then bad "--eval-every" "must be at least 1 step"
    elif o.CheckpointEvery |> Option.exists (fun n -> n < 1) then bad "--checkpoint-every" "must be at least 1 step"
    else Ok()

/// A fresh run needs an empty (or absent) --out it can write; a resumed one needs the run's checkpoints there.
/// Checked before anything is written.
let checkOut (out: string) (resume: bool) : Result<unit, InputError> =
    if String.IsNullOrWhiteSpace out then Error(InvalidOption("--out", "needs a folder path"))
    elif File.Exists out then Error(InvalidOption("--out", $"{out} is a file, not a folder"))
    elif resume then
        if Directory.Exists(checkpointsDir out) then Ok()
        else Error(InvalidOption("--resume", $"{out} holds no training checkpoints ({checkpointsDir out} is missing)"))
    elif Directory.Exists out && not (Seq.isEmpty (Directory.EnumerateFileSystemEntries out)) then
        Error(InvalidOption("--out", $"{out} is not empty; pass --resume to continue the run there, or choose an empty folder"))
    else
        // Can we write there? Probe next to it without leaving anything behind.
        let existed = Directory.Exists out
        try
            Directory.CreateDirectory out |> ignore
            let probe = Path.Combine(out, $".write-probe-{Environment.ProcessId}")
            File.WriteAllText(probe, "")
            File.Delete probe
            if not existed then Directory.Delete out
            Ok()
        with :? UnauthorizedAccessException | :? IOException as e ->
            Error(InvalidOption("--out", $"cannot write to {out}: {e.Message}"))

let private sha256Hex (text: string) =
    Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes text)).ToLowerInvariant()

let private invariant (v: float32) = v.ToString("R", CultureInfo.InvariantCulture)

/// What a resume must share with the run it continues.
let identityOf (input: TrainInput) (o: TrainOptions) : Checkpoint.RunIdentity =
    { ModelFingerprint = sha256Hex (HfConfig.toJson input.Config "float32" + "\n" + input.TokenizerJson)
      Settings =
        Map [ "tokens", string o.Tokens
              "seq-len", string o.SeqLen
              "batch", string o.Batch
              "lr", invariant o.LearningRate
              "weight-decay", invariant o.WeightDecay
              "warmup", string o.Warmup
              "decay", (match o.Decay with LrDecay.Cosine -> "cosine" | LrDecay.Constant -> "constant")
              "seed", string o.Seed
              "train-data", input.Train.Fingerprint.ToString("x16") ] }

/// Norms and biases train without weight decay; every other tensor with it.
let parameterRules (o: TrainOptions) : ParameterGroups.GroupRule list =
    [ { Group = "no-decay"
        Pattern = ParameterGroups.AnyOf [ ParameterGroups.EndsWith "norm.weight"; ParameterGroups.EndsWith ".bias" ]
        Treatment = ParameterGroups.Train { LearningRate = o.LearningRate; WeightDecay = 0f } }
      { Group = "decay"
        Pattern = ParameterGroups.Everything
        Treatment = ParameterGroups.Train { LearningRate = o.LearningRate; WeightDecay = o.WeightDecay } } ]

let private schedule (o: TrainOptions) =
    let steps = int (stepsOf o)
    match o.Decay, o.Warmup with
    | LrDecay.Cosine, 0 -> Schedule.Cosine steps
    | LrDecay.Cosine, w -> Schedule.WarmupCosine(w, steps)
    | LrDecay.Constant, 0 -> Schedule.Constant
    | LrDecay.Constant, w -> Schedule.WarmupConstant w

/// AdamW as small Llama-style models are trained: β (0.9, 0.95), ε 1e-8, clip 1.0.
let optimizerSettings (o: TrainOptions) : AdamWSettings =
    { Beta1 = 0.9f; Beta2 = 0.95f; Epsilon = 1e-8f; ClipNorm = Some 1.0f; Schedule = schedule o }

// ---- the learning curve on disk ----------------------------------------------------------------------
let private curveToJson (curve: CurvePoint list) =
    let rows =
        curve |> List.map (fun p ->
            {| step = p.Step; tokens = p.Tokens; loss = p.Loss; learning_rate = p.LearningRate
               eval_perplexity = Option.toNullable p.EvalPerplexity |})
    JsonSerializer.Serialize(rows)

let private curveOfJson (json: string) : CurvePoint list =
    use doc = JsonDocument.Parse json
    [ for e in doc.RootElement.EnumerateArray() ->
        let ppl = e.GetProperty "eval_perplexity"
        { Step = e.GetProperty("step").GetInt32(); Tokens = e.GetProperty("tokens").GetInt64()
          Loss = e.GetProperty("loss").GetDouble(); LearningRate = e.GetProperty("learning_rate").GetDouble()
          EvalPerplexity = if ppl.ValueKind = JsonValueKind.Null then None else Some(ppl.GetDouble()) } ]

/// Writes learning-curve.json (every step) and learning-curve.svg (training loss, and held-out perplexity
/// where evaluated). The curve's own JSON is the chart's data, so the picture is written alone (not with
/// SvgChart.save, whose data file of the same name would replace the curve).
let writeCurve (out: string) (curve: CurvePoint list) =
    AtomicFile.writeText (Path.Combine(out, "learning-curve.json")) (curveToJson curve)
    let xs = curve |> List.map (fun p -> float p.Tokens) |> Array.ofList
    let loss = curve |> List.map (fun p -> p.Loss) |> Array.ofList
    let evals = curve |> List.choose (fun p -> p.EvalPerplexity |> Option.map (fun v -> float p.Tokens, log v))
    let series =
        [ yield "training loss (nats/token)", xs, loss
          if not evals.IsEmpty then yield "held-out ln PPL", Array.map fst (Array.ofList evals), Array.map snd (Array.ofList evals) ]
    let chart = SvgChart.lines "train-teacher learning curve" "training tokens" "nats per token" false series
    AtomicFile.writeText (Path.Combine(out, "learning-curve.svg")) (SvgChart.render true chart)

// ---- the run -----------------------------------------------------------------------------------------
/// Checks, as one rank of `ranks`, that the run can start: the options, an even split of the batch, the
/// same run on every rank (an error names the first setting that differs), and --out (checked by rank 0
/// alone, which tells the others; so every rank gets the same answer and none waits for one that stopped).
let private checkRanked (ranks: ICollectives) (input: TrainInput) (o: TrainOptions) (resume: bool) : Result<unit, InputError> =
    validate input.Config o
    |> Result.bind (fun () ->
        if o.Batch % ranks.Size <> 0 then Error(InvalidOption("--batch", $"{o.Batch} rows do not split evenly over {ranks.Size} MPI ranks"))
        else Ok())
    |> Result.bind (fun () ->
        let id = identityOf input o
        let own = id.Settings |> Map.add "model" id.ModelFingerprint |> Map.add "out" input.Out |> Map.add "resume" (string resume)
        Parallel.DataParallel.agree ranks own |> Result.mapError (fun why -> InvalidOption("mpirun", why)))
    |> Result.bind (fun () ->
        if ranks.Size = 1 then checkOut input.Out resume else
        let mine = if ranks.Rank = 0 then Some(checkOut input.Out resume) else None
        let told =
            match mine with
            | Some(Error e) -> InputError.describe e
            | _ -> ""
            |> Parallel.DataParallel.broadcastText ranks 0
        match mine with
        | Some result -> result
        | None -> if told = "" then Ok() else Error(InvalidOption("--out", $"rank 0: {told}")))

/// Trains as one rank of `ranks` (see the module comment): a fresh model, or the one checkpointed under --out
/// with `resume`; rank 0 writes it. Errors are input errors (options, --out, a checkpoint of another run,
/// ranks that disagree); cancellation throws OperationCanceledException after the last completed step,
/// whose checkpoint (if any) stays good. Held-out perplexities are measured on rank 0 only.
let runRanked (ranks: ICollectives) (be: IBackend) (input: TrainInput) (o: TrainOptions) (resume: bool)
              (progress: IProgress<Progress> option) (ct: CancellationToken) : Result<TrainResult, InputError> =
    match checkRanked ranks input o resume with
    | Error e -> Error e
    | Ok() ->
    let writer = ranks.Rank = 0
    let c = input.Config
    let steps = int (stepsOf o)
    let B, T = o.Batch, o.SeqLen
    let teacher =
        { Config = c; Weights = TeacherShape.initialWeights o.Seed c
          Source = { Path = input.Out; Format = "huggingface"; DTypes = [ "F32" ] } }
    use m = new DeviceDecoder(be, teacher)
    use optimizer = new AdamW(optimizerSettings o, parameterRules o, m.Parameters)
    let identity = identityOf input o
    let resumed =
        if resume then Checkpoint.resume (checkpointsDir input.Out) identity optimizer |> Result.map Some
        else Ok None
    match resumed with
    | Error e -> Error e
    | Ok resumed ->
    let startPosition, startCurve, warnings =
        match resumed with
        | None -> TokenStream.start input.Train, [], []
        | Some(state, warnings) ->
            let p =
                Position.ofInt64s state.DataPosition
                |> Result.bind (TokenStream.check input.Train)
                |> Result.defaultWith (fun why -> invalidOp $"checkpoint's data position: {why}")
            p, (state.Extra.TryFind "curve" |> Option.map curveOfJson |> Option.defaultValue [] |> List.rev), warnings
    let mutable position = startPosition
    // Newest first while training.
    let mutable curve = startCurve
    let startStep = optimizer.StepsTaken
    if writer && not resume then
        Directory.CreateDirectory input.Out |> ignore
        AtomicFile.writeText (Path.Combine(input.Out, "tokenizer.json")) input.TokenizerJson
    let grads = Grads m.Parameters
    // This rank's rows [first, first + R) of each global batch of B rows.
    let first, R = Parallel.DataParallel.shardRows ranks B
    use targetsT = be.Allocate([| R * T |], DType.I32)
    use lossT = be.Allocate [| R * T |]
    use total = be.Allocate [| 1 |]
    // The global batch's 1/(B·T) on every rank: the sum over ranks is the full-batch mean gradient.
    let scale = 1f / float32 (B * T)
    let combine = Parallel.DataParallel.combineStep ranks optimizer (float R / float B)
    let evaluate () =
        if not writer then None
        else input.Eval |> Option.map (fun set -> (Perplexity.evaluate m None set None ct).Perplexity)
    let saveCheckpoint () =
        let state : Checkpoint.TrainingState =
            { Step = optimizer.StepsTaken; DataPosition = Position.toInt64s position; Rngs = Map.empty
              Extra = Map [ "curve", curveToJson (List.rev curve) ] }
        Checkpoint.save (checkpointsDir input.Out) identity state optimizer
    let watch = Stopwatch.StartNew()
    for step in startStep + 1 .. steps do
        ct.ThrowIfCancellationRequested()
        let rows, next = TokenStream.batch input.Train position B       // (B, T+1), the same on every rank
        let ids = Array.init (R * T) (fun i -> rows[(first + i / T) * (T + 1) + i % T])          // (R, T)
        let targets = Array.init (R * T) (fun i -> rows[(first + i / T) * (T + 1) + i % T + 1])
        be.Upload(targetsT, ReadOnlySpan targets)
        let report =
            Trainer.stepWeightedThen combine optimizer (Trainer.equalWeights 1) (fun _ ->
                use pass = Decoder.trainForward m ids R T { Recompute = o.Recompute }
                be.CrossEntropy(pass.Logits, targetsT, lossT, pass.Logits, scale)
                Decoder.backward m pass pass.Logits grads
                be.Reduce(ReduceOp.Sum, lossT, total)
                float (total.ToArray()[0]) / float (R * T))
        if not (Double.IsFinite report.Loss) then
            invalidOp $"training loss became {report.Loss} at step {step} (learning rate {o.LearningRate}); lower --lr"
        position <- next
        let isLast = step = steps
        let evalHere = isLast || (o.EvalEvery |> Option.exists (fun n -> step % n = 0))
        let ppl = if evalHere then evaluate () else None
        curve <- { Step = step; Tokens = int64 step * int64 (B * T); Loss = report.Loss
                   LearningRate = float o.LearningRate * report.LrFactor; EvalPerplexity = ppl } :: curve
        if writer && (isLast || (o.CheckpointEvery |> Option.exists (fun n -> step % n = 0))) then saveCheckpoint ()
        progress |> Option.iter (fun p ->
            p.Report { Step = step; Steps = steps; Tokens = int64 step * int64 (B * T); Loss = report.Loss
                       TokensPerSecond = float ((step - startStep) * B * T) / max watch.Elapsed.TotalSeconds 1e-9 })
    let seconds = watch.Elapsed.TotalSeconds
    let curve = List.rev curve
    if writer then
        let weights, _ = m.Download()
        HfWriter.write input.Out { teacher with Weights = weights } HfWriter.F32 None
        writeCurve input.Out curve
    let last = List.last curve
    Ok { Steps = steps; Tokens = int64 steps * int64 (B * T); Curve = curve; FinalLoss = last.Loss
         FinalPerplexity = curve |> List.tryPick (fun p -> if p.Step = steps then p.EvalPerplexity else None)
         Seconds = seconds; TokensPerSecond = float ((steps - startStep) * B * T) / max seconds 1e-9
         ResumedFrom = (if resume then Some startStep else None); Warnings = warnings }

/// Trains as the only process (see runRanked).
let run (be: IBackend) (input: TrainInput) (o: TrainOptions) (resume: bool)
        (progress: IProgress<Progress> option) (ct: CancellationToken) : Result<TrainResult, InputError> =
    runRanked SingleRank.Instance be input o resume progress ct
