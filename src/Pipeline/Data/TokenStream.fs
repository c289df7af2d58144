/// The training data stream: documents encoded with their document start (as Corpus encodes evaluation
/// text), concatenated and cut into rows of T+1 tokens (T inputs, and the same shifted by one as targets;
/// row r covers tokens r·T .. r·T+T, so neighbouring rows share one token). The last partial row of an
/// epoch is dropped. Epoch e reads the rows in an order fixed by (seed, e): as stored, with the documents
/// permuted before concatenation, or with the rows permuted. The stream is immutable; a Position says
/// where a reader is, so reading is a pure function of (stream, position) and a checkpoint that stores the
/// position resumes exactly. Data convention: docs/method.md (Distillation, data).
namespace TaylorCalibrate.Pipeline.Data

open System
open System.Text.Json
open TaylorCalibrate.Pipeline

/// How an epoch orders the rows.
type ShuffleMode =
    /// The corpus order.
    | InOrder
    /// Documents permuted per epoch, then concatenated and cut.
    | ShuffleDocuments
    /// Rows of the corpus-order concatenation permuted per epoch.
    | ShuffleRows

/// What a stream is, apart from its documents.
type StreamSpec =
    { /// T: input tokens per row (rows hold T+1).
      SeqLen: int
      Shuffle: ShuffleMode
      Seed: uint64 }

/// Where a reader of a stream is: the next row to read is row `Row` of epoch `Epoch` (0-based). `Stream`
/// is the fingerprint of the stream it belongs to, so that a position is never applied to other data.
type Position = { Stream: uint64; Epoch: int; Row: int64 }

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose output depends only on the seed, the same
/// on every runtime (System.Random's seeded sequence is an implementation detail).
type private SplitMix64(seed: uint64) =
    let mutable state = seed
    member _.Next() =
        state <- state + 0x9E3779B97F4A7C15UL
        let mutable z = state
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z ^^^ (z >>> 31)
    /// Uniform in [0, n) by rejection (no modulo bias).
    member this.Below(n: int64) =
        let n = uint64 n
        let limit = UInt64.MaxValue - UInt64.MaxValue % n
        let mutable x = this.Next()
        while x >= limit do x <- this.Next()
        int64 (x % n)

