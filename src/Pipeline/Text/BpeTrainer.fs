/// Trains a byte-level BPE (GPT-2 style) and writes it as a Hugging Face tokenizer.json that ByteLevelBpe
/// reads. Text is split into documents at `<|endoftext|>`, each document is pre-tokenised by GPT-2's regex
/// and mapped to GPT-2's byte alphabet exactly as ByteLevelBpe encodes, and pre-tokens are counted. Then,
/// until the vocabulary is full, the most frequent adjacent pair (summed over pre-token counts) is merged
/// everywhere. Ties go to the smallest (left id, right id), ids being 0..255 for bytes in byte order and
/// 256.. for merges in the order learned, so training is deterministic. Pair counts are kept incrementally:
/// a merge only recounts the pre-tokens that hold the pair (an index from pair to pre-tokens), and the best
/// pair comes from a heap whose outdated entries are skipped when popped.
/// The vocabulary is the 256 bytes, the merges, and one special token, `<|endoftext|>`, which the
/// post-processor puts before every sequence: it is the document start (BOS) of our data convention.
module TaylorCalibrate.Pipeline.Text.BpeTrainer

open System
open System.Collections.Generic
open System.IO
open System.Text
open System.Text.Json
open System.Text.RegularExpressions
open TaylorCalibrate.Pipeline

/// The special token that starts every document (and separates documents in story files).
let documentStartToken = "<|endoftext|>"

/// The result of training.
type TrainedBpe =
    { /// Token strings in GPT-2's byte alphabet, by id (bytes, then merges); the special token comes after.
      Tokens: string[]
      /// Merges in rank order (left, right).
      Merges: (string * string)[]
      /// Id of `<|endoftext|>`: the last id.
      DocumentStart: int }

/// Progress: merges learned of those wanted.
type TrainProgress = { Merges: int; Wanted: int }

let private pattern = Regex(ByteLevelBpe.gpt2Pattern, RegexOptions.Compiled ||| RegexOptions.CultureInvariant)

/// Pre-token counts of the documents: byte-alphabet strings and how often each occurs.
let countPreTokens (documents: string seq) : Dictionary<string, int64> =
    let counts = Dictionary<string, int64>(StringComparer.Ordinal)
    let add (s: string) =
        if s.Length > 0 then
            let mapped = String(Encoding.UTF8.GetBytes s |> Array.map (fun b -> ByteLevelBpe.byteToChar[int b]))
            match counts.TryGetValue mapped with
            | true, n -> counts[mapped] <- n + 1L
            | _ -> counts[mapped] <- 1L
    for d in documents do
        // "Isolated" split as the reader does: matches and the gaps between them.
        let mutable last = 0
        let mutable mt = pattern.Match d
        while mt.Success do
            add (d.Substring(last, mt.Index - last))
            add mt.Value
            last <- mt.Index + mt.Length
            mt <- mt.NextMatch()
        add (d.Substring last)
    counts

/// Orders heap entries: higher count first, then smaller (left, right).
let private byCountThenIds =
    { new IComparer<struct (int64 * int * int)> with
        member _.Compare(struct (c1, l1, r1), struct (c2, l2, r2)) =
            if c1 <> c2 then compare c2 c1
            elif l1 <> l2 then compare l1 l2
            else compare r1 r2 }

