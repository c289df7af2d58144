/// The straightforward encoders the fast ones replace, kept as references: llama2.c's rescanning merge loop
/// (best score, leftmost on ties, one pair per step) and GPT-2's rank loop (lowest rank, every occurrence
/// merged left to right, rescan). Quadratic in the length of what they merge, so tests give them short or
/// pre-split text.
module TaylorCalibrate.Tests.Text.EncoderReference

open System
open System.Collections.Generic
open System.Text
open TaylorCalibrate.Pipeline.Text

/// run.c's encode() over a loaded llama2.c tokenizer (pieces and scores read back through its interface).
let tok512Encode (t: Tok512.Tok512Tokenizer) (s: string) (startDocument: bool) : int[] =
    let itok = t :> ITokenizer
    let text = Array.init itok.VocabSize itok.Piece
    let lookup = Dictionary<string, int>(StringComparer.Ordinal)
    for i in 0 .. text.Length - 1 do lookup.TryAdd(text[i], i) |> ignore
    let tokens = List<int>()
    if s.Length > 0 then
        match lookup.TryGetValue " " with
        | true, id -> tokens.Add id
        | _ -> ()
    let mutable i = 0
    while i < s.Length do
        let n = if Char.IsHighSurrogate s[i] && i + 1 < s.Length && Char.IsLowSurrogate s[i + 1] then 2 else 1
        let cp = s.Substring(i, n)
        match lookup.TryGetValue cp with
        | true, id -> tokens.Add id
        | _ -> for b in Encoding.UTF8.GetBytes cp do tokens.Add(int b + 3)
        i <- i + n
    let mutable merging = true
    while merging do
        let mutable best = -1
        let mutable bestId = -1
        let mutable bestScore = Single.NegativeInfinity
        for j in 0 .. tokens.Count - 2 do
            match lookup.TryGetValue(text[tokens[j]] + text[tokens[j + 1]]) with
            | true, id when t.Scores[id] > bestScore ->
                best <- j
                bestId <- id
                bestScore <- t.Scores[id]
            | _ -> ()
        if best < 0 then merging <- false
        else
            tokens[best] <- bestId
            tokens.RemoveAt(best + 1)
    if startDocument then tokens.Insert(0, 1)
    tokens.ToArray()

/// GPT-2's merge loop over one byte-mapped pre-token.
let private rankMerge (m: ByteLevelBpe.BpeModel) (word: string) : string list =
    let symbols = List<string>(word |> Seq.map string)
    let mutable go = symbols.Count > 1
    while go do
        let mutable bestRank = Int32.MaxValue
        let mutable best = -1
        for i in 0 .. symbols.Count - 2 do
            match m.MergeRanks.TryGetValue(struct (symbols[i], symbols[i + 1])) with
            | true, r when r < bestRank ->
                bestRank <- r
                best <- i
            | _ -> ()
        if best < 0 then go <- false
        else
            let left, right = symbols[best], symbols[best + 1]
            let mutable i = 0
            while i < symbols.Count - 1 do
                if symbols[i] = left && symbols[i + 1] = right then
                    symbols[i] <- left + right
                    symbols.RemoveAt(i + 1)
                i <- i + 1
            go <- symbols.Count > 1
    List.ofSeq symbols

/// Byte-level BPE encoding of text without added tokens (no normaliser, no prefix space), pre-tokenised by
/// the model's regex ("Isolated": matches and the gaps between them).
let bpeEncodeOrdinary (m: ByteLevelBpe.BpeModel) (text: string) : int[] =
    let out = List<int>()
    let piece (s: string) =
        if s.Length > 0 then
            let mapped = String(Encoding.UTF8.GetBytes s |> Array.map (fun b -> ByteLevelBpe.byteToChar[int b]))
            for sym in rankMerge m mapped do out.Add m.Vocab[sym]
    let mutable last = 0
    for mt in m.Pattern.Matches text do
        piece (text.Substring(last, mt.Index - last))
        piece mt.Value
        last <- mt.Index + mt.Length
    piece (text.Substring last)
    out.ToArray()
