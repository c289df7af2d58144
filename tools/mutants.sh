#!/usr/bin/env bash
# Mutation check of the test suite: plants one plausible bug at a time in a scratch copy of the working tree
# (CPU backend, GLSL shaders, Phase 1, Phase 2, evaluation, model IO, checkpoints), rebuilds the project it
# lives in, runs the tests that should notice, and reports each mutant as killed or survived.
# Not part of CI: it rebuilds a project per mutant (~1-2 min each on 2 cores).
#
# Usage: tools/mutants.sh [MUTANT_ID ...]      (no argument: every mutant)
#        tools/mutants.sh --check               (only checks that every anchor still matches exactly once)
#   KEEP_SCRATCH=1 keeps the scratch copy; MUTANTS_SCRATCH=dir reuses a kept one (no fresh copy);
#   MUTANTS_REPORT=path also writes the table there.
#
# How it works
#   * The scratch copy lives under /tmp, so ../shared is absent there: a mutant counts as killed only by tests
#     that run on a fresh clone.
#   * The test project is built once; for each mutant only the mutated project (Backend or Pipeline) is rebuilt
#     and its DLL copied beside the test binary (mutants do not change any public signature), then restored.
#   * A mutation is a literal FIND -> REPLACE on one file. FIND must occur exactly once; otherwise the mutant is
#     reported as "pattern not found" or "pattern ambiguous" (not as killed): update its anchor.
#   * killed = at least one listed test list fails; survived = all pass; a mutant that does not compile is
#     reported as "build failed". The script exits 0 only if every selected mutant was killed.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)

ids=() projects=() files=() filters=() descs=() finds=() repls=()
# mutant ID PROJECT FILE 'TEST LISTS;SEPARATED' DESCRIPTION FIND REPLACE
mutant() { ids+=("$1"); projects+=("$2"); files+=("$3"); filters+=("$4"); descs+=("$5"); finds+=("$6"); repls+=("$7"); }

# ---- CPU backend ------------------------------------------------------------------------------------------
mutant cpu-gqa-kv-head Backend src/Backend/Cpu/Attention/FlashAttention.cs 'Attention' \
    'CPU attention: query head h reads kv head h mod Hkv (interleaved GQA) instead of h / group' \
    'hk = h / d.Group, nr = i1 - i0;' 'hk = h % d.Hkv, nr = i1 - i0;'
mutant cpu-distance-floor Backend src/Backend/Cpu/Attention/FlashAttention.cs 'Attention' \
    'CPU attention statistics: diagonal distance 0.25 instead of max(i-j, 0.5)' \
    'sd += p * MathF.Max(off - c, 0.5f);' 'sd += p * MathF.Max(off - c, 0.25f);'
mutant cpu-rope-pairing Backend src/Backend/Cpu/CpuBackend.Norms.cs 'Ops.Rope;Llama2c (tiny' \
    'CPU RoPE: adjacent and half-split pairings swapped' \
    'int ia = layout == RopeLayout.HalfSplit ? o + i : o + 2 * i;
                        int ib = layout == RopeLayout.HalfSplit ? o + i + half : o + 2 * i + 1;' \
    'int ia = layout != RopeLayout.HalfSplit ? o + i : o + 2 * i;
                        int ib = layout != RopeLayout.HalfSplit ? o + i + half : o + 2 * i + 1;'

# ---- GLSL shaders (run by the tests on lavapipe) ----------------------------------------------------------
mutant glsl-rmsnorm-mean Backend src/Kernels.Glsl/rmsnorm.comp 'Ops.Norm' \
    'GLSL RMSNorm: mean of squares over cols-1' \
    'sqrt(ss / float(args.cols) + args.eps);' 'sqrt(ss / float(args.cols - 1u) + args.eps);'
mutant glsl-rope-direction Backend src/Kernels.Glsl/rope.comp 'Ops.Rope' \
    'GLSL RoPE: second coordinate rotated the wrong way' \
    'y[i1] = a * s + b * c;' 'y[i1] = b * c - a * s;'
mutant glsl-distance-floor Backend src/Kernels.Glsl/attention.comp 'Attention' \
    'GLSL attention statistics: diagonal distance 0.25 instead of 0.5' \
    'sDist += p * max(float(i - j0 - c), 0.5);' 'sDist += p * max(float(i - j0 - c), 0.25);'

