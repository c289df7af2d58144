/// The column passes of the CPU token-recurrent gated delta rule (Cpu/Gdn/GdnRecurrent*.cs): each 64-column
/// Vector512 pass against two calls of its 32-column Vector256 form on the same state. Both sum every
/// column over the K rows in the same order, so they must agree exactly; a wrong offset or a dropped
/// store shows as a mismatch. (The whole recurrence is checked against the f64 reference in GdnTests.fs.)
/// Skipped, with the reason, where 512-bit vectors are not accelerated.
module TaylorCalibrate.Tests.Ops.CpuGdnRecurrentTests

#nowarn "9"

open System.Runtime.Intrinsics
open Microsoft.FSharp.NativeInterop
open Expecto
open TaylorCalibrate.Backend.Cpu
open TaylorCalibrate.Tests

let private requireWide () =
    if not Vector512.IsHardwareAccelerated then
        skiptest "512-bit vectors are not accelerated here (no AVX-512, or DOTNET_PreferredVectorBitWidth < 512); skipped"

/// A state of K rows with row stride V (V > 64, so the block is a strided view), and K-long k and q.
let private inputs seed k v =
    Rand.uniform seed -1.0 1.0 (k * v), Rand.uniform (seed + 1) -1.0 1.0 k, Rand.uniform (seed + 2) -1.0 1.0 k

let private rowCounts = [ 1; 7; 64; 129 ]
let private V = 96

[<Tests>]
let tests =
    testList "CpuGdnRecurrent" [
        test "decay and Sᵀk: the 64-column form equals two 32-column calls" {
            requireWide ()
            for k in rowCounts do
                let s0, kv, _ = inputs k k V
                let run (f: nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> unit) =
                    let s, out = Array.copy s0, Array.zeroCreate<float32> 64
                    use ps = fixed s
                    use pk = fixed kv
                    use po = fixed out
                    f ps pk po
                    s, out
                let wide = run (fun s kp o -> GdnRecurrent.DecayAndAccumulate64(s, s, k, V, 0.9f, kp, o))
                let narrow = run (fun s kp o ->
                    GdnRecurrent.DecayAndAccumulate32(s, s, k, V, 0.9f, kp, o)
                    GdnRecurrent.DecayAndAccumulate32(NativePtr.add s 32, NativePtr.add s 32, k, V, 0.9f, kp, NativePtr.add o 32))
                Expect.sequenceEqual (fst wide) (fst narrow) $"state, K={k}"
                Expect.sequenceEqual (snd wide) (snd narrow) $"Sᵀk, K={k}"
        }
        test "rank-1 update and Sᵀq: the 64-column form equals two 32-column calls" {
            requireWide ()
            for k in rowCounts do
                let s0, kv, qv = inputs (k + 10) k V
                let u = Rand.uniform 5 -1.0 1.0 64
                let run (f: nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> unit) =
                    let s, out = Array.copy s0, Array.zeroCreate<float32> 64
                    use ps = fixed s
                    use pk = fixed kv
                    use pq = fixed qv
                    use pu = fixed u
                    use po = fixed out
                    f ps pk pu pq po
                    s, out
                let wide = run (fun s kp up qp o -> GdnRecurrent.UpdateAndRead64(s, k, V, kp, up, qp, o))
                let narrow = run (fun s kp up qp o ->
                    GdnRecurrent.UpdateAndRead32(s, k, V, kp, up, qp, o)
                    GdnRecurrent.UpdateAndRead32(NativePtr.add s 32, k, V, kp, NativePtr.add up 32, qp, NativePtr.add o 32))
                Expect.sequenceEqual (fst wide) (fst narrow) $"state, K={k}"
                Expect.sequenceEqual (snd wide) (snd narrow) $"Sᵀq, K={k}"
        }
        test "backward pass A (S′ᵀk and dSᵀk): the 64-column form equals two 32-column calls" {
            requireWide ()
            for k in rowCounts do
                let prev, kv, _ = inputs (k + 20) k V
                let dS = Rand.uniform (k + 30) -1.0 1.0 (k * V)
                let run (f: nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> nativeptr<float32> -> unit) =
                    let ks, du = Array.zeroCreate<float32> 64, Array.zeroCreate<float32> 64
                    use pp = fixed prev
                    use pd = fixed dS
                    use pk = fixed kv
                    use pks = fixed ks
                    use pdu = fixed du
                    f pp pd pk pks pdu
                    ks, du
                let wide = run (fun p d kp ks du -> GdnRecurrent.PassA64(p, d, k, V, 0.8f, kp, ks, du))
                let narrow = run (fun p d kp ks du ->
                    GdnRecurrent.PassA32(p, d, k, V, 0.8f, kp, ks, du)
                    GdnRecurrent.PassA32(NativePtr.add p 32, NativePtr.add d 32, k, V, 0.8f, kp, NativePtr.add ks 32, NativePtr.add du 32))
                Expect.sequenceEqual (fst wide) (fst narrow) $"S′ᵀk, K={k}"
                Expect.sequenceEqual (snd wide) (snd narrow) $"dSᵀk, K={k}"
        }
    ]
