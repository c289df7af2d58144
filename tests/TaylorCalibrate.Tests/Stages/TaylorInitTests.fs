/// Properties of Phase 1's closed-form maths (docs/method.md §5.2) and of the skeleton (§3, §4): softplus(dt_bias)
/// hits the target decay, β targets lie in [0.3, 0.7] and rise with concentration, σ is the least-squares
/// optimum within its clamps, α gives the intended RMS, head-wise GQA expansion copies whole kv heads,
/// the parameter count formula, and the kept-layer policy.
module TaylorCalibrate.Tests.Stages.TaylorInitTests

open System
open Expecto
open FsCheck
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

let private cfg = { FsCheckConfig.defaultConfig with maxTest = 200 }
let private testProp name = testPropertyWithConfig cfg name
let private o = TaylorInit.TaylorOptions.defaults
let private softplus (x: float) = max x 0.0 + log (1.0 + exp (-(abs x)))
let private finite (x: float) = not (Double.IsNaN x || Double.IsInfinity x)

let private config (D: int) (H: int) (Hkv: int) (hd: int) (L: int) : ModelConfig =
    { Family = ModelFamily.Llama; Dim = D; Hidden = 4 * D; Layers = L; Heads = H; KvHeads = Hkv; HeadDim = hd; Vocab = 32
      Context = 64; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

[<Tests>]
let tests =
    testList "Stages.TaylorInit" [
        testProp "softplus(dt_bias) equals the target decay" <| fun (NormalFloat d) ->
            let d = 0.5 + abs d % 1000.0
            let target = TaylorInit.targetDecay o d
            let dt = TaylorInit.dtBiasFor target
            abs (softplus dt - target) <= 1e-9 * max 1.0 target && target >= o.DecayMin && target <= o.DecayMax
            && (d < log 2.0 / o.DecayMax || abs (target - log 2.0 / d) < 1e-12 || target = o.DecayMin)

        testProp "beta targets lie in [0.3, 0.7] and rise with concentration" <| fun (entropies: NormalFloat list) ->
            let hs = entropies |> List.map (fun (NormalFloat e) -> abs e % 10.0) |> Array.ofList
            hs.Length = 0 ||
            (let betas = TaylorInit.concentration o hs |> Array.map (TaylorInit.betaTarget o)
             let inRange = betas |> Array.forall (fun b -> b >= 0.3 - 1e-12 && b <= 0.7 + 1e-12)
             // lower entropy = more concentrated = larger β
             let monotone =
                 Seq.allPairs [ 0 .. hs.Length - 1 ] [ 0 .. hs.Length - 1 ]
                 |> Seq.forall (fun (i, j) -> not (hs[i] < hs[j]) || betas[i] >= betas[j])
             inRange && monotone)

        testProp "sigma is the least-squares optimum and respects its clamps" <| fun (pairs: (NormalFloat * NormalFloat) list) (NormalFloat delta) ->
            let c = pairs |> List.map (fun (NormalFloat a, _) -> a % 100.0) |> Array.ofList
            let out = pairs |> List.map (fun (_, NormalFloat b) -> b % 100.0) |> Array.ofList
            let resid s = Array.fold2 (fun acc a b -> acc + (a - s * b) ** 2.0) 0.0 c out
            let raw = TaylorInit.olsGain c out
            let sigma = TaylorInit.valueScale o c out
            let delta = delta % 10.0
            let optimal = resid raw <= resid (raw + delta) + 1e-9 * (1.0 + resid raw)
            // clamped: the best value inside [0.1, 10] (the residual is convex in σ).
            let clampedOptimal =
                let cand = raw + delta |> fun s -> Math.Clamp(s, o.SigmaMin, o.SigmaMax)
                resid sigma <= resid cand + 1e-9 * (1.0 + resid sigma)
            sigma >= o.SigmaMin && sigma <= o.SigmaMax && optimal && clampedOptimal

        testProp "alpha gives the intended output RMS" <| fun (values: NormalFloat list) (PositiveInt t) ->
            let v = values |> List.map (fun (NormalFloat x) -> float32 (x % 100.0)) |> Array.ofList
            let rmsV = if v.Length = 0 then 0.0 else TaylorInit.rms v
            rmsV = 0.0 ||
            (let rmsT = float t / 7.0
             let alpha = TaylorInit.gateScale o rmsT rmsV
             let scaled = v |> Array.map (fun x -> float32 alpha * x)
             abs (TaylorInit.rms scaled - 0.01 * rmsT) <= 1e-5 * (0.01 * rmsT))

        testProp "head-wise GQA expansion copies kv head h/(H/Hkv) exactly" <| fun (PositiveInt a) (PositiveInt b) (PositiveInt d) ->
            let Hkv, g, hd, D = 1 + a % 4, 1 + b % 4, 2 * (1 + d % 4), 3
            let c = config D (Hkv * g) Hkv hd 2
            let w = Rand.normal (a + b + d) 1.0 (c.KvDim * D)
            let e = Skeleton.expandKv GqaExpand.Heads c w
            Seq.forall (fun h ->
                e[h * hd * D .. (h + 1) * hd * D - 1] = w[(h / g) * hd * D .. (h / g + 1) * hd * D - 1]) [ 0 .. c.Heads - 1 ]

        test "row-wise expansion repeats each row g times (the reference)" {
            let c = config 2 4 2 2 2
            let w = Array.init (c.KvDim * 2) float32
            let e = Skeleton.expandKv GqaExpand.Rows c w
            let rowsOf (a: float32[]) = a |> Array.chunkBySize 2 |> Array.map (fun r -> r[0] / 2f |> int)
            Expect.equal (rowsOf e) [| 0; 0; 1; 1; 2; 2; 3; 3 |] "row r <- teacher row r/g"
        }

        test "parameter count: formula and stories260K 260,032 -> 296,992 keeping layer 0" {
            let c = { config 64 8 4 8 5 with Hidden = 172; Vocab = 512 }
            Expect.equal (GdnWeights.parameterCount c) 21_528L "per GDN layer (docs/method.md §3)"
            let layer () : LayerWeights =
                { AttnNorm = Array.zeroCreate 64; Wq = Array.zeroCreate (64 * 64); Wk = Array.zeroCreate (32 * 64)
                  Wv = Array.zeroCreate (32 * 64); Wo = Array.zeroCreate (64 * 64); Bq = None; Bk = None; Bv = None; Bo = None
                  QNorm = None; KNorm = None; MlpNorm = Array.zeroCreate 64; Gate = Array.zeroCreate (172 * 64)
                  Up = Array.zeroCreate (172 * 64); Down = Array.zeroCreate (64 * 172) }
            let teacher : Teacher =
                { Config = c
                  Weights = { Embedding = Array.zeroCreate (512 * 64); Layers = Array.init 5 (fun _ -> layer ()); FinalNorm = Array.zeroCreate 64; LmHead = None }
                  Source = { Path = "synthetic"; Format = "test"; DTypes = [] } }
            Expect.equal (TeacherWeights.parameterCount teacher.Weights) 260_032L "teacher"
            let s = Skeleton.build teacher [ 0 ] GqaExpand.Heads 1
            Expect.equal (Student.parameterCount s) 296_992L "student keeping layer 0"
            Expect.equal (StudentIo.tensors s |> List.sumBy (fun (_, _, a) -> int64 a.Length)) 296_992L "saved tensors"
        }

        test "uniform policy: every 4th layer at 25 %, at least one layer" {
            Expect.equal (LayerPolicy.uniform 28 0.25) [ 0; 4; 8; 12; 16; 20; 24 ] "L 28"
            Expect.equal (LayerPolicy.uniform 5 0.2) [ 0 ] "L 5, 20 %"
            Expect.equal (LayerPolicy.uniform 5 0.01) [ 0 ] "k >= 1"
            Expect.equal (LayerPolicy.uniform 5 0.4) [ 0; 2 ] "L 5, 40 %"
            Expect.isError (LayerPolicy.validate "--keep" 5 [ 0; 5 ]) "out of range"
            Expect.isError (LayerPolicy.validate "--keep" 5 [ 1; 1 ]) "duplicate"
            Expect.isError (LayerPolicy.validate "--keep" 2 [ 0; 1 ]) "all kept"
        }

        test "fresh gate parameters are deterministic per seed" {
            let c = config 8 2 1 4 2
            let l : LayerWeights =
                { AttnNorm = Array.zeroCreate 8; Wq = Rand.normal 1 1.0 64; Wk = Rand.normal 2 1.0 32; Wv = Rand.normal 3 1.0 32
                  Wo = Rand.normal 4 1.0 64; Bq = None; Bk = None; Bv = None; Bo = None; QNorm = None; KNorm = None
                  MlpNorm = Array.zeroCreate 8; Gate = [||]; Up = [||]; Down = [||] }
            let a, b, d = Skeleton.gdnLayer GqaExpand.Heads 7 c 1 l, Skeleton.gdnLayer GqaExpand.Heads 7 c 1 l, Skeleton.gdnLayer GqaExpand.Heads 8 c 1 l
            Expect.equal a b "same seed, same draws"
            Expect.notEqual a.Wa d.Wa "another seed, other draws"
            Expect.isTrue (a.ALog |> Array.forall (fun v -> finite (float v) && v <= float32 (log 16.0))) "A in (0, 16]"
            Expect.isTrue (a.DtBias |> Array.forall (fun v -> let dt = softplus (float v) in dt >= 0.9e-4 && dt <= 0.1001)) "dt in [1e-4, 0.1]"
        }
    ]
