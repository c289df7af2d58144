/// The study: for every (teacher, policy) pair, the zero-shot ablation (ZeroShotAblation) and the token
/// budget (TokenBudget) with the pair's kept layers, and one summary in the shape of the paper's tables:
/// zero-shot PPL by init, tokens to each target for naive (BL) and Taylor-Calibrate (TC), and BL/TC.
/// Teachers: stories260K from ../shared (TinyStories: valid-head split by document into a calibration part,
/// its last 188 stories, and a training part; valid-far held out) and the in-house State-of-the-Union
/// teachers (addresses before 2000 train, the last 20 of them calibrate, 2000 on held out; Demo.writeTexts).
/// OUT/pairs/TEACHER-POLICY/ holds each pair (token-budget/ resumes part by part; ablation.json is written
/// when the pair's ablation finished), so a rerun resumes pair by pair.
module TaylorCalibrate.Pipeline.Stages.Study

open System
open System.Diagnostics
open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Text

/// One teacher setting: the model, its texts and its distillation budget.
type TeacherSetting =
    { Name: string
      Path: string
      CalibText: string
      TrainText: string
      EvalText: string
      /// Stage 1 + Stage 2 tokens per student, and tokens between evaluations.
      Tokens: int64
      CheckpointEvery: int64
      SeqLen: int
      /// Phase-2 alignment steps (token budget, GA-S2 and the ablation) and held-out tokens evaluated.
      AlignSteps: int
      EvalMaxTokens: int
      /// calibrate-plus's calibration budget in the ablation.
      Plus: ZeroShotAblation.AblationOptions }

/// The recipe shared by every pair (the same for both inits).
type Recipe =
    { KeepFraction: float
      Stage1Lr: float32
      Stage2LrAttention: float32
      Stage2LrRest: float32
      Batch: int
      Seeds: int
      Quick: bool }

module Recipe =
    /// Stage 2 at ten times the method's rates (1e-3 attention/GDN, 1e-4 rest, as the demo): the study's
    /// budgets are a few hundred steps, too short for 1e-4/7e-6 to move these small models.
    let full = { KeepFraction = 0.25; Stage1Lr = 1e-3f; Stage2LrAttention = 1e-3f; Stage2LrRest = 1e-4f; Batch = 8; Seeds = 1; Quick = false }
    /// A smoke run of minutes: a quarter of the token budgets, 60 alignment steps, 4096 held-out tokens.
    let quick = { full with Quick = true }