/// A token stream over encoded documents. Build it with TokenStream.create.
type TokenStream internal (spec: StreamSpec, documents: int[][], fingerprint: uint64) =
    let total = documents |> Array.sumBy (fun d -> int64 d.Length)
    let rows = if total < 1L then 0L else (total - 1L) / int64 spec.SeqLen
    let inOrderStarts = documents |> Array.scan (fun acc d -> acc + int64 d.Length) 0L
    // The order of the last epoch asked for, kept because reading walks an epoch row by row.
    let mutable cachedEpoch = -1
    let mutable cachedOrder : int[] = [||]        // document or row permutation of that epoch
    let mutable cachedStarts : int64[] = [||]     // document start offsets in that epoch's concatenation
    let permutation (epoch: int) (n: int) =
        // Fisher–Yates driven by SplitMix64 seeded with (seed, epoch).
        let rng = SplitMix64(spec.Seed * 0x100000001B3UL + uint64 epoch + 1UL)
        let p = Array.init n id
        for i in n - 1 .. -1 .. 1 do
            let j = int (rng.Below(int64 (i + 1)))
            let t = p[i]
            p[i] <- p[j]
            p[j] <- t
        p
    let epochOrder (epoch: int) =
        if epoch <> cachedEpoch then
            match spec.Shuffle with
            | InOrder -> cachedOrder <- [||]; cachedStarts <- inOrderStarts
            | ShuffleRows -> cachedOrder <- permutation epoch (int rows); cachedStarts <- inOrderStarts
            | ShuffleDocuments ->
                let order = permutation epoch documents.Length
                cachedOrder <- order
                cachedStarts <- order |> Array.scan (fun acc d -> acc + int64 documents[d].Length) 0L
            cachedEpoch <- epoch
    /// Copies tokens [start, start + count) of the epoch's concatenation into dst.
    let copyTokens (docOf: int -> int) (starts: int64[]) (start: int64) (dst: int[]) =
        // The document holding `start`: the last one whose start offset is <= start.
        let mutable k = Array.BinarySearch(starts, start)
        if k < 0 then k <- ~~~k - 1
        let mutable filled = 0
        let mutable pos = start
        while filled < dst.Length do
            // Skip empty documents (starts equal).
            while starts[k + 1] <= pos do k <- k + 1
            let d = documents[docOf k]
            let within = int (pos - starts[k])
            let n = min (d.Length - within) (dst.Length - filled)
            Array.blit d within dst filled n
            filled <- filled + n
            pos <- pos + int64 n

    member _.Spec = spec
    /// Encoded tokens over all documents.
    member _.Tokens = total
    member _.Documents = documents.Length
    /// Rows per epoch.
    member _.Rows = rows
    /// T + 1.
    member _.RowLength = spec.SeqLen + 1
    member _.Fingerprint = fingerprint

    /// Row `row` of epoch `epoch` (T+1 tokens, a fresh array).
    member _.RowAt(epoch: int, row: int64) : int[] =
        if row < 0L || row >= rows then invalidArg "row" $"row {row} is outside [0, {rows})"
        if epoch < 0 then invalidArg "epoch" $"epoch {epoch} is negative"
        lock documents (fun () ->
            epochOrder epoch
            let dst = Array.zeroCreate (spec.SeqLen + 1)
            match spec.Shuffle with
            | InOrder -> copyTokens id cachedStarts (row * int64 spec.SeqLen) dst
            | ShuffleRows -> copyTokens id cachedStarts (int64 cachedOrder[int row] * int64 spec.SeqLen) dst
            | ShuffleDocuments ->
                let order = cachedOrder
                copyTokens (fun k -> order[k]) cachedStarts (row * int64 spec.SeqLen) dst
            dst)

module Position =
    /// A position as integers, for a checkpoint's tensor store: [| format; stream; epoch; row |].
    let toInt64s (p: Position) : int64[] = [| 1L; int64 p.Stream; int64 p.Epoch; p.Row |]

    /// The inverse of toInt64s.
    let ofInt64s (a: int64[]) : Result<Position, string> =
        match a with
        | [| 1L; s; e; r |] when e >= 0L && e <= int64 Int32.MaxValue && r >= 0L -> Ok { Stream = uint64 s; Epoch = int e; Row = r }
        | _ ->
            let shown = a |> Array.map string |> String.concat ", "
            Error $"stream position must be [1, stream, epoch >= 0, row >= 0], not [{shown}]"

    /// A position as JSON: {"stream":"<16 hex digits>","epoch":E,"row":R}.
    let toJson (p: Position) : string =
        JsonSerializer.Serialize({| stream = p.Stream.ToString "x16"; epoch = p.Epoch; row = p.Row |})

    /// The inverse of toJson.
    let ofJson (json: string) : Result<Position, string> =
        try
            use doc = JsonDocument.Parse json
            let r = doc.RootElement
            let s = r.GetProperty("stream").GetString()
            let e = r.GetProperty("epoch").GetInt32()
            let row = r.GetProperty("row").GetInt64()
            if e < 0 || row < 0L then Error $"stream position {json}: epoch and row must be >= 0"
            else Ok { Stream = UInt64.Parse(s, Globalization.NumberStyles.HexNumber); Epoch = e; Row = row }
        with
        | :? JsonException | :? Collections.Generic.KeyNotFoundException | :? InvalidOperationException | :? FormatException | :? OverflowException as ex ->
            Error $"stream position {json}: {ex.Message}"

