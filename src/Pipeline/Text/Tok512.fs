/// The llama2.c tokenizer format (tokenizer.bin / tok512.bin; karpathy/llama2.c run.c): int32 max piece
/// length, then per id a float32 score, an int32 byte length and the UTF-8 bytes. Sentencepiece-style:
/// ids 0 <unk>, 1 BOS, 2 EOS, 3..258 byte fallback <0x00>..<0xFF>. Encoding follows run.c's encode()
/// exactly: BOS, a dummy-prefix " " for non-empty text, each UTF-8 code point to its piece (else one
/// byte-fallback id per byte), then repeatedly merge the adjacent pair whose concatenation is a piece with
/// the highest score (leftmost on ties).
module TaylorCalibrate.Pipeline.Text.Tok512

open System
open System.Collections.Generic
open System.IO
open System.Text
open TaylorCalibrate.Pipeline

let private bosId = 1
let private eosId = 2
let private byteFallbackBase = 3

/// A loaded llama2.c tokenizer.
type Tok512Tokenizer(path: string, pieces: byte[][], scores: float32[]) =
    let text = pieces |> Array.map (fun b -> Encoding.UTF8.GetString b)
    // run.c looks pieces up by binary search in a sorted copy; on duplicates the first id is kept here.
    let lookup =
        let d = Dictionary<string, int>(StringComparer.Ordinal)
        for i in 0 .. text.Length - 1 do d.TryAdd(text[i], i) |> ignore
        d
    // (left id, right id) -> (merged id or -1, its score): the pair lookups of the merge loop, cached.
    let merges = Dictionary<struct (int * int), struct (int * float32)>()
    let mergeOf (a: int) (b: int) =
        let key = struct (a, b)
        match merges.TryGetValue key with
        | true, r -> r
        | _ ->
            let r =
                match lookup.TryGetValue(text[a] + text[b]) with
                | true, id -> struct (id, scores[id])
                | _ -> struct (-1, Single.NegativeInfinity)
            merges[key] <- r
            r
    /// "<0xNN>" pieces decode to their byte.
    let byteOf (id: int) =
        let p = text[id]
        if p.Length = 6 && p.StartsWith "<0x" && p.EndsWith ">" then
            match Byte.TryParse(p.AsSpan(3, 2), Globalization.NumberStyles.HexNumber, null) with
            | true, b -> Some b
            | _ -> None
        else None

    member _.Path = path
    member _.Scores = scores

    interface ITokenizer with
        member _.VocabSize = pieces.Length
        member _.DocumentStart = Some bosId
        member _.Description = $"llama2.c tokenizer {Path.GetFileName path} ({pieces.Length} pieces)"
        member _.Piece id = text[id]

        member _.Encode(s, startDocument) =
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
                | _ -> for b in Encoding.UTF8.GetBytes cp do tokens.Add(int b + byteFallbackBase)
                i <- i + n
            // Pair scores are kept per position and only the two pairs next to a merge are recomputed, so a
            // merge costs one scan for the maximum instead of a dictionary lookup per pair.
            let pairId = List<int>()
            let pairScore = List<float32>()
            for j in 0 .. tokens.Count - 2 do
                let struct (id, score) = mergeOf tokens[j] tokens[j + 1]
                pairId.Add id
                pairScore.Add score
            let mutable merging = true
            while merging do
                let mutable best = -1
                let mutable bestScore = Single.NegativeInfinity
                for j in 0 .. pairScore.Count - 1 do
                    if pairId[j] >= 0 && pairScore[j] > bestScore then
                        best <- j
                        bestScore <- pairScore[j]
                if best < 0 then merging <- false
                else
                    tokens[best] <- pairId[best]
                    tokens.RemoveAt(best + 1)
                    pairId.RemoveAt best
                    pairScore.RemoveAt best
                    let refresh j =
                        if j >= 0 && j < pairId.Count then
                            let struct (id, score) = mergeOf tokens[j] tokens[j + 1]
                            pairId[j] <- id
                            pairScore[j] <- score
                    refresh (best - 1)
                    refresh best
            if startDocument then tokens.Insert(0, bosId)
            tokens.ToArray()

        member _.Decode ids =
            let bytes = List<byte>()
            let mutable prev = -1
            for id in ids do
                if id < 0 || id >= pieces.Length then invalidArg "ids" $"id {id} is outside the vocabulary [0, {pieces.Length})"
                if id > eosId then
                    match byteOf id with
                    | Some b -> bytes.Add b
                    | None ->
                        let p = pieces[id]
                        // run.c drops the dummy-prefix space of the first piece after BOS.
                        let skip = if prev = bosId && p.Length > 0 && p[0] = byte ' ' then 1 else 0
                        for k in skip .. p.Length - 1 do bytes.Add p[k]
                prev <- id
            Encoding.UTF8.GetString(bytes.ToArray())

/// Reads a tokenizer file; every remaining byte must belong to a complete piece.
let load (path: string) : Result<Tok512Tokenizer, InputError> =
    if not (File.Exists path) then Error(FileNotFound path) else
    let bytes = File.ReadAllBytes path
    let bad why = Error(CorruptFile(path, why + " (not a llama2.c tokenizer?)"))
    if bytes.Length < 4 then bad "too short for the max-piece-length header" else
    let maxLen = BitConverter.ToInt32(bytes, 0)
    let pieces = List<byte[]>()
    let scores = List<float32>()
    let mutable pos = 4
    let mutable problem = None
    while problem.IsNone && pos < bytes.Length do
        if pos + 8 > bytes.Length then problem <- Some $"piece {pieces.Count} is truncated at byte {pos}"
        else
            let score = BitConverter.ToSingle(bytes, pos)
            let len = BitConverter.ToInt32(bytes, pos + 4)
            if len < 0 || len > maxLen || pos + 8 + len > bytes.Length then
                problem <- Some $"piece {pieces.Count} has length {len} (max {maxLen}, {bytes.Length - pos - 8} bytes left)"
            else
                scores.Add score
                pieces.Add(bytes[pos + 8 .. pos + 7 + len])
                pos <- pos + 8 + len
    match problem with
    | Some p -> bad p
    | None when pieces.Count < byteFallbackBase + 256 -> bad $"has {pieces.Count} pieces, fewer than the 259 control and byte pieces"
    | None -> Ok(Tok512Tokenizer(path, pieces.ToArray(), scores.ToArray()))
