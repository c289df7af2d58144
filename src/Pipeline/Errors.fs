/// Errors a user can fix (bad files, bad options). Loaders return Result<_, InputError>; only the CLI turns
/// them into messages and exit codes. Programming mistakes stay exceptions.
namespace TaylorCalibrate.Pipeline

/// What was wrong with an input, naming the file, tensor or option.
type InputError =
    | FileNotFound of path: string
    | CorruptFile of path: string * problem: string
    | UnsupportedDType of path: string * tensor: string * dtype: string
    | MissingTensor of source: string * tensor: string
    | ShapeMismatch of tensor: string * expected: int[] * actual: int[]
    | InvalidOption of option: string * problem: string
    | InvalidValue of tensor: string * problem: string
    | UnsupportedModelType of path: string * modelType: string * supported: string list
    | MissingConfigField of path: string * field: string
    | InvalidConfigField of path: string * field: string * problem: string
    | MissingShard of index: string * shard: string * tensor: string
    | TokenizerMismatch of tokenizer: string * tokenizerVocab: int * modelVocab: int
    | TokenizerNotFound of model: string * looked: string
    | TextTooShort of path: string * tokens: int * window: int
    | CheckpointMismatch of path: string * field: string * saved: string * current: string

module InputError =
    let private shape (s: int[]) = "[" + (s |> Array.map string |> String.concat ",") + "]"

    /// One line a person can act on.
    let describe (e: InputError) =
        match e with
        | FileNotFound p -> $"{p}: file not found"
        | CorruptFile(p, why) -> $"{p}: {why}"
        | UnsupportedDType(p, t, d) -> $"{p}: tensor '{t}' has dtype {d}; supported: F32, F16, BF16 (and I32/I64 for ids)"
        | MissingTensor(src, t) -> $"{src}: tensor '{t}' is missing"
        | ShapeMismatch(t, e, a) -> $"tensor '{t}' has shape {shape a}, expected {shape e}"
        | InvalidOption(o, why) -> $"{o}: {why}"
        | InvalidValue(t, why) -> $"tensor '{t}': {why}"
        | UnsupportedModelType(p, t, ok) ->
            let list = String.concat ", " ok
            $"{p}: unsupported model_type '{t}' (supported: {list})"
        | MissingConfigField(p, f) -> $"{p}: required field '{f}' is missing"
        | InvalidConfigField(p, f, why) -> $"{p}: field '{f}' {why}"
        | MissingShard(idx, shard, t) -> $"{idx}: shard '{shard}' (holding tensor '{t}') is missing"
        | TokenizerMismatch(p, tv, mv) -> $"{p}: tokenizer has {tv} tokens but the model's vocabulary has {mv}"
        | TokenizerNotFound(m, looked) -> $"{m}: no tokenizer found ({looked}); pass --tokenizer FILE"
        | TextTooShort(p, n, w) -> $"{p}: text gives {n} tokens, fewer than one window of {w} (use --window)"
        | CheckpointMismatch(p, f, saved, current) ->
            $"{p}: checkpoint of another run: {f} is {saved} there but {current} now (resume with the same settings, or start afresh)"

/// Raised by the CLI layer to carry an InputError out of deep code paths (never caught inside the library).
exception InputException of InputError

/// Sequencing of loader results: the first InputError stops the loading.
type InputResultBuilder() =
    member _.Bind(r: Result<'a, InputError>, f: 'a -> Result<'b, InputError>) = Result.bind f r
    member _.Return(v: 'a) : Result<'a, InputError> = Ok v
    member _.ReturnFrom(r: Result<'a, InputError>) = r
    member _.Zero() : Result<unit, InputError> = Ok()

[<AutoOpen>]
module InputResultBuilder =
    /// `inputResult { let! x = load ...; return ... }`.
    let inputResult = InputResultBuilder()