module TokenStream =
    /// FNV-1a over the spec and every document's length and tokens: equal only for the same data read the
    /// same way.
    let private fingerprintOf (spec: StreamSpec) (documents: int[][]) =
        let mutable h = 0xCBF29CE484222325UL
        let mix (x: uint64) =
            h <- (h ^^^ x) * 0x100000001B3UL
        mix (uint64 spec.SeqLen)
        mix (match spec.Shuffle with InOrder -> 0UL | ShuffleDocuments -> 1UL | ShuffleRows -> 2UL)
        mix spec.Seed
        mix (uint64 documents.Length)
        for d in documents do
            mix (uint64 d.Length)
            for t in d do mix (uint64 (uint32 t))
        h

    /// A stream over encoded documents (each with its document start, as Corpus.encodeDocuments gives).
    /// Fails, naming `what`, when the documents hold fewer than one row of T+1 tokens.
    let create (what: string) (spec: StreamSpec) (documents: int[][]) : Result<TokenStream, InputError> =
        let total = documents |> Array.sumBy (fun d -> int64 d.Length)
        if spec.SeqLen < 1 then Error(InvalidOption("--seq-len", $"must be at least 1, not {spec.SeqLen}"))
        elif total < int64 spec.SeqLen + 1L then
            Error(InvalidOption(what, $"gives {total} tokens, fewer than one row of {spec.SeqLen + 1} (sequence length {spec.SeqLen} + 1)"))
        elif spec.Shuffle = ShuffleRows && (total - 1L) / int64 spec.SeqLen > int64 Int32.MaxValue then
            Error(InvalidOption(what, "has too many rows to shuffle by rows; shuffle by documents"))
        else Ok(TokenStream(spec, Array.map Array.copy documents, fingerprintOf spec documents))

    /// The first position of the stream.
    let start (s: TokenStream) : Position = { Stream = s.Fingerprint; Epoch = 0; Row = 0L }

    /// The position `n` rows after `p` (across epochs): seeking, equal to reading n rows and dropping them.
    let advance (s: TokenStream) (p: Position) (n: int64) : Position =
        if n < 0L then invalidArg "n" "cannot move backwards"
        let abs = p.Row + n
        { p with Epoch = p.Epoch + int (abs / s.Rows); Row = abs % s.Rows }

    /// Checks that a stored position belongs to this stream and lies inside it.
    let check (s: TokenStream) (p: Position) : Result<Position, string> =
        if p.Stream <> s.Fingerprint then
            Error $"the position belongs to another stream (fingerprint {p.Stream:x16}, this data and settings give {s.Fingerprint:x16})"
        elif p.Row < 0L || p.Row >= s.Rows || p.Epoch < 0 then Error $"position epoch {p.Epoch}, row {p.Row} is outside the stream's {s.Rows} rows per epoch"
        else Ok p

    /// The row at `p` and the position after it.
    let next (s: TokenStream) (p: Position) : int[] * Position =
        s.RowAt(p.Epoch, p.Row), advance s p 1L

    /// `b` rows from `p`, row-major (B, T+1), and the position after them.
    let batch (s: TokenStream) (p: Position) (b: int) : int[] * Position =
        let out = Array.zeroCreate (b * s.RowLength)   // (B, T+1)
        let mutable q = p
        for i in 0 .. b - 1 do
            let row, q' = next s q
            Array.blit row 0 out (i * s.RowLength) s.RowLength
            q <- q'
        out, q

    /// Encodes the documents with their document starts (progress over characters) and builds the stream.
    let ofDocuments (what: string) (tok: TaylorCalibrate.Pipeline.Text.ITokenizer) (spec: StreamSpec)
                    (progress: IProgress<TaylorCalibrate.Pipeline.Text.Corpus.EncodeProgress> option) (docs: Document[]) =
        let encoded = TaylorCalibrate.Pipeline.Text.Corpus.encodeDocuments tok progress (docs |> Seq.map (fun d -> d.Text))
        create what spec encoded
