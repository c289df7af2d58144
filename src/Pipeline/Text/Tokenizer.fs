/// What the pipeline needs from a tokenizer: text → ids with the model's document start, and back.
/// Implementations: Tok512 (llama2.c .bin tokenizers) and ByteLevelBpe (Hugging Face tokenizer.json).
namespace TaylorCalibrate.Pipeline.Text

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
