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

/// Pops candidate merges best first: highest score, then leftmost (run.c's tie rule).
let private bestFirst =
    { new IComparer<struct (float32 * int)> with
        member _.Compare(struct (s1, p1), struct (s2, p2)) =
            if s1 > s2 then -1 elif s1 < s2 then 1 else compare p1 p2 }

/// Shortest stretch of text encoded as one part before a cut is looked for: long enough that the per-part
/// cost vanishes, short enough that a token budget stops soon and progress moves.
let private minPartChars = 512

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
    // Adjacent character pairs that occur inside some piece. A merged token's text is the text it covers,
    // so no token can span two characters that are pieces themselves and whose pair occurs in no piece:
    // the text on either side of such a cut merges independently (see `encodeWhile`).
    let bigrams =
        let h = HashSet<int>()
        for t in text do
            for k in 1 .. t.Length - 1 do h.Add((int t[k - 1] <<< 16) ||| int t[k]) |> ignore
        h
    let isPieceChar (c: char) = not (Char.IsSurrogate c) && lookup.ContainsKey(string c)
    let canCutBefore (s: string) (k: int) =
        isPieceChar s[k - 1] && isPieceChar s[k] && not (bigrams.Contains((int s[k - 1] <<< 16) ||| int s[k]))
    /// "<0xNN>" pieces decode to their byte.
    let byteOf (id: int) =
        let p = text[id]
        if p.Length = 6 && p.StartsWith "<0x" && p.EndsWith ">" then
            match Byte.TryParse(p.AsSpan(3, 2), Globalization.NumberStyles.HexNumber, null) with
            | true, b -> Some b
            | _ -> None
        else None

    /// run.c's merge loop (repeatedly merge the best-scoring adjacent pair, leftmost on ties) in O(n log n):
    /// tokens form a linked list, candidate pairs sit in a heap ordered by (score desc, position asc), and
    /// an entry whose sides have changed since it was pushed is skipped when popped. A token's text only
    /// grows when it merges, so a changed side never matches its old id again.
    let mergeAll (ids: List<int>) (out: List<int>) =
        let n = ids.Count
        let tok = ids.ToArray()
        let next = Array.init n (fun i -> i + 1)
        let prev = Array.init n (fun i -> i - 1)
        let alive = Array.create n true
        let heap = PriorityQueue<struct (int * int * int), struct (float32 * int)>(bestFirst)
        let push i =
            let j = next[i]
            if j < n then
                let struct (id, score) = mergeOf tok[i] tok[j]
                // run.c only merges a pair whose score beats -inf (NaN never does).
                if id >= 0 && score > Single.NegativeInfinity then heap.Enqueue(struct (i, tok[i], tok[j]), struct (score, i))
        for i in 0 .. n - 2 do push i
        let mutable entry = Unchecked.defaultof<_>
        let mutable priority = Unchecked.defaultof<_>
        while heap.TryDequeue(&entry, &priority) do
            let struct (i, a, b) = entry
            let j = next[i]
            if alive[i] && tok[i] = a && j < n && tok[j] = b then
                let struct (id, _) = mergeOf a b
                tok[i] <- id
                alive[j] <- false
                next[i] <- next[j]
                if next[j] < n then prev[next[j]] <- i
                if prev[i] >= 0 then push prev[i]
                push i
        for i in 0 .. n - 1 do
            if alive[i] then out.Add tok[i]

    /// Encodes `s` part by part (cut only where `canCutBefore` holds, after at least minPartChars), merging
    /// each part on its own; merges never cross a cut, so the parts' concatenation is the whole text's
    /// encoding. After each part `keepGoing (charsConsumed, idsSoFar)` may stop the encoding.
    let encodeWhile (s: string) (startDocument: bool) (keepGoing: Func<int, int, bool>) =
        let out = List<int>()
        if startDocument then out.Add bosId
        let part = List<int>()
        if s.Length > 0 then
            match lookup.TryGetValue " " with
            | true, id -> part.Add id
            | _ -> ()
        let mutable partStart = 0
        let mutable i = 0
        let mutable go = true
        while go && i < s.Length do
            if i - partStart >= minPartChars && canCutBefore s i then
                mergeAll part out
                part.Clear()
                partStart <- i
                go <- keepGoing.Invoke(i, out.Count)
            if go then
                let n = if Char.IsHighSurrogate s[i] && i + 1 < s.Length && Char.IsLowSurrogate s[i + 1] then 2 else 1
                let cp = s.Substring(i, n)
                match lookup.TryGetValue cp with
                | true, id -> part.Add id
                | _ -> for b in Encoding.UTF8.GetBytes cp do part.Add(int b + byteFallbackBase)
                i <- i + n
        if go then
            mergeAll part out
            keepGoing.Invoke(s.Length, out.Count) |> ignore
        out.ToArray()

    let always = Func<int, int, bool>(fun _ _ -> true)

    member _.Path = path
    member _.Scores = scores

    interface IIncrementalTokenizer with
        member _.EncodeWhile(s, startDocument, keepGoing) = encodeWhile s startDocument keepGoing

    interface ITokenizer with
        member _.VocabSize = pieces.Length
        member _.DocumentStart = Some bosId
        member _.Description = $"llama2.c tokenizer {Path.GetFileName path} ({pieces.Length} pieces)"
        member _.Piece id = text[id]
        member _.Encode(s, startDocument) = encodeWhile s startDocument always

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
