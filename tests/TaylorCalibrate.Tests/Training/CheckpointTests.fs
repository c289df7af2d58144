/// Training checkpoints (Training/Checkpoint.fs): a bit-exact round trip of parameters, moments, step, data
/// position, RNG states and extras on every backend; and, on the CPU backend (these are file-level
/// properties), the pruning to the newest two, a crash injected after each write leaving the previous
/// checkpoint loadable, corrupt or truncated files detected by checksum and skipped with a warning, and
/// checkpoints of another run refused naming the field that differs.
module TaylorCalibrate.Tests.Training.CheckpointTests

open System
open System.IO
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Training.ParameterGroups
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Training.ToyModel

let private dims = { In = 5; Out = 3 }

let private rules lr =
    [ { Group = "weight"; Pattern = EndsWith "weight"; Treatment = Train { LearningRate = lr; WeightDecay = 0.01f } }
      { Group = "bias"; Pattern = EndsWith "bias"; Treatment = Train { LearningRate = 3e-2f; WeightDecay = 0f } } ]

let private settings = { AdamWSettings.defaults with Beta2 = 0.95f; Schedule = Schedule.Cosine 10 }

let private identity lr : Checkpoint.RunIdentity =
    { ModelFingerprint = $"toy in={dims.In} out={dims.Out}"; Settings = Map [ "lr", string lr; "batch", "8"; "seed", "7" ] }

let private withTempDir (f: string -> unit) =
    let dir = Path.Combine(Path.GetTempPath(), $"tc-checkpoint-{Guid.NewGuid():N}")
    try f dir finally (try Directory.Delete(dir, true) with _ -> ())

let private bits (a: float32[]) = Array.map BitConverter.SingleToInt32Bits a

/// Trains `steps` steps of the toy model on a fixed batch.
let private train (be: IBackend) (toy: Toy) (opt: AdamW) (steps: int) =
    let x, y = dataset dims 8 70
    for _ in 1 .. steps do Trainer.step opt 2 (fun mb -> lossAndGrad be toy (rows x dims.In (mb.Index * 4) 4) (rows y dims.Out (mb.Index * 4) 4) mb.Weight) |> ignore

let private stateAt (opt: AdamW) (rng: Rng) : Checkpoint.TrainingState =
    { Step = opt.StepsTaken; DataPosition = [| int64 opt.StepsTaken; -1L; Int64.MaxValue |]; Rngs = Map [ "shuffle", rng.State ]
      Extra = Map [ "tokens_seen", string (opt.StepsTaken * 8) ] }

/// Everything a checkpoint holds, downloaded: values then (m, v) per trained parameter, as bit patterns.
let private snapshot (opt: AdamW) =
    [ for p in opt.Parameters -> p.Name, bits (p.Value.ToArray())
      for t in opt.Trained do
          yield "m/" + t.Parameter.Name, bits (t.M.ToArray())
          yield "v/" + t.Parameter.Name, bits (t.V.ToArray()) ]

/// A run trained to `steps`, checkpointed at each step in `saveAt`; returns the snapshot at each save.
let private runWithSaves (be: IBackend) (dir: string) (saveAt: int list) =
    use toy = create be dims 3
    use opt = new AdamW(settings, rules 1e-2f, toy.Parameters)
    let rng = Rng.Create 99UL
    [ for s in saveAt do
        train be toy opt (s - opt.StepsTaken)
        rng.NextUInt64() |> ignore
        Checkpoint.save dir (identity 1e-2f) (stateAt opt rng) opt
        yield s, snapshot opt ]
    |> Map.ofList

/// Loads `dir` into a fresh model and optimizer (another initialisation) and returns its snapshot and state.
let private resumeFresh (be: IBackend) (dir: string) (lr: float32) =
    use toy = create be dims 1234
    use opt = new AdamW(settings, rules lr, toy.Parameters)
    match Checkpoint.resume dir (identity lr) opt with
    | Ok(state, warnings) -> Ok(snapshot opt, state, warnings, opt.StepsTaken)
    | Error e -> Error e

let private expectLoaded r =
    match r with
    | Ok v -> v
    | Error e -> failtest $"load failed: {InputError.describe e}"

let private flipByte (path: string) (offsetFromEnd: int64) =
    use fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite)
    fs.Position <- fs.Length - offsetFromEnd
    let b = fs.ReadByte()
    fs.Position <- fs.Length - offsetFromEnd
    fs.WriteByte(byte (b ^^^ 0x10))

