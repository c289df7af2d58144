/// `taylor-calibrate train-teacher`: trains a Llama, Qwen2 or Qwen3 decoder from scratch
/// (Pipeline/Stages/TrainTeacher.fs) and writes a Hugging Face directory every model command reads. This
/// file parses options, reads the texts, builds or loads the tokenizer, shows progress and prints the result.
/// Under mpirun/srun the ranks train data-parallel (TrainTeacher.runRanked): rank 0 reports and writes, the
/// others train silently and fail loudly.
module TaylorCalibrate.Cli.TrainTeacherCommand

open System
open System.IO
open System.Text.Json
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Family of family: string
    | [<Mandatory>] Layers of n: int
    | [<Mandatory>] Hidden of d: int
    | [<Mandatory>] Heads of n: int
    | Kv_Heads of n: int
    | Head_Dim of n: int
    | [<Mandatory>] Ffn of n: int
    | Tokenizer of path: string
    | Bpe_Vocab of n: int
    | [<Mandatory>] Train_Text of paths: string list
    | Hold_Out_From of name: string
    | [<Mandatory>] Tokens of n: int64
    | Seq_Len of n: int
    | Batch of n: int
    | Lr of rate: float
    | Weight_Decay of wd: float
    | Warmup of steps: int
    | Schedule of kind: string
    | Eval_Text of path: string
    | Eval_Every of steps: int
    | Checkpoint_Every of steps: int
    | [<Mandatory>] Out of dir: string
    | Resume
    | Untied
    | Recompute
    | Device of device: string
    | Seed of seed: int
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Family _ -> "llama | qwen2 (q/k/v biases) | qwen3 (per-head q/k RMSNorm)"
            | Layers _ -> "number of decoder layers"
            | Hidden _ -> "hidden size D"
            | Heads _ -> "query heads (must divide --hidden)"
            | Kv_Heads _ -> "key/value heads (must divide --heads; default --heads)"
            | Head_Dim _ -> "head size (default hidden/heads)"
            | Ffn _ -> "SwiGLU width"
            | Tokenizer _ -> "a Hugging Face tokenizer.json to use (copied into --out)"
            | Bpe_Vocab _ -> "instead of --tokenizer: train a byte-level BPE of N tokens on the training text"
            | Train_Text _ -> "training text: story files (documents split at <|endoftext|>), plain text files, or folders of *.txt"
            | Hold_Out_From _ -> "hold out the training documents whose name sorts at or after NAME (e.g. 2000 on the State-of-the-Union folder) and evaluate on them"
            | Tokens _ -> "training tokens (steps = tokens / (batch x seq-len))"
            | Seq_Len _ -> "tokens per row T, also the model's context (default 256)"
            | Batch _ -> "rows per step B (default 8)"
            | Lr _ -> "peak learning rate (default 3e-3)"
            | Weight_Decay _ -> "decoupled weight decay of the matrices (default 0.1)"
            | Warmup _ -> "linear warmup steps (default 5 % of the steps)"
            | Schedule _ -> "cosine (default) | constant, after the warmup"
            | Eval_Text _ -> "held-out text: perplexity at each evaluation point (must share no document with the training text)"
            | Eval_Every _ -> "evaluate every N steps (default: 10 points over the run)"
            | Checkpoint_Every _ -> "write a training checkpoint every N steps (default: 10 over the run)"
            | Out _ -> "output directory (must be empty unless --resume)"
            | Resume -> "continue the run checkpointed in --out (same options)"
            | Untied -> "a separate lm_head (default: tied to the embeddings)"
            | Recompute -> "recompute each block's activations in the backward (less memory)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto)"
            | Seed _ -> "seed of the initial weights and the data order (default 0)"

let private familyOf (s: string) =
    match ModelFamily.ofModelType (s.ToLowerInvariant()) with
    | Some f -> f
    | None -> usageError $"--family: '{s}' is not one of llama, qwen2, qwen3"

let private sourceOf (path: string) =
    if Directory.Exists path then TextFolder path
    elif File.Exists path then Stories path
    else usageError $"--train-text: {path}: file not found"