/// Learns merges from pre-token counts until the vocabulary (bytes + merges + the special token) has
/// `vocabSize` entries or no pair occurs any more.
let trainOnCounts (vocabSize: int) (progress: IProgress<TrainProgress> option) (counts: Dictionary<string, int64>) : TrainedBpe =
    if vocabSize < 257 then invalidArg "vocabSize" $"a byte-level BPE needs at least 257 tokens, not {vocabSize}"
    let tokens = List<string>(ByteLevelBpe.byteToChar |> Array.map string)
    let idOf = Dictionary<string, int>(StringComparer.Ordinal)
    tokens |> Seq.iteri (fun i t -> idOf[t] <- i)
    let byteId = Dictionary<char, int>()
    ByteLevelBpe.byteToChar |> Array.iteri (fun b c -> byteId[c] <- b)
    // Pre-tokens in ordinal order (dictionary order is an implementation detail), as symbol-id lists.
    let entries = counts |> Seq.sortWith (fun a b -> String.CompareOrdinal(a.Key, b.Key)) |> Array.ofSeq
    let words = entries |> Array.map (fun kv -> List<int>(kv.Key |> Seq.map (fun c -> byteId[c])))
    let freq = entries |> Array.map (fun kv -> kv.Value)
    let pairCount = Dictionary<struct (int * int), int64>()
    let where = Dictionary<struct (int * int), HashSet<int>>()
    let heap = PriorityQueue<struct (int * int), struct (int64 * int * int)>(byCountThenIds)
    let changed = HashSet<struct (int * int)>()
    let addPairs (w: int) (sign: int64) =
        let s = words[w]
        for i in 0 .. s.Count - 2 do
            let p = struct (s[i], s[i + 1])
            let c = (match pairCount.TryGetValue p with | true, c -> c | _ -> 0L) + sign * freq[w]
            pairCount[p] <- c
            if sign > 0L then
                match where.TryGetValue p with
                | true, set -> set.Add w |> ignore
                | _ -> where[p] <- HashSet<int>([ w ])
            changed.Add p |> ignore
    let pushChanged () =
        for p in changed do
            let c = pairCount[p]
            let struct (l, r) = p
            if c > 0L then heap.Enqueue(p, struct (c, l, r))
        changed.Clear()
    for w in 0 .. words.Length - 1 do addPairs w 1L
    pushChanged ()
    let merges = List<string * string>()
    let wanted = vocabSize - 257
    let mutable finished = false
    while not finished && tokens.Count < vocabSize - 1 do
        let mutable p = Unchecked.defaultof<_>
        let mutable prio = Unchecked.defaultof<_>
        if not (heap.TryDequeue(&p, &prio)) then finished <- true
        else
            let struct (c, l, r) = prio
            // An entry is current when the pair's count is still what it was pushed with; a lower count has
            // been pushed again since (pushChanged), a higher one too.
            if pairCount[p] = c then
                let merged = tokens[l] + tokens[r]
                let id =
                    match idOf.TryGetValue merged with
                    | true, id -> id     // the same string from another pair: one token, two merges
                    | _ ->
                        tokens.Add merged
                        idOf[merged] <- tokens.Count - 1
                        tokens.Count - 1
                merges.Add((tokens[l], tokens[r]))
                for w in where[p] |> Array.ofSeq |> Array.sort do
                    let s = words[w]
                    // Only pre-tokens that still hold the pair change (the index keeps stale members).
                    let mutable holds = false
                    for i in 0 .. s.Count - 2 do
                        if s[i] = l && s[i + 1] = r then holds <- true
                    if holds then
                        addPairs w -1L
                        let mutable i = 0
                        while i < s.Count - 1 do
                            if s[i] = l && s[i + 1] = r then
                                s[i] <- id
                                s.RemoveAt(i + 1)
                            i <- i + 1
                        addPairs w 1L
                pushChanged ()
                progress |> Option.iter (fun pr -> if merges.Count % 64 = 0 then pr.Report { Merges = merges.Count; Wanted = wanted })
    progress |> Option.iter (fun pr -> pr.Report { Merges = merges.Count; Wanted = wanted })
    { Tokens = tokens.ToArray(); Merges = merges.ToArray(); DocumentStart = tokens.Count }

/// Trains on documents (text already split at `<|endoftext|>`; see Corpus.documents).
let train (vocabSize: int) (progress: IProgress<TrainProgress> option) (documents: string seq) : TrainedBpe =
    trainOnCounts vocabSize progress (countPreTokens documents)

