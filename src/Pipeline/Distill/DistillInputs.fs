/// The inputs of a distillation run, loaded and checked before any work (each problem an InputError naming
/// the file or option): the student directory (config and tensors must agree, StudentIo.load), the teacher
/// it was converted from (same shape, same copied weights), the training token stream (at least one row of
/// T+1 tokens), and the held-out evaluation set. The calibration text the student was converted on (when its
/// convert report names one) and the training text must share no document with the evaluation text
/// (docs/method.md §11b), checked with Calibration.overlap.
module TaylorCalibrate.Pipeline.Distill.DistillInputs

open System
open System.IO
open System.Security.Cryptography
open System.Text.Json
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// Where the inputs come from.
type DistillSources =
    { StudentDir: string
      TeacherPath: string
      TrainTexts: string list
      EvalText: string option
      SeqLen: int
      /// Seed of the training stream's document shuffle.
      Seed: uint64
      /// Evaluate at most this many held-out tokens (None: the whole text).
      EvalMaxTokens: int option }

/// The loaded, checked inputs.
type Inputs =
    { Sources: DistillSources
      Teacher: Teacher
      Student: Student
      TokenizerPath: string
      Tokenizer: ITokenizer
      /// The training rows (documents shuffled per epoch).
      Train: TokenStream
      /// The held-out set (Perplexity protocol, window min(2048, context)).
      Eval: Perplexity.EvalSet option
      /// SHA-256 of the teacher's embedding: the fingerprint of the weights a student copies.
      TeacherFingerprint: string }

/// Name of the provenance file a distilled student directory carries.
let provenanceFile = "distill.json"

/// SHA-256 (hex) of an fp32 array's bytes.
let sha256 (a: float32[]) =
    let bytes = Array.zeroCreate<byte> (a.Length * 4)
    Buffer.BlockCopy(a, 0, bytes, 0, bytes.Length)
    Convert.ToHexString(SHA256.HashData bytes).ToLowerInvariant()

/// SHA-256 (hex) over several fp32 arrays in order.
let sha256Many (arrays: float32[] seq) =
    use h = IncrementalHash.CreateHash HashAlgorithmName.SHA256
    for a in arrays do
        let bytes = Array.zeroCreate<byte> (a.Length * 4)
        Buffer.BlockCopy(a, 0, bytes, 0, bytes.Length)
        h.AppendData bytes
    Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant()

/// The teacher fingerprint a student directory records: its provenance file's (a Stage-2 student has trained
/// its embedding), else the SHA-256 of its own embedding, which convert copied from the teacher.
let recordedTeacherFingerprint (dir: string) (s: Student) =
    let p = Path.Combine(dir, provenanceFile)
    let recorded =
        if File.Exists p then
            try
                use doc = JsonDocument.Parse(File.ReadAllText p)
                Some(doc.RootElement.GetProperty("teacher_embedding_sha256").GetString())
            with _ -> None
        else None
    recorded |> Option.defaultWith (fun () -> sha256 s.Base.Embedding)

/// The first configuration field in which the student's teacher and `teacher` differ.
let private configMismatch (s: ModelConfig) (t: ModelConfig) =
    let fields : (string * string * string) list =
        [ "model_type", ModelFamily.modelType s.Family, ModelFamily.modelType t.Family
          "hidden_size", string s.Dim, string t.Dim
          "num_hidden_layers", string s.Layers, string t.Layers
          "num_attention_heads", string s.Heads, string t.Heads
          "num_key_value_heads", string s.KvHeads, string t.KvHeads
          "head_dim", string s.HeadDim, string t.HeadDim
          "intermediate_size", string s.Hidden, string t.Hidden
          "vocab_size", string s.Vocab, string t.Vocab
          "max_position_embeddings", string s.Context, string t.Context
          "rms_norm_eps", string s.NormEps, string t.NormEps
          "rope_theta", string s.RopeTheta, string t.RopeTheta
          "tie_word_embeddings", string s.TiedEmbeddings, string t.TiedEmbeddings
          "qkv_bias", string s.QkvBias, string t.QkvBias
          "qk_norm", string s.QkNorm, string t.QkNorm ]
    fields |> List.tryFind (fun (_, a, b) -> a <> b)

