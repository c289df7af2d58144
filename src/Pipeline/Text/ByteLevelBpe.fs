/// Hugging Face tokenizer.json byte-level BPE (GPT-2, Llama-3, Qwen2/3): added/special tokens are split out
/// first; the rest is normalised (NFC where configured), cut by the pre-tokenizer regex, mapped byte-wise
/// to GPT-2's printable byte alphabet, and merged by merge rank. Implemented here rather than with
/// Microsoft.ML.Tokenizers because the pre-tokenizer regex, ignore_merges and the BOS template all come
/// from tokenizer.json and must be honoured exactly. The regex runs on UTF-16 (.NET), so letters outside
/// the Basic Multilingual Plane count as symbols; a rare difference from the Rust implementation. The NFC
/// normaliser (Qwen) uses String.Normalize, which composes nothing under InvariantGlobalization (the
/// project's setting): text already in NFC (nearly all text) is exact, decomposed input is not composed.
module TaylorCalibrate.Pipeline.Text.ByteLevelBpe

open System
open System.Collections.Generic
open System.IO
open System.Text
open System.Text.Json
open System.Text.RegularExpressions
open TaylorCalibrate.Pipeline

/// GPT-2's pre-tokenizer regex (ByteLevel with use_regex = true).
let gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

/// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards.
let byteToChar : char[] =
    let printable b = (b >= int '!' && b <= int '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
    let table = Array.zeroCreate 256
    let mutable next = 256
    for b in 0 .. 255 do
        if printable b then table[b] <- char b
        else
            table[b] <- char next
            next <- next + 1
    table

let private charToByte =
    let d = Dictionary<char, byte>()
    byteToChar |> Array.iteri (fun b c -> d[c] <- byte b)
    d

/// Shortest stretch of text between two chances to stop or report progress.
let private minPartChars = 512

/// An added token (special or not) from tokenizer.json.
type AddedToken = { Id: int; Content: string; Special: bool }

/// Everything the encoder needs, as read from tokenizer.json.
type BpeModel =
    { Vocab: IReadOnlyDictionary<string, int>
      /// (left, right) -> rank; lower merges first.
      MergeRanks: IReadOnlyDictionary<struct (string * string), int>
      Added: AddedToken list
      Pattern: Regex
      Nfc: bool
      AddPrefixSpace: bool
      IgnoreMerges: bool
      /// The token the post-processor puts before a single sequence (Llama-3's <|begin_of_text|>).
      Bos: int option }

/// A byte-level BPE tokenizer.
type ByteLevelBpeTokenizer(path: string, m: BpeModel) =
    let idToToken =
        let size = max (if m.Vocab.Count = 0 then 0 else Seq.max m.Vocab.Values) (m.Added |> List.fold (fun a t -> max a t.Id) -1) + 1
        let a = Array.create size null
        for KeyValue(t, id) in m.Vocab do a[id] <- t
        for t in m.Added do a[t.Id] <- t.Content
        a
    let added = m.Added |> List.map (fun t -> t.Id, t) |> dict
    // Longest first, so "<|endoftext|>" wins over any token that is its prefix.
    let addedByLength = m.Added |> List.sortByDescending (fun t -> t.Content.Length) |> Array.ofList
    let cache = Dictionary<string, int[]>(StringComparer.Ordinal)
    // Qwen's <|endoftext|> separates documents when the tokenizer has no BOS.
    let documentStart =
        match m.Bos with
        | Some b -> Some b
        | None -> m.Added |> List.tryFind (fun t -> t.Content = "<|endoftext|>") |> Option.map (fun t -> t.Id)

    // Added tokens by first character, longest first, so that finding the one at a position looks at a
    // handful of candidates instead of every added token.
    let addedByFirstChar =
        addedByLength
        |> Array.filter (fun t -> t.Content.Length > 0)
        |> Array.groupBy (fun t -> t.Content[0])
        |> dict
    let addedAt (text: string) (i: int) =
        match addedByFirstChar.TryGetValue text[i] with
        | true, candidates ->
            candidates |> Array.tryFind (fun t -> String.CompareOrdinal(text, i, t.Content, 0, t.Content.Length) = 0)
        | _ -> None

    /// Merges one pre-token by rank. Same result as "find the lowest-ranked adjacent pair, merge every
    /// occurrence of it left to right, repeat", in O(n log n): symbols form a linked list and candidate
    /// pairs a heap ordered by (rank, position). One pass takes every entry of the lowest rank and merges
    /// those still current in position order; a merge can only create pairs of other ranks (a pair has one
    /// rank and contains neither of its halves' merged symbol), so the passes match the rescanning loop.
    let mergeByRank (word: string) : List<string> =
        let n = word.Length
        let sym = Array.init n (fun i -> string word[i])
        let next = Array.init n (fun i -> i + 1)
        let prev = Array.init n (fun i -> i - 1)
        let alive = Array.create n true
        let heap = PriorityQueue<struct (int * string * string), struct (int * int)>()
        let push i =
            let j = next[i]
            if j < n then
                match m.MergeRanks.TryGetValue(struct (sym[i], sym[j])) with
                | true, r -> heap.Enqueue(struct (i, sym[i], sym[j]), struct (r, i))
                | _ -> ()
        for i in 0 .. n - 2 do push i
        let pass = List<struct (int * string * string)>()
        let mutable entry = Unchecked.defaultof<_>
        let mutable priority = Unchecked.defaultof<_>
        while heap.Count > 0 do
            heap.TryPeek(&entry, &priority) |> ignore
            let struct (rank, _) = priority
            pass.Clear()
            let mutable more = true
            while more && heap.TryPeek(&entry, &priority) do
                let struct (r, _) = priority
                if r = rank then pass.Add(heap.Dequeue()) else more <- false
            for struct (i, left, right) in pass do
                let j = next[i]
                if alive[i] && j < n && String.Equals(sym[i], left) && String.Equals(sym[j], right) then
                    sym[i] <- left + right
                    alive[j] <- false
                    next[i] <- next[j]
                    if next[j] < n then prev[next[j]] <- i
                    if prev[i] >= 0 then push prev[i]
                    push i
        let out = List<string>()
        for i in 0 .. n - 1 do
            if alive[i] then out.Add sym[i]
        out

    let bpe (word: string) : int[] =
        match cache.TryGetValue word with
        | true, ids -> ids
        | _ ->
            let ids =
                match m.Vocab.TryGetValue word with
                | true, id when m.IgnoreMerges -> [| id |]
                | _ ->
                    mergeByRank word
                    |> Seq.map (fun s ->
                        match m.Vocab.TryGetValue s with
                        | true, id -> id
                        | _ -> invalidOp $"{path}: byte-level symbol '{s}' has no id (incomplete vocabulary)")
                    |> Array.ofSeq
            if cache.Count < 1_000_000 then cache[word] <- ids
            ids

    /// Encodes text without added tokens; pre-tokens are independent, so after every pre-token
    /// `report (charsConsumed)` may stop the encoding (false).
    let encodeOrdinary (text: string) (first: bool) (out: List<int>) (report: int -> bool) : bool =
        let text = if m.Nfc && not (text.IsNormalized NormalizationForm.FormC) then text.Normalize NormalizationForm.FormC else text
        let shift = if m.AddPrefixSpace && first && not (text.StartsWith " ") then 1 else 0
        let text = if shift = 1 then " " + text else text
        let piece (start: int) (length: int) =
            if length > 0 then
                let mapped = String(Encoding.UTF8.GetBytes(text.Substring(start, length)) |> Array.map (fun b -> byteToChar[int b]))
                out.AddRange(bpe mapped)
        // "Isolated" split: matches and the gaps between them are pre-tokens.
        let mutable last = 0
        let mutable go = true
        let mutable mt = m.Pattern.Match text
        while go && mt.Success do
            piece last (mt.Index - last)
            piece mt.Index mt.Length
            last <- mt.Index + mt.Length
            go <- report (max 0 (last - shift))
            mt <- mt.NextMatch()
        if go then piece last (text.Length - last)
        go

    let encodeWhile (text: string) (startDocument: bool) (keepGoing: Func<int, int, bool>) =
        let out = List<int>()
        if startDocument then documentStart |> Option.iter out.Add
        let mutable start = 0
        let mutable segment = 0
        let mutable i = 0
        let mutable go = true
        // The caller hears about every minPartChars or so. Positions inside a segment are relative to it (and
        // to its normalised form, nearly always the same length); clamped so progress never passes the segment.
        let mutable reported = 0
        let report (k: int) =
            if k - reported >= minPartChars then
                reported <- k
                keepGoing.Invoke(k, out.Count)
            else true
        let reportIn segStart segLength = fun (k: int) -> report (segStart + min k segLength)
        while go && i < text.Length do
            match addedAt text i with
            | Some t ->
                go <- encodeOrdinary (text.Substring(start, i - start)) (segment = 0) out (reportIn start (i - start))
                if go then
                    out.Add t.Id
                    segment <- segment + 1
                    i <- i + t.Content.Length
                    start <- i
                    go <- report i
            | None -> i <- i + 1
        if go && encodeOrdinary (text.Substring start) (segment = 0) out (reportIn start (text.Length - start)) then
            keepGoing.Invoke(text.Length, out.Count) |> ignore
        out.ToArray()

    let always = Func<int, int, bool>(fun _ _ -> true)

    member _.Model = m

    interface IIncrementalTokenizer with
        member _.EncodeWhile(text, startDocument, keepGoing) = encodeWhile text startDocument keepGoing

    interface ITokenizer with
        member _.VocabSize = idToToken.Length
        member _.DocumentStart = documentStart
        member _.Description = $"tokenizer.json byte-level BPE {path} ({idToToken.Length} ids, {m.Added.Length} added)"
        member _.Piece id = idToToken[id]

        member _.Encode(text, startDocument) = encodeWhile text startDocument always

        member _.Decode ids =
            let bytes = List<byte>()
            for id in ids do
                if id < 0 || id >= idToToken.Length || isNull idToToken[id] then invalidArg "ids" $"id {id} has no token"
                match added.TryGetValue id with
                | true, t when t.Special -> ()
                | true, t -> bytes.AddRange(Encoding.UTF8.GetBytes t.Content)
                | _ ->
                    for c in idToToken[id] do
                        match charToByte.TryGetValue c with
                        | true, b -> bytes.Add b
                        | _ -> bytes.AddRange(Encoding.UTF8.GetBytes(string c))
            Encoding.UTF8.GetString(bytes.ToArray())

let private prop (o: JsonElement) (name: string) =
    let mutable v = Unchecked.defaultof<JsonElement>
    if o.ValueKind = JsonValueKind.Object && o.TryGetProperty(name, &v) && v.ValueKind <> JsonValueKind.Null then Some v else None

let private str (o: JsonElement) name = prop o name |> Option.filter (fun v -> v.ValueKind = JsonValueKind.String) |> Option.map (fun v -> v.GetString())
let private flag (o: JsonElement) name dflt = match prop o name with Some v when v.ValueKind = JsonValueKind.True -> true | Some v when v.ValueKind = JsonValueKind.False -> false | _ -> dflt

/// Flattens "Sequence" wrappers of normalizers/pre-tokenizers/processors into their parts.
let rec private parts (listName: string) (e: JsonElement) : JsonElement list =
    match str e "type", prop e listName with
    | Some "Sequence", Some items when items.ValueKind = JsonValueKind.Array -> [ for i in items.EnumerateArray() do yield! parts listName i ]
    | _ -> [ e ]

/// Parses a tokenizer.json document.
let parse (path: string) (root: JsonElement) : Result<ByteLevelBpeTokenizer, InputError> =
    let bad why = Error(CorruptFile(path, why))
    match prop root "model" with
    | None -> bad "has no 'model'"
    | Some model ->
    match str model "type" with
    | Some t when t <> "BPE" -> bad $"model type '{t}' is not supported (only byte-level BPE)"
    | _ ->
    match prop model "vocab", prop model "merges" with
    | Some vocab, Some merges when vocab.ValueKind = JsonValueKind.Object && merges.ValueKind = JsonValueKind.Array ->
        let v = Dictionary<string, int>(StringComparer.Ordinal)
        for p in vocab.EnumerateObject() do v[p.Name] <- p.Value.GetInt32()
        let ranks = Dictionary<struct (string * string), int>()
        let mutable problem = None
        let mutable rank = 0
        for mg in merges.EnumerateArray() do
            let pair =
                match mg.ValueKind with
                | JsonValueKind.String ->
                    let s = mg.GetString()
                    let k = s.IndexOf ' '
                    if k > 0 then Some(s.Substring(0, k), s.Substring(k + 1)) else None
                | JsonValueKind.Array when mg.GetArrayLength() = 2 -> Some(mg[0].GetString(), mg[1].GetString())
                | _ -> None
            match pair with
            | Some(a, b) -> ranks.TryAdd(struct (a, b), rank) |> ignore
            | None -> problem <- Some $"merge {rank} is neither \"a b\" nor [a, b]: {mg.GetRawText()}"
            rank <- rank + 1
        let added =
            match prop root "added_tokens" with
            | Some a when a.ValueKind = JsonValueKind.Array ->
                [ for t in a.EnumerateArray() do
                    match prop t "id", str t "content" with
                    | Some id, Some c -> { Id = id.GetInt32(); Content = c; Special = flag t "special" false }
                    | _ -> () ]
            | _ -> []
        let normalizers = prop root "normalizer" |> Option.map (parts "normalizers") |> Option.defaultValue []
        let nfc = normalizers |> List.exists (fun n -> str n "type" = Some "NFC")
        let unsupportedNorm = normalizers |> List.tryPick (fun n -> match str n "type" with Some "NFC" | None -> None | Some t -> Some t)
        let pre = prop root "pre_tokenizer" |> Option.map (parts "pretokenizers") |> Option.defaultValue []
        let byteLevel = pre |> List.tryFind (fun p -> str p "type" = Some "ByteLevel")
        let split =
            pre |> List.tryPick (fun p ->
                if str p "type" = Some "Split" then prop p "pattern" |> Option.bind (fun pat -> str pat "Regex") else None)
        let pattern =
            match split, byteLevel with
            | Some rx, _ -> Some rx
            | None, Some bl when flag bl "use_regex" true -> Some gpt2Pattern
            | _ -> None
        let bos =
            let post = prop root "post_processor" |> Option.map (parts "processors") |> Option.defaultValue []
            post |> List.tryPick (fun p ->
                match str p "type", prop p "single" with
                | Some "TemplateProcessing", Some single when single.ValueKind = JsonValueKind.Array ->
                    single.EnumerateArray()
                    |> Seq.takeWhile (fun item -> (prop item "Sequence").IsNone)
                    |> Seq.tryPick (fun item -> prop item "SpecialToken" |> Option.bind (fun st -> str st "id"))
                | _ -> None)
            |> Option.bind (fun content ->
                match added |> List.tryFind (fun t -> t.Content = content) with
                | Some t -> Some t.Id
                | None -> match v.TryGetValue content with | true, id -> Some id | _ -> None)
        match problem, unsupportedNorm, byteLevel, pattern with
        | Some p, _, _, _ -> bad p
        | _, Some n, _, _ -> bad $"normalizer '{n}' is not supported (only NFC)"
        | _, _, None, _ -> bad "pre_tokenizer is not byte-level (needs a ByteLevel step)"
        | _, _, _, None -> bad "pre_tokenizer has no split regex"
        | None, None, Some bl, Some rx ->
            let regex =
                try Ok(Regex(rx, RegexOptions.Compiled ||| RegexOptions.CultureInvariant))
                with :? ArgumentException as e -> bad $"pre-tokenizer regex does not compile in .NET ({e.Message})"
            regex |> Result.map (fun regex ->
                ByteLevelBpeTokenizer(path,
                    { Vocab = v; MergeRanks = ranks; Added = added; Pattern = regex; Nfc = nfc
                      AddPrefixSpace = flag bl "add_prefix_space" false; IgnoreMerges = flag model "ignore_merges" false
                      Bos = bos }))
    | _ -> bad "model has no 'vocab' object and 'merges' array"

/// Loads a tokenizer.json file.
let load (path: string) : Result<ByteLevelBpeTokenizer, InputError> =
    if not (File.Exists path) then Error(FileNotFound path) else
    try
        use doc = JsonDocument.Parse(File.ReadAllText path)
        parse path doc.RootElement
    with :? JsonException as e -> Error(CorruptFile(path, $"not valid JSON ({e.Message})"))
