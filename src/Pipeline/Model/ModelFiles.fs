/// Opens a teacher from a path the user gives: a Hugging Face directory or a llama2.c `.bin`, and finds its
/// tokenizer (tokenizer.json in the directory; `tok*.bin` beside a `.bin`; or an explicit file), checking
/// that the tokenizer fits the model's vocabulary.
module TaylorCalibrate.Pipeline.Model.ModelFiles

open System.IO
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text

/// Loads the teacher at `path` (directory with config.json, or llama2.c `.bin`).
let loadTeacher (path: string) : Result<Teacher, InputError> =
    if Directory.Exists path then
        if HfCheckpoint.isModelDirectory path then HfCheckpoint.load path
        else Error(FileNotFound(Path.Combine(path, "config.json")))
    elif File.Exists path then
        if Path.GetExtension(path).ToLowerInvariant() = ".bin" then Llama2c.load path
        else Error(CorruptFile(path, "is neither a model directory nor a llama2.c .bin checkpoint"))
    else Error(FileNotFound path)

/// Loads a tokenizer file by its format: `.json` is tokenizer.json, anything else the llama2.c format.
let loadTokenizer (path: string) : Result<ITokenizer, InputError> =
    if Path.GetExtension(path).ToLowerInvariant() = ".json" then ByteLevelBpe.load path |> Result.map (fun t -> t :> ITokenizer)
    else Tok512.load path |> Result.map (fun t -> t :> ITokenizer)

/// The tokenizer file that belongs to a model path, if one is found.
let tokenizerPathFor (modelPath: string) (vocab: int) : Result<string, InputError> =
    if Directory.Exists modelPath then
        let p = Path.Combine(modelPath, "tokenizer.json")
        if File.Exists p then Ok p else Error(TokenizerNotFound(modelPath, $"looked for {p}"))
    else
        let dir = Path.GetDirectoryName(Path.GetFullPath modelPath)
        let preferred = Path.Combine(dir, $"tok{vocab}.bin")
        let candidates = Directory.GetFiles(dir, "tok*.bin") |> Array.sort
        if File.Exists preferred then Ok preferred
        elif candidates.Length = 1 then Ok candidates[0]
        elif candidates.Length > 1 then Error(TokenizerNotFound(modelPath, $"several tok*.bin files in {dir}"))
        else Error(TokenizerNotFound(modelPath, $"no tok*.bin beside it in {dir}"))

/// Checks that a tokenizer's ids are valid model ids. A llama2.c tokenizer must match exactly (its file
/// has one piece per id); a tokenizer.json may be smaller (Qwen pads its embedding matrix).
let checkVocab (tok: ITokenizer) (tokPath: string) (c: ModelConfig) : Result<ITokenizer, InputError> =
    let exact = not (tokPath.EndsWith(".json", System.StringComparison.OrdinalIgnoreCase))
    if tok.VocabSize > c.Vocab || (exact && tok.VocabSize <> c.Vocab) then Error(TokenizerMismatch(tokPath, tok.VocabSize, c.Vocab))
    else Ok tok

/// The model's tokenizer: `explicitPath`, else the one found beside the model; checked against the vocabulary.
let tokenizerFor (modelPath: string) (c: ModelConfig) (explicitPath: string option) : Result<ITokenizer, InputError> =
    let path = match explicitPath with Some p -> Ok p | None -> tokenizerPathFor modelPath c.Vocab
    path |> Result.bind (fun p -> loadTokenizer p |> Result.bind (fun t -> checkVocab t p c))
