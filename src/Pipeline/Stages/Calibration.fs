/// The calibration batch (docs/method.md §5.1, §11b): B contiguous chunks of T tokens (default 4 × 256) from a
/// calibration text whose documents must not occur in the evaluation text (the reference calibrates on
/// its test set; the project refuses that unless explicitly allowed). `buildSplit` also holds out whole
/// documents from the end of the calibration text as a dev part, for best-state selection and early stopping
/// on text the fit never saw; the fit part starts with exactly the tokens `build` takes.
module TaylorCalibrate.Pipeline.Stages.Calibration

open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text

/// Size of the batch and the overlap rule.
type CalibrationOptions =
    { Batch: int
      Length: int
      /// Accept calibration documents that also occur in the evaluation text.
      AllowOverlap: bool }

module CalibrationOptions =
    /// 4 × 256 tokens, no overlap (docs/method.md §5.1, §11b).
    let defaults = { Batch = 4; Length = 256; AllowOverlap = false }

/// B × T token ids (row-major) and where they came from.
type CalibrationBatch =
    { Tokens: int[]
      B: int
      T: int
      Source: string
      /// Documents read from the calibration source.
      Documents: int
      /// The evaluation text checked against, and how many calibration documents it also contains.
      EvalSource: string option
      OverlappingDocuments: int }

/// Number of calibration documents that also occur (verbatim, trimmed) among the evaluation documents.
let overlap (calibDocs: string list) (evalDocs: string list) =
    let evalSet = System.Collections.Generic.HashSet<string>(evalDocs)
    calibDocs |> List.filter evalSet.Contains |> List.length

/// Builds the batch from already-read documents; `eval` is the evaluation source and its documents.
let build (opts: CalibrationOptions) (tok: ITokenizer) (source: string) (calibDocs: string list)
          (eval: (string * string list) option) : Result<CalibrationBatch, InputError> =
    let shared = match eval with Some(_, docs) -> overlap calibDocs docs | None -> 0
    let need = opts.Batch * opts.Length
    if opts.Batch <= 0 || opts.Length <= 1 then
        Error(InvalidOption("calibration batch", $"{opts.Batch} x {opts.Length} tokens is empty; it needs at least 1 row of 2 tokens"))
    elif shared > 0 && not opts.AllowOverlap then
        let evalName = eval |> Option.map fst |> Option.defaultValue "?"
        Error(InvalidOption("--calib-text", $"{source}: {shared} of its {calibDocs.Length} documents also occur in the evaluation text {evalName}; calibrate on disjoint text (docs/method.md §11b) or pass --allow-overlap"))
    else
    let stream = Corpus.tokenStream tok calibDocs
    if stream.Length < need then
        Error(InvalidOption("--calib-text", $"{source} gives {stream.Length} tokens, fewer than the {opts.Batch} x {opts.Length} = {need} the calibration batch needs"))
    else
        Ok { Tokens = stream[.. need - 1]; B = opts.Batch; T = opts.Length; Source = source; Documents = calibDocs.Length
             EvalSource = eval |> Option.map fst; OverlappingDocuments = shared }

/// The calibration text as a fit part and, optionally, a held-out dev part of whole other documents.
type CalibrationSplit =
    { Fit: CalibrationBatch
      Dev: CalibrationBatch option }

/// The fit chunks of a budget of n calibration tokens in all, of which devTokens (rounded up to whole chunks of
/// `length`) are held out: budgets count every token a strategy reads, so they compare across strategies.
let fitChunks (length: int) (n: int) (devTokens: int) : Result<int, InputError> =
    let devChunks = (max 0 devTokens + length - 1) / length
    let fit = n / length - devChunks
    if fit < 1 then
        Error(InvalidOption($"--calib-dev-tokens {devTokens}", $"holds out all {n} calibration tokens; at least one chunk of {length} must remain to fit on"))
    else Ok fit

/// Fit batch of opts.Batch × opts.Length tokens from the leading documents, and a dev batch of
/// ⌈devTokens / Length⌉ chunks from trailing documents (devTokens = 0: no dev part, the fit is `build`'s batch).
let buildSplit (opts: CalibrationOptions) (devTokens: int) (tok: ITokenizer) (source: string) (calibDocs: string list)
               (eval: (string * string list) option) : Result<CalibrationSplit, InputError> =
    if devTokens < 0 then Error(InvalidOption("--calib-dev-tokens", $"{devTokens} must not be negative"))
    elif devTokens = 0 then build opts tok source calibDocs eval |> Result.map (fun b -> { Fit = b; Dev = None })
    else
    let devChunks = (devTokens + opts.Length - 1) / opts.Length
    let devNeed = devChunks * opts.Length
    // Take whole documents from the end until they give the dev tokens.
    let docs = Array.ofList calibDocs
    let mutable cut = docs.Length
    let mutable devStream = [||]
    while devStream.Length < devNeed && cut > 0 do
        cut <- cut - 1
        devStream <- Array.append (Corpus.tokenStream tok [ docs[cut] ]) devStream
    if devStream.Length < devNeed then
        Error(InvalidOption("--calib-text", $"{source} gives {devStream.Length} tokens, fewer than the {devNeed} the dev part needs"))
    else
    let fitDocs = List.ofArray docs[.. cut - 1]
    build opts tok source fitDocs eval
    |> Result.bind (fun fit ->
        // The fit check above saw only the fit documents: the dev documents must not be evaluation text either.
        let devShared = match eval with Some(_, e) -> overlap (List.ofArray docs[cut ..]) e | None -> 0
        if devShared > 0 && not opts.AllowOverlap then
            Error(InvalidOption("--calib-text", $"{source}: {devShared} of its dev documents also occur in the evaluation text; calibrate on disjoint text (docs/method.md §11b) or pass --allow-overlap"))
        else
            Ok { Fit = { fit with Documents = cut }
                 Dev = Some { fit with Tokens = devStream[.. devNeed - 1]; B = devChunks; Documents = docs.Length - cut
                                       OverlappingDocuments = devShared } })
