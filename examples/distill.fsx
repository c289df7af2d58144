// A distillation composed from the Pipeline's stages (docs/architecture.md §3.3): a naive student of the
// teacher (no calibration), then a few Stage 2 steps, forward KL(teacher ‖ student) end to end
// (docs/method.md §7), with the held-out perplexity before and after.
// Build first (`dotnet fsi build.fsx`, or `dotnet build src/Cli -c Release`), then
//   dotnet fsi examples/distill.fsx [TEACHER [TRAIN_TEXT [EVAL_TEXT [STEPS]]]]
// Defaults, all in a fresh clone: the committed models/demo-teacher, trained on examples/text/calib.txt,
// evaluated on examples/text/eval.txt, 20 steps. `Distill.run` adds checkpoints, resume and a learning curve.
#I "../src/Cli/bin/Release/net10.0"
#r "TaylorCalibrate.Backend.dll"
#r "TaylorCalibrate.Pipeline.dll"

open System.IO
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Pipeline.Training

let args = fsi.CommandLineArgs |> Array.skip 1
let arg i fallback = args |> Array.tryItem i |> Option.defaultValue (Path.Combine(__SOURCE_DIRECTORY__, "..", fallback))
let teacherPath, trainText, evalText = arg 0 "models/demo-teacher", arg 1 "examples/text/calib.txt", arg 2 "examples/text/eval.txt"
let steps = args |> Array.tryItem 3 |> Option.map int |> Option.defaultValue 20
let ok = function Ok v -> v | Error e -> failwith (InputError.describe e)

let teacher = ModelFiles.loadTeacher teacherPath |> ok
let tokenizer = ModelFiles.tokenizerFor teacherPath teacher.Config None |> ok
let student = Convert.runUntraced teacher [ 0 ] (Convert.ConvertOptions.defaults Convert.InitStrategy.Naive) // layer 0 keeps attention
let evalSet = Perplexity.prepare evalText teacher.Config (Corpus.tokenStreamUpTo tokenizer (Some 4096) (Corpus.readDocuments evalText |> ok)) None (Some 4096) |> ok
let train = Corpus.tokenStream tokenizer (Corpus.readDocuments trainText |> ok)

let be = Devices.Open "cpu" // or "auto": the best GPU, else the CPU
let teacherOnDevice = new DeviceDecoder(be, teacher)
let studentOnDevice = new DeviceDecoder(be, student)
let perplexity (m: DeviceDecoder) = (Perplexity.evaluate m None evalSet None CancellationToken.None).Perplexity
printfn "teacher PPL %.2f; naive student PPL %.2f" (perplexity teacherOnDevice) (perplexity studentOnDevice)

// The method's Stage 2 groups (names with "attn", the rest) at 10x its rates, so that a few steps show.
let B, T = 4, 128
let settings = { AdamWSettings.defaults with Beta2 = 0.95f }
let trainer = new Stage2.Stage2Trainer(teacherOnDevice, studentOnDevice, settings, ParameterGroups.Presets.stage2 1e-3f 7e-5f 0.01f, false)
for step in 0 .. steps - 1 do
    // B rows of T tokens, moving through the training text (wrapping around).
    let ids = Array.init (B * T) (fun i -> train[(step * B * T + i) % train.Length])
    let r = trainer.Step([ ids ], B, T)
    if step % 5 = 0 || step = steps - 1 then printfn "step %d: KL %.4f nats/token" r.Step r.Loss
printfn "after %d Stage 2 steps: student PPL %.2f" steps (perplexity studentOnDevice)
