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

/// Where the bytes of a text stop being plain UTF-8 text: the offset of the first invalid UTF-8 sequence
/// or NUL byte (binary data), with what was found there; None for clean text.
let textProblemIn (bytes: byte[]) : (int64 * string) option =
    let nul = Array.IndexOf(bytes, 0uy)
    let chars = Array.zeroCreate<char> bytes.Length
    let mutable read = 0
    let mutable written = 0
    let status = Text.Unicode.Utf8.ToUtf16(ReadOnlySpan bytes, Span chars, &read, &written, false, true)
    let invalid = if status = Buffers.OperationStatus.InvalidData then read else -1
    match invalid, nul with
    | i, n when i >= 0 && (n < 0 || i < n) -> Some(int64 i, "invalid UTF-8")
    | _, n when n >= 0 -> Some(int64 n, "a NUL byte (binary data?)")
    | _ -> None

/// The first text problem (see textProblemIn) of a file, or of the `*.txt` files under a directory, as one
/// warning line naming the file and the byte offset; None for clean text or a missing path.
let textWarning (path: string) : string option =
    let files =
        if File.Exists path then [| path |]
        elif Directory.Exists path then Directory.GetFiles(path, "*.txt", SearchOption.AllDirectories) |> Array.sortWith (fun a b -> String.CompareOrdinal(a, b))
        else [||]
    files |> Array.tryPick (fun f ->
        textProblemIn (File.ReadAllBytes f)
        |> Option.map (fun (offset, what) -> $"{f}: {what} at byte offset {offset}; read with replacement characters, results may be meaningless"))

/// How far the encoding of a corpus has got (characters of the documents, ids produced).
type EncodeProgress = { CharsDone: int64; Chars: int64; Tokens: int }

/// Characters between two progress reports (reports are cheap, but not free for a console bar).
let private reportEveryChars = 65536L

/// Reports progress over a corpus of `total` characters, at most every reportEveryChars.
type private ProgressReporter(progress: IProgress<EncodeProgress> option, total: int64) =
    let mutable lastReport = -reportEveryChars
    member _.At(chars: int64, tokens: int) =
        match progress with
        | Some p when chars - lastReport >= reportEveryChars || chars = total ->
            lastReport <- chars
            p.Report { CharsDone = chars; Chars = total; Tokens = tokens }
        | _ -> ()

/// One document with its document start; where the tokenizer encodes part by part, `keepGoing (chars,
/// ids)` is asked after each part and may stop it early (the ids are then a prefix of the whole encoding).
let encodeDocumentWhile (tok: ITokenizer) (doc: string) (keepGoing: int -> int -> bool) : int[] =
    match tok with
    | :? IIncrementalTokenizer as inc -> inc.EncodeWhile(doc, true, Func<int, int, bool>(keepGoing))
    | _ -> tok.Encode(doc, true)

/// Every document encoded with its document start, one array per document, with progress.
let encodeDocuments (tok: ITokenizer) (progress: IProgress<EncodeProgress> option) (docs: string seq) : int[][] =
    let docs = Array.ofSeq docs
    let reporter = ProgressReporter(progress, docs |> Array.sumBy (fun d -> int64 d.Length))
    let mutable before = 0L
    let mutable tokens = 0
    [| for d in docs do
        let ids = encodeDocumentWhile tok d (fun chars ids -> reporter.At(before + int64 chars, tokens + ids); true)
        before <- before + int64 d.Length
        tokens <- tokens + ids.Length
        reporter.At(before, tokens)
        ids |]

/// The concatenation of the documents encoded with their document starts, stopping as soon as `limit`
/// tokens are reached: inside a long document where the tokenizer encodes part by part
/// (IIncrementalTokenizer), else after the document that reaches it. The result is always a prefix of the
/// full stream, at least `limit` long when the corpus has that many tokens.
let tokenStreamWith (tok: ITokenizer) (limit: int option) (progress: IProgress<EncodeProgress> option) (docs: string list) : int[] =
    let reporter = ProgressReporter(progress, docs |> List.sumBy (fun d -> int64 d.Length))
    let out = Collections.Generic.List<int>()
    let limit = defaultArg limit Int32.MaxValue
    let mutable before = 0L
    use e = (Seq.ofList docs).GetEnumerator()
    while out.Count < limit && e.MoveNext() do
        let doc = e.Current
        let startCount = out.Count
        let ids =
            encodeDocumentWhile tok doc (fun chars ids ->
                reporter.At(before + int64 chars, startCount + ids)
                startCount + ids < limit)
        out.AddRange ids
        before <- before + int64 doc.Length
        reporter.At(before, out.Count)
    out.ToArray()

/// The concatenation of every document encoded with its document start.
let tokenStream (tok: ITokenizer) (docs: string list) : int[] = tokenStreamWith tok None None docs

/// The first `limit` tokens of the stream (at least; see tokenStreamWith), without encoding past them.
let tokenStreamUpTo (tok: ITokenizer) (limit: int option) (docs: string list) : int[] = tokenStreamWith tok limit None docs
