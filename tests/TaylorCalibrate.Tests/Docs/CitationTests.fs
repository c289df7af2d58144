/// Every citation of the project's documents in code must resolve: `docs/<page>.md §N` (or `§N.M`, `§Nx`)
/// names a page under docs/ and a numbered heading that exists there. The design notes the code grew from are
/// not part of the repository, so a citation of anything outside docs/ is an error too.
module TaylorCalibrate.Tests.Docs.CitationTests

open System.IO
open System.Text.RegularExpressions
open Expecto
open TaylorCalibrate.Tests.Shared

/// The document pages the code may cite.
let private pages = [ "method"; "kernels"; "architecture"; "platform"; "training" ]

/// `docs/method.md §5.3`, `kernels.md §3`, `method.md §11e`, `docs/kernels.md` (no section).
let private citation =
    Regex(@"(?<prefix>docs/)?(?<page>[a-z]+)\.md(?:\s*§(?<major>\d+)(?:\.(?<minor>\d+))?(?<item>[a-z])?)?", RegexOptions.Compiled)

/// Numbered headings of a page: "5", "5.3" (from "## 5. …" and "### 5.3 …").
let headingNumbers (markdown: string) =
    Regex.Matches(markdown, @"^#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", RegexOptions.Multiline)
    |> Seq.map (fun m -> m.Groups[1].Value)
    |> Set.ofSeq

let private sourceFiles () =
    let under dir exts =
        let d = Path.Combine(repoRoot, dir)
        if Directory.Exists d then
            Directory.EnumerateFiles(d, "*", SearchOption.AllDirectories)
            |> Seq.filter (fun f -> List.contains (Path.GetExtension f) exts)
            |> Seq.filter (fun f -> not (f.Contains $"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}" || f.Contains $"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}"))
        else Seq.empty
    let codeExts = [ ".fs"; ".fsx"; ".cs"; ".comp"; ".glsl"; ".py"; ".sh"; ".targets"; ".fsproj"; ".csproj" ]
    [ yield! under "src" codeExts
      yield! under "tests" codeExts
      yield! under "tools" codeExts
      yield! under "examples" codeExts
      let b = Path.Combine(repoRoot, "build.fsx")
      if File.Exists b then yield b ]

/// Problems with one line's citations: (what, why).
let problemsOf (pageHeadings: Map<string, Set<string>>) (line: string) : string list =
    [ if line.Contains "shared/spec" then yield "cites ../shared/spec, which is not part of the repository"
      for m in citation.Matches line do
          let page = m.Groups["page"].Value
          if List.contains page pages || m.Groups["prefix"].Success then
              match pageHeadings.TryFind page with
              | None -> yield $"cites {m.Value}, but docs/{page}.md does not exist"
              | Some headings ->
                  if not m.Groups["prefix"].Success then yield $"cites {m.Value} without its folder: write docs/{page}.md"
                  if m.Groups["major"].Success then
                      let major = m.Groups["major"].Value
                      let minor = m.Groups["minor"]
                      let wanted = if minor.Success then major + "." + minor.Value else major
                      if not (headings.Contains wanted) then yield $"cites {m.Value}, but docs/{page}.md has no section {wanted}" ]

/// "issue 14", "issue-2", "issue #7", "issues 3": a reference to the tracker.
let private issueNumber = Regex(@"\bissues?[ \-]?#?\d+\b", RegexOptions.IgnoreCase ||| RegexOptions.Compiled)

let private headingsOnDisk () =
    pages
    |> List.choose (fun p ->
        let f = Path.Combine(repoRoot, "docs", p + ".md")
        if File.Exists f then Some(p, headingNumbers (File.ReadAllText f)) else None)
    |> Map.ofList

[<Tests>]
let tests =
    testList "Docs citations" [
        testCase "the checker finds a missing section, a missing page, a bare page name and a shared/spec path" <| fun () ->
            let headings = Map [ "method", Set [ "5"; "5.3" ] ]
            Expect.isEmpty (problemsOf headings "see docs/method.md §5.3 and docs/method.md §5") "valid citations"
            Expect.hasLength (problemsOf headings "docs/method.md §5.4") 1 "missing subsection"
            Expect.hasLength (problemsOf headings "docs/kernels.md §1") 1 "missing page"
            Expect.hasLength (problemsOf headings "method.md §5.3") 1 "bare page name"
            Expect.hasLength (problemsOf headings "// maths: ../../shared/spec/kernels.md") 2 "shared/spec path (and bare page)"
            Expect.isEmpty (problemsOf headings "README.md and CHANGELOG.md") "other markdown files are not citations"

        testCase "headings are read with their numbers" <| fun () ->
            let h = headingNumbers "# Title\n## 1. GEMM\n### 3.2 Chunked forward\n## 11. Where\n"
            Expect.equal h (Set [ "1"; "3.2"; "11" ]) "numbers"

        testCase "every citation in the code names an existing docs/ section" <| fun () ->
            let headings = headingsOnDisk ()
            Expect.isNonEmpty headings "docs/ pages found"
            let problems =
                // This file holds deliberately broken citations as test data.
                [ for f in sourceFiles () |> List.filter (fun f -> Path.GetFileName f <> "CitationTests.fs") do
                    let lines = File.ReadAllLines f
                    for i in 0 .. lines.Length - 1 do
                        for p in problemsOf headings lines[i] do
                            yield $"{Path.GetRelativePath(repoRoot, f)}:{i + 1}: {p}" ]
            let shown = problems |> List.truncate 40 |> String.concat "\n"
            Expect.isEmpty problems $"{problems.Length} broken citation(s):\n{shown}"

        testCase "no code names an issue number (the code explains itself; the tracker is not part of it)" <| fun () ->
            let isIssueRef (line: string) = issueNumber.IsMatch line
            Expect.isTrue (isIssueRef "// see issue 14") "issue N"
            Expect.isTrue (isIssueRef "/// the issue-2 contract") "issue-N"
            Expect.isTrue (isIssueRef "// Issue #7: ...") "issue #N"
            Expect.isFalse (isIssueRef "// an issue with the 2 backends") "prose"
            let found =
                [ for f in sourceFiles () |> List.filter (fun f -> Path.GetFileName f <> "CitationTests.fs") do
                    let lines = File.ReadAllLines f
                    for i in 0 .. lines.Length - 1 do
                        if isIssueRef lines[i] then yield $"{Path.GetRelativePath(repoRoot, f)}:{i + 1}: {lines[i].Trim()}" ]
            Expect.isEmpty found ("issue numbers in code:\n" + (found |> List.truncate 40 |> String.concat "\n")) ]