# ---- Phase 1 (Stages/TaylorInit.fs, Stages/Skeleton.fs) ---------------------------------------------------
mutant p1-beta-high Pipeline src/Pipeline/Stages/TaylorInit.fs 'Stages.MethodConstants;Stages.TaylorInit' \
    'Phase 1: β* upper end 0.6 instead of 0.7' \
    'BetaHigh = 0.7;' 'BetaHigh = 0.6;'
mutant p1-decay-max Pipeline src/Pipeline/Stages/TaylorInit.fs 'Stages.MethodConstants;Stages.TaylorInit' \
    'Phase 1: decay target clamped at 2 instead of 5' \
    'DecayMax = 5.0;' 'DecayMax = 2.0;'
mutant p1-sigma-max Pipeline src/Pipeline/Stages/TaylorInit.fs 'Stages.MethodConstants;Stages.TaylorInit' \
    'Phase 1: σ clamped at 5 instead of 10' \
    'SigmaMax = 10.0;' 'SigmaMax = 5.0;'
mutant p1-gate-damping Pipeline src/Pipeline/Stages/TaylorInit.fs 'Stages.MethodConstants;Stages.TaylorInit' \
    'Phase 1: output-gate damping 0.02 instead of 0.01' \
    'GateDamping = 0.01 }' 'GateDamping = 0.02 }'
mutant skeleton-gqa-rows Pipeline src/Pipeline/Stages/Skeleton.fs 'Stages.TaylorInit' \
    'Skeleton: head-wise GQA expansion replaced by the row-wise repeat' \
    '| GqaExpand.Heads -> (r / hd / g) * hd + r % hd' '| GqaExpand.Heads -> r / g'
mutant skeleton-dt-range Pipeline src/Pipeline/Stages/Skeleton.fs 'Stages.MethodConstants' \
    'Skeleton: dt drawn from exp(U(ln 1e-2, ln 1e-1)) instead of from ln 1e-3' \
    'exp (log 1e-3 + r.NextDouble() * (log 1e-1 - log 1e-3))' 'exp (log 1e-2 + r.NextDouble() * (log 1e-1 - log 1e-2))'

# ---- Phase 2 (Stages/Align.fs; anchors may move when Align.fs migrates to Training/) ---------------------
mutant p2-no-restore Pipeline src/Pipeline/Stages/Align.fs 'Stages.AlignRestore' \
    'Phase 2: the best state is not restored (the last state is returned)' \
    'List.iter2 (fun (src: Tensor) dst -> be.Copy(src, 0L, dst, 0L, src.Count)) snapshot trainable' '()'
mutant p2-no-final-eval Pipeline src/Pipeline/Stages/Align.fs 'Stages.AlignRestore' \
    'Phase 2: θ after the last update never competes for best' \
    'if final < best then' 'if false then'
mutant p2-lr-gates Pipeline src/Pipeline/Stages/Align.fs 'Stages.MethodConstants' \
    'Phase 2: gate learning rate 1e-4 instead of 1e-3' \
    'LrGates = 1e-3f;' 'LrGates = 1e-4f;'
mutant p2-lr-groups Pipeline src/Pipeline/Training/ParameterGroups.fs 'Stages.MethodConstants' \
    'Phase 2: g_proj trained at the projection learning rate' \
    'EndsWith "v_proj.weight" ]' 'EndsWith "v_proj.weight"; EndsWith "g_proj.weight" ]'
mutant p2-weight-decay Pipeline src/Pipeline/Stages/Align.fs 'Stages.MethodConstants' \
    'Phase 2: weight decay 0.02 instead of 0.01' \
    'WeightDecay = 0.01f;' 'WeightDecay = 0.02f;'
mutant p2-clip Pipeline src/Pipeline/Stages/Align.fs 'Stages.MethodConstants' \
    'Phase 2: gradient-norm clip 2.0 instead of 1.0' \
    'ClipNorm = 1.0f }' 'ClipNorm = 2.0f }'
mutant p2-steps Pipeline src/Pipeline/Stages/Align.fs 'Stages.MethodConstants' \
    'Phase 2: 200 steps by default instead of 300' \
    'Steps = 300;' 'Steps = 200;'

# ---- resume and checkpoints (Stages/Convert.fs, Stages/AlignCheckpoint.fs) ---------------------------------
mutant resume-ignored Pipeline src/Pipeline/Stages/Convert.fs 'Stages.AlignRestore' \
    'convert: persisted layers are ignored and aligned again' \
    'match hooks.Resume i with
                    | Some(w, r) -> w, Some r, phase1' 'match (ignore (hooks.Resume i); None) with
                    | Some(w, r) -> w, Some r, phase1'