/// The tokenizer.json text: byte-level pre-tokenizer and decoder (GPT-2 regex, no prefix space), the BPE
/// model (vocab, merges as "left right": byte-alphabet tokens never hold a space), and `<|endoftext|>` as
/// a special added token that the template post-processor puts first.
let toJson (t: TrainedBpe) : string =
    use ms = new MemoryStream()
    (
        use w = new Utf8JsonWriter(ms, JsonWriterOptions(Indented = true, Encoder = Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping))
        let special = documentStartToken
        w.WriteStartObject()
        w.WriteString("version", "1.0")
        w.WriteNull "truncation"
        w.WriteNull "padding"
        w.WriteStartArray "added_tokens"
        w.WriteStartObject()
        w.WriteNumber("id", t.DocumentStart)
        w.WriteString("content", special)
        for f in [ "single_word"; "lstrip"; "rstrip"; "normalized" ] do w.WriteBoolean(f, false)
        w.WriteBoolean("special", true)
        w.WriteEndObject()
        w.WriteEndArray()
        w.WriteNull "normalizer"
        let byteLevel (name: string) =
            w.WriteStartObject name
            w.WriteString("type", "ByteLevel")
            w.WriteBoolean("add_prefix_space", false)
            w.WriteBoolean("trim_offsets", true)
            w.WriteBoolean("use_regex", true)
            w.WriteEndObject()
        byteLevel "pre_tokenizer"
        w.WriteStartObject "post_processor"
        w.WriteString("type", "TemplateProcessing")
        let item (kind: string) (id: string) =
            w.WriteStartObject()
            w.WriteStartObject kind
            w.WriteString("id", id)
            w.WriteNumber("type_id", 0)
            w.WriteEndObject()
            w.WriteEndObject()
        w.WriteStartArray "single"
        item "SpecialToken" special
        item "Sequence" "A"
        w.WriteEndArray()
        w.WriteStartArray "pair"
        item "SpecialToken" special
        item "Sequence" "A"
        item "SpecialToken" special
        item "Sequence" "B"
        w.WriteEndArray()
        w.WriteStartObject "special_tokens"
        w.WriteStartObject special
        w.WriteString("id", special)
        w.WriteStartArray "ids"
        w.WriteNumberValue t.DocumentStart
        w.WriteEndArray()
        w.WriteStartArray "tokens"
        w.WriteStringValue special
        w.WriteEndArray()
        w.WriteEndObject()
        w.WriteEndObject()
        w.WriteEndObject()
        byteLevel "decoder"
        w.WriteStartObject "model"
        w.WriteString("type", "BPE")
        w.WriteNull "dropout"
        w.WriteNull "unk_token"
        w.WriteNull "continuing_subword_prefix"
        w.WriteNull "end_of_word_suffix"
        w.WriteBoolean("fuse_unk", false)
        w.WriteBoolean("byte_fallback", false)
        w.WriteBoolean("ignore_merges", false)
        w.WriteStartObject "vocab"
        t.Tokens |> Array.iteri (fun i tok -> w.WriteNumber(tok, i))
        w.WriteEndObject()
        w.WriteStartArray "merges"
        for l, r in t.Merges do w.WriteStringValue(l + " " + r)
        w.WriteEndArray()
        w.WriteEndObject()
        w.WriteEndObject()
    )
    Encoding.UTF8.GetString(ms.ToArray())

/// Writes tokenizer.json atomically.
let save (path: string) (t: TrainedBpe) = Io.AtomicFile.writeText path (toJson t)

/// Checks a --bpe-vocab value: bytes, at least one merge, and the special token.
let checkVocabSize (option: string) (n: int) : Result<int, InputError> =
    if n < 258 then Error(InvalidOption(option, $"must be at least 258 (256 bytes, one merge and {documentStartToken}), not {n}"))
    else Ok n