/// The four teacher settings; stories260K only when ../shared holds it. The in-house teachers get smaller
/// budgets (fewer tokens and alignment steps): their converted layers carry little of their PPL, so every
/// student starts within a few per cent of the teacher. `quick` quarters the token budgets.
let teachers (shared: string option) (cacheDir: string) (textsDir: string) (corpora: string option) (quick: bool)
        : Result<TeacherSetting list * string list, InputError> =
    let scale (n: int64) = if quick then n / 4L else n
    let steps n = if quick then 60 else n
    let evalTokens n = if quick then 4096 else n
    let plus fit dev n : ZeroShotAblation.AblationOptions =
        if quick then { ZeroShotAblation.AblationOptions.defaults with AlignSteps = 60; PlusFitTokens = 2048; PlusDevTokens = 1024; PlusSteps = 60 }
        else { ZeroShotAblation.AblationOptions.defaults with AlignSteps = steps n; PlusFitTokens = fit; PlusDevTokens = dev; PlusSteps = n }
    let notes = Collections.Generic.List<string>()
    let stories =
        match shared with
        | Some root when File.Exists(Path.Combine(root, "models", "stories260K", "stories260K.bin")) ->
            let head = Path.Combine(root, "data", "tinystories", "valid-head.txt")
            Documents.read (Stories head)
            |> Result.bind (DocumentSplit.apply head (LastDocuments 188))
            |> Result.map (fun split ->
                Directory.CreateDirectory textsDir |> ignore
                let write name (docs: Document[]) =
                    let p = Path.Combine(textsDir, name)
                    AtomicFile.writeText p (docs |> Array.map (fun d -> d.Text) |> String.concat "\n<|endoftext|>\n")
                    p
                [ { Name = "stories260K"; Path = Path.Combine(root, "models", "stories260K", "stories260K.bin")
                    CalibText = write "tinystories-calib.txt" split.HeldOut; TrainText = write "tinystories-train.txt" split.Train
                    EvalText = Path.Combine(root, "data", "tinystories", "valid-far.txt")
                    Tokens = scale 229376L; CheckpointEvery = scale 24576L; SeqLen = 256
                    AlignSteps = steps 300; EvalMaxTokens = evalTokens 16384
                    Plus = plus 8192 2048 300 } ])
        | _ ->
            notes.Add "stories260K skipped: ../shared/models/stories260K/stories260K.bin is not here"
            Ok []
    let inHouse =
        let names = [ "sotu-llama"; "sotu-qwen2"; "sotu-qwen3" ]
        let present = names |> List.filter (fun n -> File.Exists(Path.Combine(cacheDir, n, "config.json")))
        for n in names |> List.except present do
            notes.Add $"{n} skipped: not in {cacheDir} (build it with `dotnet fsi build.fsx teachers`)"
        match present, corpora with
        | [], _ -> Ok []
        | _, None ->
            notes.Add "the in-house teachers skipped: the State-of-the-Union corpus is not in corpora/ (`dotnet fsi build.fsx setup`)"
            Ok []
        | _, Some c ->
            Demo.writeTexts (NpmCorpora.stateOfTheUnion c) "2000" 20 (Path.Combine(textsDir, "sotu"))
            |> Result.map (fun t ->
                [ for n in present ->
                    { Name = n; Path = Path.Combine(cacheDir, n); CalibText = t.Calib; TrainText = t.Train; EvalText = t.Eval
                      Tokens = scale 28672L; CheckpointEvery = scale 4096L; SeqLen = 256
                      AlignSteps = steps 100; EvalMaxTokens = evalTokens 8192
                      Plus = plus 4096 1024 100 } ])
    match stories, inHouse with
    | Error e, _ | _, Error e -> Error e
    | Ok a, Ok b -> Ok(a @ b, List.ofSeq notes)

/// What one pair measured.
type PairResult =
    { Teacher: string
      Policy: string
      Kept: int list
      Layers: int
      TeacherPerplexity: float
      /// Zero-shot PPL by init name, in the ablation's order.
      ZeroShot: (string * float) list
      Outcome: TokenBudget.Outcome }

let private pairName (t: TeacherSetting) (p: LayerSelection.Policy) = $"{t.Name}-{LayerSelection.Policy.name p}"

let private ablationFile = "ablation.json"

let private readAblation (path: string) =
    let o = JsonNode.Parse(File.ReadAllText path).AsObject()
    [ for e in o["rows"].AsArray() -> e["init"].GetValue<string>(), (match e["perplexity"] with null -> nan | v -> v.GetValue<float>()) ]

let private writeAblation (path: string) (rows: ZeroShotAblation.StrategyResult list) (kept: int list) =
    let o = JsonObject()
    o["kept_layers"] <- JsonArray(kept |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)
    o["rows"] <- JsonArray([| for r in rows ->
                               JsonObject(dict [ "init", JsonValue.Create(Convert.InitStrategy.name r.Strategy) :> JsonNode
                                                 "perplexity", (if Double.IsFinite r.Perplexity then JsonValue.Create r.Perplexity :> JsonNode else null)
                                                 "convert_seconds", JsonValue.Create r.Seconds :> JsonNode ]) :> JsonNode |])
    AtomicFile.writeText path (o.ToJsonString(JsonSerializerOptions(WriteIndented = true)))