/// Checks that `teacher` is the model the student in `dir` was converted from.
let checkTeacher (dir: string) (s: Student) (teacherPath: string) (teacher: Teacher) : Result<string, InputError> =
    match configMismatch s.Config teacher.Config with
    | Some(field, sv, tv) ->
        Error(InvalidOption("--teacher", $"{teacherPath} is not the teacher of the student {dir}: {field} is {tv} there but {sv} in the student's config"))
    | None ->
        let fp = sha256 teacher.Weights.Embedding
        let recorded = recordedTeacherFingerprint dir s
        if fp <> recorded then
            Error(InvalidOption("--teacher", $"{teacherPath} is not the teacher of the student {dir}: its embedding (SHA-256 {fp[..11]}…) differs from the one the student copied ({recorded[..11]}…); same shape, other weights"))
        else Ok fp

/// The calibration text a student directory's convert report names, if any.
let private calibrationSource (dir: string) =
    let p = Path.Combine(dir, "report.json")
    if File.Exists p then
        try
            use doc = JsonDocument.Parse(File.ReadAllText p)
            Some(doc.RootElement.GetProperty("calibration").GetProperty("source").GetString())
        with _ -> None
    else None

/// Loads and checks everything (see the module comment).
let load (src: DistillSources) : Result<Inputs, InputError> =
    if src.TrainTexts.IsEmpty then Error(InvalidOption("--train-text", "give at least one training text"))
    elif src.SeqLen < 1 then Error(InvalidOption("--seq-len", $"must be at least 1, not {src.SeqLen}"))
    else
    inputResult {
        let! student = StudentIo.load src.StudentDir
        do! if Map.isEmpty student.Gdn then Error(InvalidOption("--student", $"{src.StudentDir} has no GDN layer: there is nothing to distil"))
            elif src.SeqLen > student.Config.Context then
                Error(InvalidOption("--seq-len", $"{src.SeqLen} exceeds the model's context {student.Config.Context}"))
            else Ok()
        let! teacher = ModelFiles.loadTeacher src.TeacherPath
        let! fingerprint = checkTeacher src.StudentDir student src.TeacherPath teacher
        let! tokPath = StudentIo.tokenizerPath src.StudentDir
        let! tok = ModelFiles.loadTokenizer tokPath |> Result.bind (fun t -> ModelFiles.checkVocab t tokPath student.Config)
        let readAll (paths: string list) =
            paths |> List.fold (fun acc p ->
                acc |> Result.bind (fun docs -> Corpus.readDocuments p |> Result.map (fun d -> docs @ [ p, d ])))
                (Ok [])
        let! train = readAll src.TrainTexts
        let! eval = readAll (Option.toList src.EvalText)
        let evalDocs = eval |> List.collect snd
        let shared =
            train |> List.tryPick (fun (p, d) ->
                let n = Calibration.overlap d evalDocs
                if n > 0 then Some(p, n, d.Length) else None)
        let calib = calibrationSource src.StudentDir |> Option.filter File.Exists
        let calibShared =
            calib |> Option.bind (fun p ->
                match Corpus.readDocuments p with
                | Ok d -> let n = Calibration.overlap d evalDocs in if n > 0 then Some(p, n, d.Length) else None
                | Error _ -> None)
        do! match shared, calibShared with
            | Some(p, n, total), _ ->
                Error(InvalidOption("--train-text", $"{p}: {n} of its {total} documents also occur in the evaluation text {src.EvalText.Value}; train on text disjoint from the held-out text"))
            | None, Some(p, n, total) ->
                Error(InvalidOption("--eval-text", $"{src.EvalText.Value} shares {n} documents with the calibration text {p} the student was converted on ({total} documents); evaluate on held-out text"))
            | None, None -> Ok()
        let docs = train |> List.collect snd
        let encoded = Corpus.encodeDocuments tok None docs
        let spec = { SeqLen = src.SeqLen; Shuffle = ShuffleDocuments; Seed = src.Seed }
        let what = "--train-text " + String.concat " " src.TrainTexts
        let! stream = TokenStream.create what spec encoded
        let! evalSet =
            match src.EvalText, eval with
            | Some p, [ _, d ] ->
                let tokens = Corpus.tokenStreamUpTo tok src.EvalMaxTokens d
                Perplexity.prepare p student.Config tokens None src.EvalMaxTokens |> Result.map Some
            | _ -> Ok None
        let inputs =
            { Sources = src; Teacher = teacher; Student = student; TokenizerPath = tokPath; Tokenizer = tok; Train = stream
              Eval = evalSet; TeacherFingerprint = fingerprint }
        return inputs }