mutant checkpoint-skips-checksum Pipeline src/Pipeline/Stages/AlignCheckpoint.fs 'Stages.AlignRestore;Stages.AlignCheckpoint' \
    'checkpoint: a layer file is restored without verifying its checksum' \
    '| Some sum when sum = checksum w ->' '| Some sum when not (isNull sum) ->'

# ---- evaluation (Eval/Perplexity.fs) ---------------------------------------------------------------------
mutant eval-drop-last-window Pipeline src/Pipeline/Eval/Perplexity.fs 'Llama2c (tiny;Perplexity' \
    'perplexity: the last full window is dropped when the stream is a multiple of W' \
    'let n = stream.Length / W' 'let n = (stream.Length - 1) / W'
mutant eval-scored-off-by-one Pipeline src/Pipeline/Eval/Perplexity.fs 'Perplexity;Llama2c (tiny' \
    'perplexity: W-2 instead of W-1 targets scored per window' \
    'if i % W = W - 1 then -1 else ids[i + 1]' 'if i % W >= W - 2 then -1 else ids[i + 1]'

# ---- model IO (Model/Llama2c.fs) ---------------------------------------------------------------------------
mutant llama2c-rope-halfsplit Pipeline src/Pipeline/Model/Llama2c.fs 'Llama2c (tiny' \
    'llama2.c loader: RoPE on half-split pairs instead of adjacent ones' \
    'RopeLayout = RopeLayout.Adjacent; TiedEmbeddings = vocab > 0' 'RopeLayout = RopeLayout.HalfSplit; TiedEmbeddings = vocab > 0'
mutant llama2c-w2-w3 Pipeline src/Pipeline/Model/Llama2c.fs 'Llama2c (tiny' \
    'llama2.c loader: w2 and w3 read in the wrong order (same size when hidden·dim = dim·hidden)' \
    'let w2 = perLayer (d * f)
        let w3 = perLayer (f * d)' 'let w3 = perLayer (f * d)
        let w2 = perLayer (d * f)'

# ---- tokenizer (Text/Tok512.fs) ---------------------------------------------------------------------------
mutant tok512-byte-fallback Pipeline src/Pipeline/Text/Tok512.fs 'Llama2c (tiny' \
    'llama2.c tokenizer: byte-fallback ids start at 4 instead of 3' \
    'let private byteFallbackBase = 3' 'let private byteFallbackBase = 4'
mutant tok512-no-dummy-prefix Pipeline src/Pipeline/Text/Tok512.fs 'Llama2c (tiny' \
    'llama2.c tokenizer: no dummy-prefix space' \
    'match lookup.TryGetValue " " with' 'match lookup.TryGetValue "<no dummy prefix>" with'
mutant tok512-lowest-merge Pipeline src/Pipeline/Text/Tok512.fs 'Llama2c (tiny' \
    'llama2.c tokenizer: the lowest-score pair is merged first' \
    'if s1 > s2 then -1 elif s1 < s2 then 1 else compare p1 p2' 'if s1 < s2 then -1 elif s1 > s2 then 1 else compare p1 p2'

# ---- Distillation ------------------------------------------------------------------------------------------
mutant stage1-loss-squared Pipeline src/Pipeline/Distill/Stage1Loss.fs 'Distill.Stage1Loss' \
    'Stage 1 loss: squared L2 norm per token instead of the norm' \
    'be.Mul(ws.Diff, ws.Unit, ws.Diff)' 'be.Mul(ws.Diff, ws.Diff, ws.Diff)'
mutant stage2-default-rest-rate Pipeline src/Pipeline/Distill/Distill.fs 'Cli.distill' \
    'Stage 2 default: the non-attention rate 7e-5 instead of 7e-6' \
    'let stage2Default = Stage2(1e-4f, 7e-6f)' 'let stage2Default = Stage2(1e-4f, 7e-5f)'
mutant stage1-constant-schedule Pipeline src/Pipeline/Distill/Distill.fs 'Cli.distill' \
    'Stage 1: constant rate instead of cosine to 0' \
    'Stage1 _ -> Schedule.Cosine steps' 'Stage1 _ -> Schedule.Constant'