/// The ablation's other inits (naive and taylor-calibrate come from the token budget's zero-shot points).
let private runAblation (be: IBackend) (t: TeacherSetting) (kept: int list) strategies
                        (report: TokenBudget.Event -> unit) ct : Result<ZeroShotAblation.StrategyResult list, InputError> =
    match ModelFiles.loadTeacher t.Path with
    | Error e -> Error e
    | Ok teacher ->
    match ModelFiles.tokenizerFor t.Path teacher.Config None, Corpus.readDocuments t.CalibText, Corpus.readDocuments t.EvalText with
    | Error e, _, _ | _, Error e, _ | _, _, Error e -> Error e
    | Ok tok, Ok calib, Ok evalDocs ->
        // The same held-out set as Distill's evaluations (DistillInputs: the first EvalMaxTokens tokens).
        let stream = Corpus.tokenStreamUpTo tok (Some t.EvalMaxTokens) evalDocs
        Perplexity.prepare t.EvalText teacher.Config stream None (Some t.EvalMaxTokens)
        |> Result.bind (fun set ->
            ZeroShotAblation.run be teacher tok t.CalibText calib (t.EvalText, evalDocs) set kept
                { t.Plus with AlignSteps = t.AlignSteps } strategies (fun m -> report (TokenBudget.Note m)) ct)

/// Runs (or resumes) one pair.
let runPair (be: IBackend) (recipe: Recipe) (out: string) (t: TeacherSetting) (policy: LayerSelection.Policy)
            (report: TokenBudget.Event -> unit) (ct: CancellationToken) : Result<PairResult, InputError> =
    let dir = Path.Combine(out, "pairs", pairName t policy)
    let s =
        { TokenBudget.Settings.defaults t.Path policy recipe.KeepFraction t.Tokens t.CheckpointEvery t.CalibText t.TrainText t.EvalText with
            Seeds = recipe.Seeds; SeqLen = t.SeqLen; Batch = recipe.Batch; Stage1Lr = recipe.Stage1Lr
            Stage2LrAttention = recipe.Stage2LrAttention; Stage2LrRest = recipe.Stage2LrRest; AlignSteps = t.AlignSteps
            EvalMaxTokens = Some t.EvalMaxTokens }
    let siblings =
        [ for other in LayerSelection.Policy.names do
            if other <> LayerSelection.Policy.name policy then yield Path.Combine(out, "pairs", $"{t.Name}-{other}") ]
    TokenBudget.runReusing be s (Path.Combine(dir, "token-budget")) [ for d in siblings -> Path.Combine(d, "token-budget") ] report ct
    |> Result.bind (fun outcome ->
        TokenBudgetResult.write (Path.Combine(dir, "token-budget")) outcome
        let zeroShotOf init =
            outcome.Runs |> List.find (fun r -> r.Init = init && r.Seed = 0) |> fun r -> r.Points.Head.Perplexity
        let fromBudget = [ for i in TokenBudget.inits -> Convert.InitStrategy.name i, zeroShotOf i ]
        let path = Path.Combine(dir, ablationFile)
        let others = Convert.InitStrategy.all |> List.except TokenBudget.inits
        // Another policy's pair that kept the same layers has the same ablation.
        let sibling =
            siblings |> List.map (fun d -> Path.Combine(d, ablationFile))
            |> List.tryFind (fun p ->
                File.Exists p &&
                (try [ for e in (JsonNode.Parse(File.ReadAllText p)).["kept_layers"].AsArray() -> e.GetValue<int>() ] = outcome.Kept with _ -> false))
        sibling |> Option.iter (fun p ->
            if not (File.Exists path) then
                report (TokenBudget.Note $"reusing the zero-shot ablation of {p}: the same kept layers")
                File.Copy(p, path))
        let ablation =
            if File.Exists path then Ok(readAblation path)
            else
                runAblation be t outcome.Kept others report ct
                |> Result.map (fun rows ->
                    writeAblation path rows outcome.Kept
                    [ for r in rows -> Convert.InitStrategy.name r.Strategy, r.Perplexity ])
        ablation |> Result.map (fun rows ->
            let all = fromBudget @ rows
            let ordered = [ for s in Convert.InitStrategy.all do
                              match all |> List.tryFind (fun (n, _) -> n = Convert.InitStrategy.name s) with
                              | Some r -> yield r
                              | None -> () ]
            { Teacher = t.Name; Policy = LayerSelection.Policy.name policy; Kept = outcome.Kept; Layers = outcome.Layers
              TeacherPerplexity = outcome.TeacherPerplexity; ZeroShot = ordered; Outcome = outcome }))