/// The tokenizer and its tokenizer.json text: given, trained, or (on resume) the one the run wrote.
let private tokenizerOf (args: ParseResults<Args>) (out: string) (trainDocs: Document[]) : ITokenizer * string =
    let fromJson (what: string) (json: string) =
        try
            use doc = JsonDocument.Parse json
            ByteLevelBpe.parse what doc.RootElement |> orFail :> ITokenizer, json
        with :? JsonException as e -> usageError $"{what}: not valid JSON ({e.Message})"
    let written = Path.Combine(out, "tokenizer.json")
    match args.TryGetResult Tokenizer, args.TryGetResult Bpe_Vocab with
    | Some _, Some _ -> usageError "--tokenizer and --bpe-vocab exclude each other"
    | None, None -> usageError "give --tokenizer FILE (a tokenizer.json) or --bpe-vocab N"
    | _ when args.Contains Resume && File.Exists written -> fromJson written (File.ReadAllText written)
    | Some path, None ->
        if not (File.Exists path) then usageError $"--tokenizer: {path}: file not found"
        elif not (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) then
            usageError $"--tokenizer: {path} is not a tokenizer.json; train-teacher writes Hugging Face directories, which carry one"
        else fromJson path (File.ReadAllText path)
    | None, Some n ->
        let n = BpeTrainer.checkVocabSize "--bpe-vocab" n |> orFail
        printfn "tokenizer   training a byte-level BPE of %d tokens on %d documents ..." n trainDocs.Length
        let bpe = BpeTrainer.train n None (trainDocs |> Seq.map (fun d -> d.Text))
        fromJson "tokenizer.json (trained)" (BpeTrainer.toJson bpe)

let private trainWithProgress ranks be input opts resume (ct: CancellationToken) =
    AnsiConsole.Progress()
        .AutoClear(true)
        .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), RemainingTimeColumn())
        .Start(fun ctx ->
            let task = ctx.AddTask("training", true, float (TrainTeacher.stepsOf opts))
            let progress =
                { new IProgress<TrainTeacher.Progress> with
                    member _.Report p =
                        task.Value <- float p.Step
                        task.Description <- $"step {p.Step}/{p.Steps}  loss {p.Loss:F3}  {p.TokensPerSecond:F0} tok/s" }
            TrainTeacher.runRanked ranks be input opts resume (Some progress) ct)