# ---- Conversion job (Stages/ConvertJob.fs) ------------------------------------------------------------------
mutant job-resume-any-settings Pipeline src/Pipeline/Stages/ConvertJob.fs 'Stages.ConvertJob;Cli.convert resume' \
    'convert --resume: continues a run started with other settings' \
    'match settingsDifference recorded (settings p) with' 'match (ignore recorded; None) with'
mutant job-overwrite-out Pipeline src/Pipeline/Stages/ConvertJob.fs 'Stages.ConvertJob;Cli.convert resume' \
    'convert: writes into a non-empty --out without --resume' \
    'if before.IsEmpty then Ok(Map.empty, [])' 'if before.IsEmpty || not resume then Ok(Map.empty, [])'

# ---- anchors only ---------------------------------------------------------------------------------------
if [[ "${1:-}" == --check ]]; then
    bad=0
    for i in "${!ids[@]}"; do
        n=$(python3 -c 'import sys; print(open(sys.argv[1], encoding="utf-8").read().count(sys.argv[2]))' "$repo/${files[$i]}" "${finds[$i]}" 2>/dev/null || echo 0)
        if [[ "$n" == 1 ]]; then echo "ok                  ${ids[$i]}"
        else echo "PATTERN NOT FOUND   ${ids[$i]} ($n matches in ${files[$i]})"; bad=1; fi
    done
    exit $bad
fi