let private f3 (v: float) = if Double.IsFinite v then v.ToString("F3", Globalization.CultureInfo.InvariantCulture) else "–"

/// The summary tables (markdown).
let markdown (title: string) (recipeText: string) (pairs: PairResult list) (missing: string list) : string =
    let inits = Convert.InitStrategy.all |> List.map Convert.InitStrategy.name
    let sb = StringBuilder()
    let line (s: string) = sb.Append(s).Append('\n') |> ignore
    line $"# {title}"
    line ""
    line recipeText
    line ""
    line "## Zero-shot held-out PPL by init"
    line ""
    line ("| teacher | policy | kept | teacher PPL | " + String.concat " | " inits + " | naive / TC |")
    line ("|---|---|---|---|" + String.replicate inits.Length "---|" + "---|")
    for p in pairs do
        let v n = p.ZeroShot |> List.tryFind (fun (k, _) -> k = n) |> Option.map snd |> Option.defaultValue nan
        let ratio = v "naive" / v "taylor-calibrate"
        line ($"| {p.Teacher} | {p.Policy} | {p.Kept} of {p.Layers} | {f3 p.TeacherPerplexity} | " + (inits |> List.map (v >> f3) |> String.concat " | ") + $" | {ratio:F2}x |")
    line ""
    line "## Tokens to target (Stage 1 + Stage 2) and BL/TC"
    line ""
    line "BL = naive, TC = taylor-calibrate; \"≤ c\": reached before the first checkpoint c; \"0\": already there zero-shot."
    line ""
    line "| teacher | policy | target | PPL | BL tokens | TC tokens | BL/TC |"
    line "|---|---|---|---|---|---|---|"
    for p in pairs do
        for row in TokenBudgetResult.targets p.Outcome do
            let per sel = row.PerSeed |> List.map sel |> String.concat "; "
            let ppl = row.Perplexity |> List.map f3 |> String.concat "; "
            line $"| {p.Teacher} | {p.Policy} | {row.Name} | {ppl} | {per (fun (b, _, _) -> TokenBudgetResult.describeReach b)} | {per (fun (_, t, _) -> TokenBudgetResult.describeReach t)} | {TokenBudgetResult.describeRow row} |"
    if not missing.IsEmpty then
        line ""
        line "## Not run"
        line ""
        for m in missing do line $"- {m}"
    sb.ToString()

/// The study's charts: zero-shot PPL by init per teacher (one bar per policy), the BL/TC ratio at the
/// baseline's final PPL, and every pair's learning curves.
let charts (pairs: PairResult list) : (string * SvgChart.Chart) list =
    let inits = Convert.InitStrategy.all |> List.map Convert.InitStrategy.name |> Array.ofList
    let byTeacher = pairs |> List.groupBy (fun p -> p.Teacher)
    [ for teacher, ps in byTeacher do
        let series =
            [ for p in ps ->
                p.Policy, inits |> Array.map (fun n -> p.ZeroShot |> List.tryFind (fun (k, _) -> k = n) |> Option.map snd |> Option.defaultValue nan) ]
        let tPpl = (List.head ps).TeacherPerplexity
        yield $"zero-shot-{teacher}.svg",
              SvgChart.bars $"{teacher}: zero-shot held-out PPL by init (teacher {tPpl:F2})" "perplexity" true inits series
      let ratioOf (p: PairResult) =
          let row = TokenBudgetResult.targets p.Outcome |> List.last
          match TokenBudgetResult.exactMean row with Some(m, _, _) -> m | None -> nan
      if pairs |> List.exists (fun p -> Double.IsFinite(ratioOf p)) then
          let policies = pairs |> List.map (fun p -> p.Policy) |> List.distinct
          let teachersNames = pairs |> List.map (fun p -> p.Teacher) |> List.distinct |> Array.ofList
          yield "token-ratio.svg",
                SvgChart.bars "BL/TC tokens to the baseline's final PPL (exact ratios only)" "BL tokens / TC tokens" false teachersNames
                    [ for pol in policies ->
                        pol, teachersNames |> Array.map (fun t -> pairs |> List.tryFind (fun p -> p.Teacher = t && p.Policy = pol) |> Option.map ratioOf |> Option.defaultValue nan) ]
      for p in pairs do
          let ch = TokenBudgetResult.chart p.Outcome
          yield $"curves-{p.Teacher}-{p.Policy}.svg", { ch with Title = $"{p.Teacher}, {p.Policy} (kept {p.Kept}): held-out PPL" } ]

