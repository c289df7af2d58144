/// A tiny distillation setup on disk, built without ../shared: a random 3-layer Llama teacher (Hugging Face
/// directory with a byte-level BPE tokenizer trained on the fixture's own text), its naive student keeping
/// layer 1 (StudentIo directory, as convert writes it), and disjoint training and held-out story texts.
module TaylorCalibrate.Tests.Distill.TinyDistill

open System
open System.IO
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// 3 layers, D 16, 2 query / 1 kv heads of 8, F 32, context 64; the vocabulary is the tokenizer's.
let config (vocab: int) =
    { Family = ModelFamily.Llama; Dim = 16; Hidden = 32; Layers = 3; Heads = 2; KvHeads = 1; HeadDim = 8; Vocab = vocab
      Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.HalfSplit
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

let private words =
    [| "the"; "cat"; "dog"; "sat"; "ran"; "on"; "a"; "mat"; "big"; "red"; "ball"; "and"; "was"; "happy"; "sun"
       "tree"; "little"; "girl"; "boy"; "played"; "with"; "her"; "his"; "friend"; "day"; "park"; "saw"; "bird" |]

/// `n` short stories from a seeded generator (documents separated by <|endoftext|>).
let stories (seed: int) (n: int) =
    let r = Random seed
    [ for _ in 1 .. n ->
        let sentence () = String.Join(" ", Array.init (4 + r.Next 6) (fun _ -> words[r.Next words.Length])) + "."
        String.Join(" ", Array.init (2 + r.Next 3) (fun _ -> sentence ())) ]
    |> String.concat "\n<|endoftext|>\n"

/// A random teacher of `c`: N(0, 0.1²)-ish uniform weights from `seed`, unit norms.
let randomTeacher (c: ModelConfig) (seed: int) : Teacher =
    let rnd = Random seed
    let weights =
        HfLayout.assemble c (fun name shape ->
            let n = Array.fold (*) 1 shape
            if name.EndsWith "norm.weight" then Ok(Array.create n 1f)
            else Ok(Array.init n (fun _ -> float32 ((rnd.NextDouble() - 0.5) * 0.35))))
        |> Result.defaultWith (fun e -> invalidOp (InputError.describe e))
    { Config = c; Weights = weights; Source = { Path = "random"; Format = "test"; DTypes = [ "F32" ] } }

/// The fixture's paths.
type Fixture =
    { Root: string
      TeacherDir: string
      StudentDir: string
      TrainText: string
      EvalText: string
      Teacher: Teacher }

/// Writes a teacher directory (config, weights, tokenizer.json) for `teacher` into `dir`.
let writeTeacher (dir: string) (teacher: Teacher) (tokenizerJson: string) =
    HfWriter.write dir teacher HfWriter.F32 None
    File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tokenizerJson)

/// Builds the fixture in a fresh temporary folder.
let create () : Fixture =
    let root = Path.Combine(Path.GetTempPath(), "tc-distill-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory root |> ignore
    let train, eval = stories 1 120, stories 2 20
    let trainPath, evalPath = Path.Combine(root, "train.txt"), Path.Combine(root, "eval.txt")
    File.WriteAllText(trainPath, train)
    File.WriteAllText(evalPath, eval)
    let bpe = BpeTrainer.train 300 None (Corpus.documents train)
    let tokJson = BpeTrainer.toJson bpe
    let tokPath = Path.Combine(root, "tokenizer.json")
    File.WriteAllText(tokPath, tokJson)
    let tok = ModelFiles.loadTokenizer tokPath |> Result.defaultWith (fun e -> invalidOp (InputError.describe e))
    let teacher = randomTeacher (config tok.VocabSize) 7
    let teacherDir = Path.Combine(root, "teacher")
    writeTeacher teacherDir teacher tokJson
    let studentDir = Path.Combine(root, "student")
    StudentIo.save studentDir (Skeleton.build teacher [ 1 ] GqaExpand.Heads 0) (Some tokPath)
    { Root = root; TeacherDir = teacherDir; StudentDir = studentDir; TrainText = trainPath; EvalText = evalPath; Teacher = teacher }

/// Removes the fixture's folder.
let delete (f: Fixture) = try Directory.Delete(f.Root, true) with _ -> ()
