/// What the pipeline needs from a tokenizer: text → ids with the model's document start, and back.
/// Implementations: Tok512 (llama2.c .bin tokenizers) and ByteLevelBpe (Hugging Face tokenizer.json).
namespace TaylorCalibrate.Pipeline.Text

open System

/// A tokenizer. Encode never adds an end-of-sequence token.
type ITokenizer =
    /// Number of ids (largest id + 1).
    abstract VocabSize: int
    /// The id that starts a document (BOS), if the tokenizer has one.
    abstract DocumentStart: int option
    /// Encodes text; `startDocument` prepends the document-start id (and the dummy-prefix space where the
    /// format has one), as the model saw documents in training.
    abstract Encode: text: string * startDocument: bool -> int[]
    /// Decodes ids to text, dropping control tokens (BOS/EOS/unk, special added tokens).
    abstract Decode: ids: int[] -> string
    /// The text of one id as stored (for diagnostics).
    abstract Piece: id: int -> string
    /// Where the tokenizer came from and what kind it is.
    abstract Description: string

/// A tokenizer that encodes a long text part by part, so that a caller can stop early (a token budget) and
/// show progress. Parts end where no token can span the cut, so every prefix it returns is a prefix of
/// Encode's result, and a run that is never stopped returns Encode's result exactly.
type IIncrementalTokenizer =
    inherit ITokenizer
    /// Encodes like Encode; after each part, `keepGoing (charsConsumed, idsSoFar)` says whether to go on.
    abstract EncodeWhile: text: string * startDocument: bool * keepGoing: Func<int, int, bool> -> int[]