# ---- selection -----------------------------------------------------------------------------------------
selected=()
if [[ $# -gt 0 ]]; then
    for want in "$@"; do
        found=0
        for i in "${!ids[@]}"; do [[ "${ids[$i]}" == "$want" ]] && selected+=("$i") && found=1; done
        [[ $found == 1 ]] || { echo "unknown mutant '$want' (known: ${ids[*]})" >&2; exit 2; }
    done
else
    selected=("${!ids[@]}")
fi

# ---- scratch copy and baseline -------------------------------------------------------------------------
if [[ -n "${MUTANTS_SCRATCH:-}" && -d "${MUTANTS_SCRATCH}" ]]; then
    scratch=$MUTANTS_SCRATCH
    KEEP_SCRATCH=1
    echo "reusing the scratch copy $scratch (synced with the working tree)"
    # Copy only what differs, with a fresh mtime, so the incremental build sees exactly those changes.
    (cd "$repo" && git ls-files -co --exclude-standard) | while IFS= read -r f; do
        if ! cmp -s "$repo/$f" "$scratch/$f"; then mkdir -p "$(dirname "$scratch/$f")"; cp "$repo/$f" "$scratch/$f"; echo "  synced $f"; fi
    done
else
    scratch=$(mktemp -d /tmp/tc-mutants.XXXXXX)
    echo "scratch copy of $repo -> $scratch"
    (cd "$repo" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$scratch"
fi
cleanup() { if [[ "${KEEP_SCRATCH:-0}" != 1 ]]; then rm -rf "$scratch"; else echo "scratch kept: $scratch"; fi; }
trap cleanup EXIT
log="$scratch/.mutants-log"
mkdir -p "$log"
cd "$scratch"
testbin="$scratch/tests/TaylorCalibrate.Tests/bin/Release/net10.0"
# No MSBuild node reuse: a node shared with another build on the machine can end a build early.
build_quiet=(-c Release -v q -nologo -clp:ErrorsOnly -nodeReuse:false)
echo "baseline build of the test project (once)..."
if ! dotnet build tests/TaylorCalibrate.Tests "${build_quiet[@]}" >"$log/baseline-build.txt" 2>&1 \
   || [[ ! -f "$testbin/TaylorCalibrate.Tests.dll" || ! -f "$testbin/TaylorCalibrate.Pipeline.dll" ]]; then
    cat "$log/baseline-build.txt"; echo "baseline build failed (no test binary in $testbin)" >&2; exit 2
fi
mkdir -p "$scratch/.baseline"
dlls=(TaylorCalibrate.Backend.dll TaylorCalibrate.Pipeline.dll taylor-calibrate.dll)
for d in "${dlls[@]}"; do cp "$testbin/$d" "$scratch/.baseline/"; done
# Puts the unmutated source and DLLs back (also when the script is interrupted mid-mutant).
current=""
restore() {
    if [[ -n "$current" ]]; then cp "$log/original" "$current"; touch "$current"; current=""; fi
    for d in "${dlls[@]}"; do cp "$scratch/.baseline/$d" "$testbin/"; done
}
trap 'restore; cleanup' EXIT

# Runs one test list; prints "passed failed skipped" (from the runner's last line) and returns 0.
run_list() {
    local out="$1" filter="$2"
    dotnet "$testbin/TaylorCalibrate.Tests.dll" --summary --filter-test-list "$filter" >"$out" 2>&1
    grep -aoE '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$out" | tail -1 | awk '{print $1, $3, $5}'
}

echo "baseline: every test list the mutants use must pass unmutated..."
declare -A seen=()
for i in "${selected[@]}"; do
    IFS=';' read -r -a fl <<<"${filters[$i]}"
    for f in "${fl[@]}"; do
        [[ -n "${seen[$f]:-}" ]] && continue
        seen[$f]=1
        read -r p fa s < <(run_list "$log/baseline-$(echo "$f" | tr -c 'A-Za-z0-9' _).txt" "$f")
        echo "  '$f': ${p:-?} passed, ${fa:-?} failed, ${s:-?} skipped"
        if [[ -z "${p:-}" || "${fa:-1}" != 0 || "${p:-0}" == 0 ]]; then
            echo "baseline of '$f' is not green (or ran nothing): fix that before judging mutants" >&2; exit 2
        fi
    done
done

# ---- mutants -----------------------------------------------------------------------------------------
apply() { # file find replace -> prints the number of occurrences; writes only if exactly one
    python3 - "$1" "$2" "$3" <<'EOF'
import sys
path, find, repl = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path, encoding="utf-8").read()
n = text.count(find)
if n == 1:
    open(path, "w", encoding="utf-8").write(text.replace(find, repl))
print(n)
EOF
}

results=() killed=0 total=0
for i in "${selected[@]}"; do
    id=${ids[$i]} proj=${projects[$i]} file=${files[$i]}
    total=$((total + 1))
    start=$SECONDS
    echo "[$id] ${descs[$i]}"
    cp "$file" "$log/original"
    current=$file
    n=$(apply "$file" "${finds[$i]}" "${repls[$i]}")
    if [[ "$n" != 1 ]]; then
        status=$([[ "$n" == 0 ]] && echo "PATTERN NOT FOUND" || echo "PATTERN AMBIGUOUS ($n matches)")
        echo "  $status in $file: update this mutant's anchor"
        results+=("| $id | $file | $status | | 0 |")
        current=""
        continue
    fi
    case "$proj" in
        Backend)
            dotnet build src/Backend "${build_quiet[@]}" --no-restore >"$log/$id-build.txt" 2>&1; rc=$?
            dll=src/Backend/bin/Release/net10.0/TaylorCalibrate.Backend.dll ;;
        Pipeline)
            dotnet build src/Pipeline "${build_quiet[@]}" --no-restore -p:BuildProjectReferences=false >"$log/$id-build.txt" 2>&1; rc=$?
            dll=src/Pipeline/bin/Release/net10.0/TaylorCalibrate.Pipeline.dll ;;
        Cli)
            dotnet build src/Cli "${build_quiet[@]}" --no-restore -p:BuildProjectReferences=false >"$log/$id-build.txt" 2>&1; rc=$?
            dll=src/Cli/bin/Release/net10.0/taylor-calibrate.dll ;;
    esac
    status="" by=""
    if [[ $rc != 0 ]]; then
        status="BUILD FAILED"
        echo "  build failed (see $log/$id-build.txt)"
    else
        cp "$dll" "$testbin/"
        IFS=';' read -r -a fl <<<"${filters[$i]}"
        status="survived"
        for f in "${fl[@]}"; do
            read -r p fa s < <(run_list "$log/$id-tests.txt" "$f")
            echo "  '$f': ${p:-?} passed, ${fa:-?} failed, ${s:-?} skipped"
            if [[ -z "${p:-}" ]]; then status="killed"; by="$f (runner crashed)"; break; fi
            if [[ "$fa" != 0 ]]; then status="killed"; by="$f ($fa failed)"; break; fi
        done
    fi
    restore
    [[ "$status" == killed ]] && killed=$((killed + 1))
    echo "  -> $status ${by:+by $by} ($((SECONDS - start)) s)"
    results+=("| $id | $file | $status | $by | $((SECONDS - start)) |")
done

table=$(
    echo "| mutant | file | result | killed by (test list) | seconds |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${results[@]}"
    echo
    echo "$killed of $total mutants killed."
)
echo
echo "$table"
[[ -n "${MUTANTS_REPORT:-}" ]] && echo "$table" >"$MUTANTS_REPORT"
[[ $killed == "$total" ]]
