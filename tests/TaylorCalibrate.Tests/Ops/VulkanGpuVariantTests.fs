/// The GPU-shaped Vulkan kernels (KernelClass.Gpu: shared-memory attention tiles, narrow GDN state-scan
/// blocks, tiled GEMM) run here on lavapipe by switching the shared backend's tuning, and are checked against
/// the same double-precision references and tolerances as the default variants (AttentionTests, GdnTests):
/// both variants compute the same sums in the same order, so fp32 round-off is the only difference. The
/// profiler's kernel names prove the GPU kernels ran. Shapes are small: lavapipe is a CPU.
module TaylorCalibrate.Tests.Ops.VulkanGpuVariantTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Vulkan
open TaylorCalibrate.Tests

module Att = TaylorCalibrate.Tests.Ops.AttentionTests
module Gdn = TaylorCalibrate.Tests.Ops.GdnTests

let private vk () = Backends.vulkan.Get() :?> VulkanBackend

/// GPU tuning with blocks small enough that the test shapes span several of them: 32 rows per attention
/// workgroup (T = 63, 65, 130 give partial last blocks) and 16 value columns per scan workgroup (V = 60, 64
/// give 4 blocks, the last one partial at 60).
let private gpuTuning (be: VulkanBackend) = KernelTuning(KernelClass.Gpu, be.Tuning.Vendor, 32u, 16u, true)

/// Runs `f` with the GPU variants selected, restoring the device's own tuning afterwards.
let private withGpuKernels (be: VulkanBackend) f =
    let saved = be.Tuning
    be.Synchronize()
    be.Tuning <- gpuTuning be
    try f () finally be.Synchronize(); be.Tuning <- saved

let private kernelsRun (be: VulkanBackend) (action: unit -> unit) =
    be.ProfileDispatches(Action action) |> Seq.map (fun d -> d.Kernel.Split(':')[0]) |> Set.ofSeq

let private attentionCases: Att.Case list =
    [ { B = 2; T = 1; H = 2; Hkv = 1; D = 8; Seed = 1 }
      { B = 1; T = 63; H = 4; Hkv = 2; D = 60; Seed = 2 }
      { B = 1; T = 65; H = 4; Hkv = 1; D = 100; Seed = 4 }
      { B = 1; T = 130; H = 4; Hkv = 4; D = 8; Seed = 7 } ]

let private gdnCases = [ Gdn.vulkanChunkedCases[1]; Gdn.vulkanChunkedCases[3]; Gdn.vulkanChunkedCases[4] ]

[<Tests>]
let tests =
    testSequenced <| testList "VulkanGpuVariants" [
        test "TC_VULKAN_KERNELS forces the class; a CPU device defaults to the CPU-driver variants" {
            let saved = Environment.GetEnvironmentVariable "TC_VULKAN_KERNELS"
            try
                Environment.SetEnvironmentVariable("TC_VULKAN_KERNELS", null)
                Expect.equal (KernelTuning.For(Silk.NET.Vulkan.PhysicalDeviceType.Cpu, 0x10005u, 8u).Class) KernelClass.CpuDriver "cpu device"
                Expect.equal (KernelTuning.For(Silk.NET.Vulkan.PhysicalDeviceType.DiscreteGpu, KernelTuning.VendorNvidia, 32u).Class) KernelClass.Gpu "discrete gpu"
                Environment.SetEnvironmentVariable("TC_VULKAN_KERNELS", "gpu")
                Expect.equal (KernelTuning.For(Silk.NET.Vulkan.PhysicalDeviceType.Cpu, 0x10005u, 8u).Class) KernelClass.Gpu "forced gpu"
                Environment.SetEnvironmentVariable("TC_VULKAN_KERNELS", "fast")
                Expect.throwsT<DeviceException> (fun () -> KernelTuning.For(Silk.NET.Vulkan.PhysicalDeviceType.Cpu, 0u, 8u) |> ignore) "unknown value"
            finally
                Environment.SetEnvironmentVariable("TC_VULKAN_KERNELS", saved)
        }
        for c in attentionCases do
            test $"attention (shared-memory tiles) forward, statistics and backward vs reference: {c}" {
                let be = vk ()
                let d = Att.makeData c
                let x = Att.refInputs c d
                let r = withGpuKernels be (fun () -> Att.run be c d true)
                let e = AttentionReference.forward x
                let g = AttentionReference.backward x (Array.map float d.DO)
                Att.close Att.Tol.output e.O r.O "o"
                Att.close Att.Tol.output e.Lse r.Lse "lse"
                Att.close Att.Tol.output e.Stats r.Stats "stats"
                r.Probs |> Option.iter (fun p -> Att.close Att.Tol.output e.Probs p "probs")
                Att.close Att.Tol.grad g.DQ r.DQ "dq"
                Att.close Att.Tol.grad g.DK r.DK "dk"
                Att.close Att.Tol.grad g.DV r.DV "dv"
            }
        test "the GPU attention variant is the one that runs" {
            let be = vk ()
            let c: Att.Case = { B = 1; T = 40; H = 2; Hkv = 1; D = 8; Seed = 3 }
            let d = Att.makeData c
            let ran = withGpuKernels be (fun () -> kernelsRun be (fun () -> Att.run be c d false |> ignore))
            for k in [ "attention_tiled"; "attention_back_tiled" ] do Expect.contains ran k $"{k} dispatched"
            Expect.isFalse (ran.Contains "attention") "the CPU-driver forward did not run"
        }
        for c in gdnCases do
            test $"chunked GDN with narrow state-scan blocks vs reference and vs recurrent: {c}" {
                let be = vk ()
                let d = Gdn.makeData c
                let rc = withGpuKernels be (fun () -> Gdn.run be c d GdnMode.Chunked 64)
                Gdn.checkAll (Gdn.expected c d) rc "chunked 64 (GPU tuning)"
                Gdn.checkSame (Gdn.run be c d GdnMode.Recurrent 64) rc "GPU-tuned chunked vs recurrent"
            }
        test "GEMM follows the class: the shared-memory tiles under the GPU tuning" {
            let be = vk ()
            match Environment.GetEnvironmentVariable "TC_VULKAN_GEMM" with
            | null | "" ->
                Expect.equal (be.ChooseGemm(gpuTuning be)) GemmKernel.Tiled "GPU tuning"
                Expect.equal be.GemmVariant (be.ChooseGemm be.Tuning) "the device's own tuning decides the default"
            | forced -> skiptest $"TC_VULKAN_GEMM={forced} overrides the choice"
        }
    ]
