/// Perplexity with one fixed protocol (docs/method.md §8): the token stream is cut into
/// consecutive non-overlapping windows of W tokens (the final partial window is dropped; nothing is carried
/// between windows); inside each window tokens 2..W are predicted from their prefix, so each window gives
/// W−1 targets. PPL = exp(Σ NLL / Σ targets), accumulated in double. With a reference model `vs` (the
/// teacher, when the evaluated model is a student), the mean KL(p_vs ‖ p_model) over the same positions is
/// reported too: the divergence Stage-2 distillation minimises.
module TaylorCalibrate.Pipeline.Eval.Perplexity

open System
open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model

/// The default window: min(2048, context).
let defaultWindow (c: ModelConfig) = min 2048 c.Context

/// A token stream cut into windows, validated.
type EvalSet =
    { /// The tokens actually evaluated: Windows·Window of them.
      Tokens: int[]
      Window: int
      Windows: int
      /// Tokens in the stream before cutting (after --max-tokens).
      StreamTokens: int }

/// Validates the window against the model and the stream; `source` names the text in errors.
let prepare (source: string) (c: ModelConfig) (stream: int[]) (window: int option) (maxTokens: int option) : Result<EvalSet, InputError> =
    let W = defaultArg window (defaultWindow c)
    let stream = match maxTokens with Some n when n < stream.Length -> stream[.. n - 1] | _ -> stream
    if W < 2 then Error(InvalidOption("--window", $"must be at least 2, got {W}"))
    elif W > c.Context then Error(InvalidOption("--window", $"{W} exceeds the model's context length {c.Context}"))
    elif maxTokens |> Option.exists (fun n -> n <= 0) then Error(InvalidOption("--max-tokens", "must be positive"))
    elif stream.Length < W then Error(TextTooShort(source, stream.Length, W))
    else
        let n = stream.Length / W
        Ok { Tokens = stream[.. n * W - 1]; Window = W; Windows = n; StreamTokens = stream.Length }

/// Progress of an evaluation.
type Progress = { WindowsDone: int; Windows: int }

/// What an evaluation measured.
type PerplexityResult =
    { Perplexity: float
      /// Mean NLL per predicted token, nats.
      Nll: float
      TotalNll: float
      /// Number of predicted tokens: Windows·(Window − 1).
      Predicted: int64
      /// Tokens run through the model: Windows·Window.
      Tokens: int64
      Windows: int
      Window: int
      Seconds: float
      TokensPerSecond: float
      /// Mean KL(p_vs ‖ p_model) per predicted position, nats, when a reference model was given.
      MeanKl: float option }

/// Windows per forward call: about 8k tokens and at most 256 MiB of logits per batch.
let batchWindows (W: int) (V: int) (windows: int) =
    let byTokens = max 1 (8192 / W)
    let byLogits = max 1 (int (min 1_000_000L ((256L <<< 20) / (4L * int64 W * int64 V))))
    max 1 (min windows (min byTokens byLogits))

/// A model as the evaluation sees it: logits (B, T, V), owned by the caller, of ids (B·T) on a backend.
type LogitsModel =
    { Backend: IBackend
      Vocab: int
      Logits: int[] -> int -> int -> Tensor }

/// A decoder (teacher or student) as a LogitsModel.
let decoderModel (m: DeviceDecoder) : LogitsModel =
    { Backend = m.Backend; Vocab = m.Config.Vocab
      Logits = fun ids B T -> (Decoder.forward m ids B T Decoder.ForwardOptions.none).Logits }

/// Evaluates the set with any model (teacher or student); `vs` adds the mean KL. Cancellation stops between batches.
let evaluateModel (m: LogitsModel) (vs: LogitsModel option) (set: EvalSet) (progress: IProgress<Progress> option) (ct: CancellationToken) =
    let be = m.Backend
    let W, V = set.Window, m.Vocab
    vs |> Option.iter (fun o ->
        if o.Vocab <> V then invalidArg "vs" $"the comparison model has vocabulary {o.Vocab}, this model {V}")
    let per = batchWindows W V set.Windows
    let watch = Stopwatch.StartNew()
    let mutable totalNll = 0.0
    let mutable totalKl = 0.0
    let mutable doneWindows = 0
    while doneWindows < set.Windows do
        ct.ThrowIfCancellationRequested()
        let B = min per (set.Windows - doneWindows)
        let ids = set.Tokens[doneWindows * W .. (doneWindows + B) * W - 1]
        // Target of position t is the token at t+1 inside the window; the last position predicts nothing.
        let targets = Array.init (B * W) (fun i -> if i % W = W - 1 then -1 else ids[i + 1])
        use logits = m.Logits ids B W
        use targetsT = be.FromInts(targets, B * W)
        use loss = be.Allocate [| B * W |]
        be.CrossEntropy(logits, targetsT, loss, null, 1f)
        let nll = loss.ToArray()
        for i in 0 .. nll.Length - 1 do
            if targets[i] >= 0 then totalNll <- totalNll + float nll[i]
        match vs with
        | None -> ()
        | Some other ->
            use otherLogits = other.Logits ids B W
            be.KlDivergence(otherLogits, logits, loss, null, 1f)
            let kl = loss.ToArray()
            for i in 0 .. kl.Length - 1 do
                if targets[i] >= 0 then totalKl <- totalKl + float kl[i]
        doneWindows <- doneWindows + B
        progress |> Option.iter (fun p -> p.Report { WindowsDone = doneWindows; Windows = set.Windows })
    let seconds = watch.Elapsed.TotalSeconds
    let predicted = int64 set.Windows * int64 (W - 1)
    let tokens = int64 set.Windows * int64 W
    { Perplexity = exp (totalNll / float predicted)
      Nll = totalNll / float predicted
      TotalNll = totalNll
      Predicted = predicted
      Tokens = tokens
      Windows = set.Windows
      Window = W
      Seconds = seconds
      TokensPerSecond = float tokens / max seconds 1e-9
      MeanKl = vs |> Option.map (fun _ -> totalKl / float predicted) }

/// Evaluates the set with a decoder; `vs` (same vocabulary, same backend) adds the mean KL.
let evaluate (m: DeviceDecoder) (vs: DeviceDecoder option) (set: EvalSet) (progress: IProgress<Progress> option) (ct: CancellationToken) =
    evaluateModel (decoderModel m) (vs |> Option.map decoderModel) set progress ct