let private runOn (world: MpiWorld option) (args: ParseResults<Args>) =
    let ranks = match world with Some w -> w :> ICollectives | None -> SingleRank.Instance
    // Rank 0 reports; the others' errors still reach stderr.
    if ranks.Rank <> 0 then Console.SetOut TextWriter.Null
    let out = args.GetResult Out |> nonEmptyPath "--out"
    let resume = args.Contains Resume
    // Early, before the tokenizing; rank 0 alone, as only it writes --out (runRanked checks again for all).
    if ranks.Rank = 0 then TrainTeacher.checkOut out resume |> orFail
    let family = familyOf (args.GetResult Family)
    let heads = args.GetResult Heads
    let hidden = args.GetResult Hidden
    let seqLen = args.GetResult(Seq_Len, defaultValue = 256)
    // Documents: every --train-text source, optionally split into training and held-out parts by name.
    let trainPaths = args.GetResult Train_Text
    let allDocs = trainPaths |> List.map (sourceOf >> Documents.read >> orFail) |> Array.concat
    for p in trainPaths do warnIfNotCleanText p
    let trainDocs, heldOut =
        match args.TryGetResult Hold_Out_From with
        | None -> allDocs, None
        | Some key ->
            let split = DocumentSplit.apply "--hold-out-from" (NamesFrom key) allDocs |> orFail
            split.Train, Some split.HeldOut
    let tok, tokJson = tokenizerOf args out trainDocs
    let shape : TeacherShape.TeacherShape =
        { Family = family; Layers = args.GetResult Layers; Hidden = hidden; Heads = heads
          KvHeads = args.GetResult(Kv_Heads, defaultValue = heads)
          HeadDim = args.GetResult(Head_Dim, defaultValue = (if heads > 0 then hidden / heads else 0))
          Ffn = args.GetResult Ffn; Vocab = tok.VocabSize; Context = seqLen; Tied = not (args.Contains Untied) }
    let config = TeacherShape.toConfig shape |> orFail
    let tokens = args.GetResult Tokens
    let batch = args.GetResult(Batch, defaultValue = 8)
    let steps = if batch > 0 && seqLen > 0 then tokens / int64 (batch * seqLen) else 0L
    let every = max 1 (int (steps / 10L))
    let opts : TrainTeacher.TrainOptions =
        { Tokens = tokens; SeqLen = seqLen; Batch = batch
          LearningRate = float32 (args.GetResult(Lr, defaultValue = 3e-3))
          WeightDecay = float32 (args.GetResult(Weight_Decay, defaultValue = 0.1))
          Warmup = args.GetResult(Warmup, defaultValue = int (steps / 20L))
          Decay =
            (match args.GetResult(Schedule, defaultValue = "cosine") with
             | "cosine" -> TrainTeacher.LrDecay.Cosine
             | "constant" -> TrainTeacher.LrDecay.Constant
             | s -> usageError $"--schedule: '{s}' is not cosine or constant")
          EvalEvery = Some(args.GetResult(Eval_Every, defaultValue = every))
          CheckpointEvery = Some(args.GetResult(Checkpoint_Every, defaultValue = every))
          Seed = uint64 (args.GetResult(Seed, defaultValue = 0))
          Recompute = args.Contains Recompute }
    TrainTeacher.validate config opts |> orFail
    // Held-out text: --eval-text, else the held-out split; never shared with training.
    let evalDocs =
        match args.TryGetResult Eval_Text, heldOut with
        | Some p, _ -> Some(p, (readText p))
        | None, Some docs -> Some("--hold-out-from", docs |> Array.map (fun d -> d.Text) |> List.ofArray)
        | None, None -> None
    evalDocs |> Option.iter (fun (what, docs) ->
        let shared = Stages.Calibration.overlap (trainDocs |> Array.map (fun d -> d.Text) |> List.ofArray) docs
        if shared > 0 then usageError $"{what}: {shared} of its documents are also in the training text")
    let evalSet =
        evalDocs |> Option.map (fun (what, docs) ->
            Perplexity.prepare what config (Corpus.tokenStream tok docs) None None |> orFail)
    printfn "tokenizing  %d training documents ..." trainDocs.Length
    let stream =
        TokenStream.ofDocuments "--train-text" tok { SeqLen = seqLen; Shuffle = ShuffleDocuments; Seed = opts.Seed } None trainDocs
        |> orFail
    printfn "model       %s: %d layers, D %d, %d/%d heads of %d, FFN %d, vocabulary %d, %s head"
        (ModelFamily.modelType family) config.Layers config.Dim config.Heads config.KvHeads config.HeadDim config.Hidden config.Vocab
        (if config.TiedEmbeddings then "tied" else "separate")
    printfn "data        %d rows of %d tokens per epoch; %d steps of %d x %d tokens" stream.Rows seqLen steps batch seqLen
    use be = openRankDevice world (args.TryGetResult Device)
    let input : TrainTeacher.TrainInput = { Config = config; TokenizerJson = tokJson; Train = stream; Eval = evalSet; Out = out }
    use cts = new CancellationTokenSource()
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    let result =
        try
            try
                if ranks.Rank = 0 then trainWithProgress ranks be input opts resume cts.Token |> orFail
                else TrainTeacher.runRanked ranks be input opts resume None cts.Token |> orFail
            with :? OperationCanceledException ->
                eprintfn "interrupted; the last checkpoint in %s stays good. Continue with the same command and --resume." out
                exit 130
        finally Console.CancelKeyPress.RemoveHandler onCancel
    for w in result.Warnings do eprintfn "warning: %s" w
    result.ResumedFrom |> Option.iter (printfn "resumed     from step %d")
    printfn "trained     %d steps, %d tokens, %.1f s (%.0f tokens/s on %s%s)" result.Steps result.Tokens result.Seconds result.TokensPerSecond be.Name
        (if ranks.Size > 1 then $", {ranks.Size} MPI ranks" else "")
    printfn "final loss  %.4f nats/token" result.FinalLoss
    result.FinalPerplexity |> Option.iter (printfn "held-out    PPL %.3f")
    let summary =
        {| family = ModelFamily.modelType family; layers = config.Layers; hidden = config.Dim; heads = config.Heads
           kv_heads = config.KvHeads; head_dim = config.HeadDim; ffn = config.Hidden; vocab = config.Vocab
           tokens = result.Tokens; steps = result.Steps; seq_len = seqLen; batch = batch; seconds = result.Seconds
           tokens_per_s = result.TokensPerSecond; final_loss = result.FinalLoss
           held_out_perplexity = Option.toNullable result.FinalPerplexity; device = be.Name
           train_text = trainPaths; eval_text = evalDocs |> Option.map fst |> Option.toObj |}
    if ranks.Rank = 0 then
        AtomicFile.writeText (Path.Combine(out, "train-teacher.json")) (JsonSerializer.Serialize(summary, JsonSerializerOptions(WriteIndented = true)))
    printfn "wrote       %s (config.json, model.safetensors, tokenizer.json, learning-curve.json/.svg, train-teacher.json)" out
    0

let run (args: ParseResults<Args>) =
    let world = startMpi ()
    onEveryRank world (fun () -> runOn world args)
