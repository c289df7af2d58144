/// Evaluation and calibration text → one token stream. A file is split into documents at
/// `<|endoftext|>` markers (the TinyStories format; a plain file is one document); a directory is every
/// `*.txt` file in name order, each split the same way. Each document is trimmed, empty ones are skipped,
/// and each is encoded with the tokenizer's document start (llama2.c: BOS, then the dummy-prefix space).
module TaylorCalibrate.Pipeline.Text.Corpus

open System
open System.IO
open TaylorCalibrate.Pipeline

/// The marker between documents.
let documentSeparator = "<|endoftext|>"

/// Trimmed, non-empty documents of a text.
let documents (text: string) : string list =
    text.Split(documentSeparator)
    |> Array.map (fun d -> d.Trim())
    |> Array.filter (fun d -> d.Length > 0)
    |> List.ofArray

/// Documents of a file, or of every `*.txt` file under a directory (sorted by name).
let readDocuments (path: string) : Result<string list, InputError> =
    if File.Exists path then Ok(documents (File.ReadAllText path))
    elif Directory.Exists path then
        let files = Directory.GetFiles(path, "*.txt", SearchOption.AllDirectories) |> Array.sortWith (fun a b -> String.CompareOrdinal(a, b))
        if files.Length = 0 then Error(FileNotFound(Path.Combine(path, "*.txt")))
        else Ok [ for f in files do yield! documents (File.ReadAllText f) ]
    else Error(FileNotFound path)

/// The concatenation of every document encoded with its document start.
let tokenStream (tok: ITokenizer) (docs: string list) : int[] =
    docs |> Seq.collect (fun d -> tok.Encode(d, true)) |> Array.ofSeq

/// The first `limit` tokens of the stream (at least: whole documents are encoded), without encoding the
/// documents past the limit.
let tokenStreamUpTo (tok: ITokenizer) (limit: int option) (docs: string list) : int[] =
    match limit with
    | None -> tokenStream tok docs
    | Some n ->
        let out = Collections.Generic.List<int>()
        use e = (Seq.ofList docs).GetEnumerator()
        while out.Count < n && e.MoveNext() do out.AddRange(tok.Encode(e.Current, true))
        out.ToArray()
