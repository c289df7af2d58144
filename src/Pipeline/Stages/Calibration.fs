/// The calibration batch (method.md §5.1, §11b): B contiguous chunks of T tokens (default 4 × 256) from a
/// calibration text whose documents must not occur in the evaluation text (the reference calibrates on
/// its test set; the project refuses that unless explicitly allowed).
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
    /// 4 × 256 tokens, no overlap (method.md §5.1, §11b).
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
        Error(InvalidOption("--calib-text", $"{source}: {shared} of its {calibDocs.Length} documents also occur in the evaluation text {evalName}; calibrate on disjoint text (method.md §11b) or pass --allow-overlap"))
    else
    let stream = Corpus.tokenStream tok calibDocs
    if stream.Length < need then
        Error(InvalidOption("--calib-text", $"{source} gives {stream.Length} tokens, fewer than the {opts.Batch} x {opts.Length} = {need} the calibration batch needs"))
    else
        Ok { Tokens = stream[.. need - 1]; B = opts.Batch; T = opts.Length; Source = source; Documents = calibDocs.Length
             EvalSource = eval |> Option.map fst; OverlappingDocuments = shared }