/// A markdown table block as an HTML table (the report shows the same tables as study.md).
let private htmlTables (md: string) =
    let enc (t: string) = Net.WebUtility.HtmlEncode t
    let sb = StringBuilder()
    let mutable inTable = false
    for raw in md.Split('\n') do
        let l = raw.Trim()
        if l.StartsWith "|" then
            if not inTable then sb.Append("<table>\n") |> ignore; inTable <- true
            let cells = l.Trim('|').Split('|') |> Array.map (fun c -> c.Trim())
            if not (cells |> Array.forall (fun c -> c.Length > 0 && c |> Seq.forall (fun ch -> ch = '-'))) then
                sb.Append("<tr>") |> ignore
                for c in cells do sb.Append($"<td>{enc c}</td>") |> ignore
                sb.Append("</tr>\n") |> ignore
        else
            if inTable then sb.Append("</table>\n") |> ignore; inTable <- false
            if l.StartsWith "## " then sb.Append($"<h2>{enc (l.Substring 3)}</h2>\n") |> ignore
            elif l.StartsWith "# " then ()
            elif l.StartsWith "- " then sb.Append($"<p>{enc l}</p>\n") |> ignore
            elif l <> "" then sb.Append($"<p>{enc l}</p>\n") |> ignore
    if inTable then sb.Append("</table>\n") |> ignore
    sb.ToString()

/// Writes study.md, study.json, the charts (.svg + .json) and report.html into `out`.
let writeSummary (out: string) (title: string) (recipeText: string) (pairs: PairResult list) (missing: string list) (seconds: float) =
    let md = markdown title recipeText pairs missing
    AtomicFile.writeText (Path.Combine(out, "study.md")) md
    let j = JsonObject()
    j["title"] <- JsonValue.Create title
    j["recipe"] <- JsonValue.Create recipeText
    j["seconds"] <- JsonValue.Create seconds
    j["not_run"] <- JsonArray(missing |> List.map (fun m -> JsonValue.Create m :> JsonNode) |> Array.ofList)
    j["pairs"] <-
        JsonArray([| for p in pairs ->
                       let e = JsonObject()
                       e["teacher"] <- JsonValue.Create p.Teacher
                       e["policy"] <- JsonValue.Create p.Policy
                       e["zero_shot_perplexity"] <- JsonObject(p.ZeroShot |> List.map (fun (k, v) -> Collections.Generic.KeyValuePair<string, JsonNode>(k, (if Double.IsFinite v then JsonValue.Create v :> JsonNode else null))))
                       e["token_budget"] <- TokenBudgetResult.toJsonNode p.Outcome
                       e :> JsonNode |])
    AtomicFile.writeText (Path.Combine(out, "study.json")) (j.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
    let chs = charts pairs
    for name, ch in chs do SvgChart.save (Path.Combine(out, name)) ch
    let html = ReportHtml.page title (List.map snd chs)
    let h1 = $"<h1>{Net.WebUtility.HtmlEncode title}</h1>"
    AtomicFile.writeText (Path.Combine(out, "report.html")) (html.Replace(h1, h1 + "\n" + htmlTables md))