let private stepDir (dir: string) (s: int) = Path.Combine(dir, Checkpoint.stepDirectoryName s)

[<Tests>]
let tests =
    testList "Training.Checkpoint" [
        for handle in Backends.all do
            test $"{handle.Name}: a round trip restores every value, moment and state bit for bit" {
                let be = handle.Get()
                withTempDir (fun dir ->
                    let saved = runWithSaves be dir [ 3 ]
                    let snap, state, warnings, steps = expectLoaded (resumeFresh be dir 1e-2f)
                    Expect.equal snap saved[3] "values and moments"
                    Expect.equal steps 3 "optimizer steps taken"
                    Expect.equal state.Step 3 "state step"
                    Expect.equal state.DataPosition [| 3L; -1L; Int64.MaxValue |] "data position"
                    let rng = Rng.Create 99UL
                    rng.NextUInt64() |> ignore
                    Expect.equal state.Rngs (Map [ "shuffle", rng.State ]) "RNG state"
                    Expect.equal state.Extra (Map [ "tokens_seen", "24" ]) "extras"
                    Expect.isEmpty warnings "no warnings")
            }

        test "keeps the newest two checkpoints and points latest at the newest" {
            let be = Backends.cpu.Get()
            withTempDir (fun dir ->
                runWithSaves be dir [ 1; 2; 3; 4 ] |> ignore
                let names = Directory.GetDirectories dir |> Array.map Path.GetFileName |> Array.sort
                Expect.equal names [| "step-000003"; "step-000004" |] "directories"
                Expect.equal (File.ReadAllText(Path.Combine(dir, "latest")).Trim()) "step-000004" "latest")
        }

        test "a crash after any write leaves the previous checkpoint loadable" {
            let be = Backends.cpu.Get()
            for phase in [ Checkpoint.TensorsWritten; Checkpoint.ManifestWritten; Checkpoint.Published; Checkpoint.PointerWritten ] do
                withTempDir (fun dir ->
                    let saved = runWithSaves be dir [ 2 ]
                    do
                        use toy = create be dims 3
                        use opt = new AdamW(settings, rules 1e-2f, toy.Parameters)
                        Checkpoint.resume dir (identity 1e-2f) opt |> expectLoaded |> ignore
                        train be toy opt 1
                        let crash = { Checkpoint.SaveOptions.defaults with AfterPhase = fun p -> if p = phase then failwith "injected crash" }
                        Expect.throws (fun () -> Checkpoint.saveWith crash dir (identity 1e-2f) (stateAt opt (Rng.Create 1UL)) opt) $"{phase}: the crash"
                    let snap, state, warnings, _ = expectLoaded (resumeFresh be dir 1e-2f)
                    match phase with
                    | Checkpoint.PointerWritten ->
                        Expect.equal state.Step 3 "the new checkpoint was complete and is the latest"
                    | _ ->
                        Expect.equal state.Step 2 $"{phase}: the previous checkpoint is the latest"
                        Expect.equal snap saved[2] $"{phase}: its contents"
                        Expect.isEmpty warnings $"{phase}: latest still names a good checkpoint"
                    // The next save goes through and clears the abandoned partial directory.
                    runWithSaves be dir [ 4 ] |> ignore
                    Expect.isEmpty (Directory.GetDirectories(dir, ".partial-*")) $"{phase}: no partial directory left")
        }

        test "corrupt or truncated files are caught by their checksums and the previous checkpoint is used" {
            let be = Backends.cpu.Get()
            let corruptions : (string * (string -> unit)) list =
                [ "a flipped bit in the tensor data", fun d -> flipByte (Path.Combine(d, "tensors.safetensors")) 5L
                  "a truncated tensors file", fun d ->
                      let p = Path.Combine(d, "tensors.safetensors")
                      File.WriteAllBytes(p, (File.ReadAllBytes p)[.. 99])
                  "a changed manifest value", fun d ->
                      let p = Path.Combine(d, "manifest.json")
                      File.WriteAllText(p, File.ReadAllText(p).Replace("\"tokens_seen\":\"24\"", "\"tokens_seen\":\"25\""))
                  "a truncated manifest", fun d ->
                      let p = Path.Combine(d, "manifest.json")
                      File.WriteAllBytes(p, (File.ReadAllBytes p)[.. 40])
                  "a missing manifest", fun d -> File.Delete(Path.Combine(d, "manifest.json")) ]
            for what, corrupt in corruptions do
                withTempDir (fun dir ->
                    let saved = runWithSaves be dir [ 2; 3 ]
                    corrupt (stepDir dir 3)
                    let snap, state, warnings, _ = expectLoaded (resumeFresh be dir 1e-2f)
                    Expect.equal state.Step 2 $"{what}: fell back to step 2"
                    Expect.equal snap saved[2] $"{what}: step 2's contents"
                    Expect.hasLength warnings 1 $"{what}: one warning"
                    Expect.stringContains warnings.Head "step-000003" $"{what}: the warning names the bad checkpoint"
                    Expect.stringContains warnings.Head "step-000002" $"{what}: and the one used instead"
                    // With the previous one corrupt too, nothing is loadable: one error naming both problems.
                    flipByte (Path.Combine(stepDir dir 2, "tensors.safetensors")) 3L
                    match resumeFresh be dir 1e-2f with
                    | Ok _ -> failtest $"{what}: loaded although every checkpoint is corrupt"
                    | Error(CorruptFile(path, why)) ->
                        Expect.equal path dir $"{what}: names the checkpoint directory"
                        Expect.stringContains why "step-000003" $"{what}: says what is wrong with step 3"
                        Expect.stringContains why "step-000002: tensors.safetensors fails its SHA-256 checksum" $"{what}: and with step 2"
                    | Error e -> failtest $"{what}: unexpected error {InputError.describe e}")
        }

        test "a checkpoint of another run is refused, naming the field that differs" {
            let be = Backends.cpu.Get()
            withTempDir (fun dir ->
                runWithSaves be dir [ 2 ] |> ignore
                let refused (expectedField: string) (r: Result<_, InputError>) (what: string) =
                    match r with
                    | Error(CheckpointMismatch(_, field, _, _) as e) ->
                        Expect.equal field expectedField what
                        Expect.stringContains (InputError.describe e) expectedField $"{what}: the message"
                    | Error e -> failtest $"{what}: unexpected error {InputError.describe e}"
                    | Ok _ -> failtest $"{what}: accepted"
                let withModel (fingerprint: string) (settingsMap: Map<string, string>) (s: AdamWSettings) (lr: float32) =
                    use toy = create be dims 5
                    use opt = new AdamW(s, rules lr, toy.Parameters)
                    Checkpoint.resume dir { ModelFingerprint = fingerprint; Settings = settingsMap } opt
                let id = identity 1e-2f
                refused "setting 'batch'" (withModel id.ModelFingerprint (id.Settings.Add("batch", "16")) settings 1e-2f) "another batch"
                refused "setting 'data'" (withModel id.ModelFingerprint (id.Settings.Add("data", "x.txt")) settings 1e-2f) "a setting the checkpoint lacks"
                refused "the model" (withModel "toy in=5 out=4" id.Settings settings 1e-2f) "another model fingerprint"
                refused "setting 'adamw.beta2'" (withModel id.ModelFingerprint id.Settings { settings with Beta2 = 0.999f } 1e-2f) "other betas"
                refused "setting 'group.weight.lr'" (withModel id.ModelFingerprint id.Settings settings 2e-2f) "another group rate"
                // Another shape of the same names: the tensor is named.
                use other = create be { In = 6; Out = 3 } 5
                use opt = new AdamW(settings, rules 1e-2f, other.Parameters)
                match Checkpoint.resume dir id opt with
                | Error(ShapeMismatch(name, _, _)) -> Expect.equal name "toy.linear.weight" "names the tensor"
                | r -> failtest $"another shape: {r}"
                // And nothing was changed by the refusals: the right run still resumes.
                let _, state, _, _ = expectLoaded (resumeFresh be dir 1e-2f)
                Expect.equal state.Step 2 "the matching run resumes")
        }

        test "a directory without checkpoints is an error naming its latest pointer" {
            let be = Backends.cpu.Get()
            withTempDir (fun dir ->
                match resumeFresh be dir 1e-2f with
                | Error(FileNotFound p) -> Expect.equal p (Path.Combine(dir, "latest")) "names the pointer"
                | r -> failtest $"unexpected {r}")
        }
    ]
